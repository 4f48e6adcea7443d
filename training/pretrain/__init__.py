"""Pretraining: the MAM wrapper (masking, decoder, losses), teachers, CLAP teacher training, data, the loop."""

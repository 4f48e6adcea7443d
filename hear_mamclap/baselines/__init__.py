"""Baseline HEAR modules scored by the same harness as mamclap checkpoints."""

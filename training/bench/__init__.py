"""GPU benchmarks (not tests): the pretraining step and HEAR embedding rates beside the yardstick."""

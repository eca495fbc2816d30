"""Config schema of the `rnn_bench` workload (torch-free: the host validates grids with it)."""

SCHEMA = {}

"""Config schema of the `ptb_lm` workload (torch-free: the host validates grids with it)."""

SCHEMA = {}

"""Stage 1, the grid: a TOML grid file (+ --set) validated into a frozen Sweep (spec.py).

load.py reads and checks the grid (every key, every trial's worker config through its
workload's plug-in); matrix.py reads images/matrix.toml; spec.py holds the dataclasses
every later stage trusts.
"""

"""versweep workers: the workloads that run inside every image.

Python >= 3.6, torch >= 0.4, standard library only (no numpy, no ray, no mlflow).
Run one with ``python -m workers <workload> --config '<json>'``; it prints
protocol v1 events (JSON lines) on stdout. See DESIGN.md and workers/cli.py.
"""

"""Where things are in the checkout versweep runs from (an editable install), in one place.

    REPO_ROOT     the directory holding sweeps/, workers/, analysis/, images/
    WORKERS_DIR   workers/: what every trial runs (mounted into containers as it is)
    MATRIX_PATH   images/matrix.toml: the image matrix, the default of every --matrix
    GRIDS_DIR     sweeps/grids: the shipped grids, found by name (--grid smoke)
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKERS_DIR = REPO_ROOT / "workers"
MATRIX_PATH = REPO_ROOT / "images" / "matrix.toml"
GRIDS_DIR = REPO_ROOT / "sweeps" / "grids"

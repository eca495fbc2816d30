"""``python sweeps/run.py``: run a sweep of a grid, the same command as ``versweep run``.

    python sweeps/run.py --grid smoke
    python sweeps/run.py --grid versions --dry-run

This file is only an entry point: the command is sweeps/cli.py (its arguments) and
sweeps/execute/sweep.py (run_sweep).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run from a checkout, installed or not: import the packages of the checkout this
    # file is in, and never this directory's own modules as top-level ones (the only
    # sys.path handling in versweep; its entry points are these scripts and `versweep`).
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))
    from sweeps.cli import main

    sys.exit(main(sys.argv[1:], script="run"))

"""``python sweeps/schedule.py``: scheduled sweeps, the same command as ``versweep schedule``.

    python sweeps/schedule.py --grid nightly --address http://HEAD:8265 --cron "0 3 * * *"
    python sweeps/schedule.py list

This file is only an entry point: the command is sweeps/cluster/schedule.py.
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

    sys.exit(main(sys.argv[1:], script="schedule"))

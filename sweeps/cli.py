"""The ``versweep`` command (and ``python sweeps/run.py``): arguments in, ``run_sweep`` called.

    versweep --grid smoke
    versweep --grid versions --dry-run
    versweep --grid hparams --resume --max-concurrent 2
    versweep --grid my_grid.toml --set sweep.trial_timeout_s=60 --tracking-uri http://127.0.0.1:5000
    versweep report --experiment versions        (analysis/report.py: the comparison report)

Every expected user error (UserError) becomes one line, ``versweep: error: ...``, and
exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ArgumentParser, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="versweep",
        description="Run a sweep of PyTorch RNN workloads (a grid file) under Ray Tune and "
                    "record every trial in MLflow.")
    parser.add_argument("--grid", required=True,
                        help="a grid name from sweeps/grids (smoke, versions, hparams, "
                             "nightly) or the path of a .toml grid file")
    parser.add_argument("--backend", help="where workers run: local or docker "
                                          "(default: the grid's backend)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the grid's name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                                               "$MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--address", help="join this existing Ray cluster (e.g. auto or "
                                          "host:6379) instead of starting a local one")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest run of this sweep: decided trials are not "
                             "run again, a search continues its Optuna study")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trial table and the resources each trial asks for; "
                             "start nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a grid value (repeatable)")
    parser.add_argument("--max-concurrent", type=_positive_int,
                        help="at most this many trials at once (default: the grid's, else "
                             "as many as Ray's resources allow)")
    parser.add_argument("--matrix", help="the image matrix the grid's images come from "
                                         "(default: images/matrix.toml)")
    parser.add_argument("--num-cpus", type=_positive_int,
                        help="CPUs of the local Ray cluster (default: all of this machine's)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the sweep (or ``report ...``); return the process exit code."""
    from .run import EXIT_INTERRUPTED, run_sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from analysis.report import main as report_main

        return report_main(argv[1:], prog="versweep report")
    try:
        args = build_parser().parse_args(argv)
        return run_sweep(args.grid, backend=args.backend, experiment=args.experiment,
                         tracking_uri=args.tracking_uri, address=args.address,
                         resume=args.resume, dry_run=args.dry_run, overrides=args.overrides,
                         max_concurrent=args.max_concurrent, num_cpus=args.num_cpus,
                         matrix=args.matrix)
    except UserError as exc:
        sys.stderr.write(f"versweep: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("versweep: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The ``versweep`` command: one entry point, one command per stage.

    versweep run --grid smoke                    run a sweep       (python sweeps/run.py)
    versweep report --experiment versions        its report        (python analysis/report.py)
    versweep join A/trials.csv B/trials.csv --out DIR   one series from several sweeps' reports
                                                 (python -m analysis.join)
    versweep images list | build | pull | verify | push            (python images/build.py)
    versweep schedule --grid nightly --cron ...  scheduled sweeps  (python sweeps/schedule.py)
    versweep datasets ptb --dest data/ptb        download a corpus (python -m sweeps.datasets)
    versweep envs list | build | prune           the venv backend's environments
    versweep resources                           this node's Ray resources
                                                 (python -m sweeps.cluster.resources)
    versweep --grid smoke                        the same as `versweep run --grid smoke`

The documented scripts are thin entry points into this module, with the same arguments,
messages and exit codes. Every command shares the exit codes of sweeps/errors.py (0 done,
1 something failed, 2 a user error as one line on stderr, 130 interrupted) and says its
own usage errors in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sweeps.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    ArgumentParser,
    UserError,
    one_line,
    positive_int,
)


def _run(argv: list[str], prog: str) -> int:
    from sweeps.execute.sweep import run_sweep

    try:
        args = build_parser(prog).parse_args(argv)
        return run_sweep(args.grid, backend=args.backend, experiment=args.experiment,
                         tracking_uri=args.tracking_uri, address=args.address,
                         resume=args.resume, dry_run=args.dry_run, overrides=args.overrides,
                         max_concurrent=args.max_concurrent, num_cpus=args.num_cpus,
                         matrix=args.matrix)
    except UserError as exc:
        sys.stderr.write(f"versweep: error: {one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("versweep: interrupted\n")
        return EXIT_INTERRUPTED


def _report(argv: list[str], prog: str) -> int:
    from analysis.command import main

    return main(argv, prog=prog)


def _join(argv: list[str], prog: str) -> int:
    from analysis.join import main

    return main(argv, prog=prog)


def _images(argv: list[str], prog: str) -> int:
    from sweeps.images.build import main

    return main(argv, prog=prog)


def _schedule(argv: list[str], prog: str) -> int:
    from sweeps.cluster.schedule import main

    return main(argv, prog=prog)


def _datasets(argv: list[str], prog: str) -> int:
    from sweeps.datasets import main

    return main(argv, prog=prog)


def _envs(argv: list[str], prog: str) -> int:
    from sweeps.envs.command import main

    return main(argv, prog=prog)


def _resources(argv: list[str], prog: str) -> int:
    from sweeps.cluster.resources import main

    return main(argv, prog=prog)


# name -> (what it does, its main, the prog its script has always used)
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], int], str]] = {
    "run": ("run a sweep of a grid under Ray Tune, recorded in MLflow", _run, "versweep"),
    "report": ("write the version-comparison report of a sweep", _report, "report.py"),
    "join": ("join the reports of a version sweep run in parts into one series, with the "
             "drift between the parts", _join, "python -m analysis.join"),
    "images": ("list, build, pull, verify and mirror the matrix's Docker images", _images,
               "build.py"),
    "schedule": ("submit a grid's sweep to a Ray cluster on a schedule", _schedule,
                 "schedule.py"),
    "datasets": ("download a dataset and verify its checksums", _datasets,
                 "python -m sweeps.datasets"),
    "envs": ("list, build and prune the venv backend's environments (one per matrix entry)",
             _envs, "versweep envs"),
    "resources": ("print this node's versweep resources for `ray start --resources`",
                  _resources, "python -m sweeps.cluster.resources"),
}


def build_parser(prog: str = "versweep run") -> argparse.ArgumentParser:
    """The arguments of ``versweep run`` (and of ``python sweeps/run.py``)."""
    parser = ArgumentParser(
        prog=prog,
        description="Run a sweep of PyTorch RNN workloads (a grid file) under Ray Tune and "
                    "record every trial in MLflow.")
    parser.add_argument("--grid", required=True,
                        help="a grid name from sweeps/grids (smoke, versions, hparams, "
                             "nightly) or the path of a .toml grid file")
    parser.add_argument("--backend", help="where workers run: local, docker or venv "
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
    parser.add_argument("--max-concurrent", type=positive_int,
                        help="at most this many trials at once (default: the grid's, else "
                             "as many as Ray's resources allow)")
    parser.add_argument("--matrix", help="the image matrix the grid's images come from "
                                         "(default: images/matrix.toml)")
    parser.add_argument("--num-cpus", type=positive_int,
                        help="CPUs of the local Ray cluster (default: all of this machine's)")
    return parser


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: versweep COMMAND [ARGS]   (versweep COMMAND --help for its arguments)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (text, _, _) in COMMANDS.items()]
    lines += ["", "versweep --grid NAME ... is versweep run --grid NAME ..."]
    return "\n".join(lines)


def _checked_settings(prog: str) -> int:
    """0, or EXIT_USER_ERROR after one line, for a setting every command reads as it works
    ($VERSWEEP_PROGRESS_EVERY_S): refused before a command makes or fetches anything.
    A sweep checks it in run_sweep itself (a scheduled job calls that, not this)."""
    if prog in ("versweep", "versweep run"):
        return 0
    from sweeps.progress import every_s

    try:
        every_s()
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return EXIT_USER_ERROR
    return 0


def main(argv: Sequence[str] | None = None, *, script: str | None = None) -> int:
    """Dispatch ``argv`` to its command; return the exit code.

    ``script``: the command a documented script stands for (``python images/build.py``
    calls ``main(argv, script="images")``): its arguments, messages and exit codes are
    then exactly that script's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if script is not None:
        _, command_main, prog = COMMANDS[script]
        return _checked_settings(prog) or command_main(argv, prog)
    if not argv:
        sys.stderr.write(usage() + "\n")
        return EXIT_USER_ERROR
    if argv[0] in ("-h", "--help"):
        print(usage())
        return EXIT_OK
    if argv[0] in COMMANDS:
        name, rest = argv[0], argv[1:]
        prog = f"versweep {name}"
        return _checked_settings(prog) or COMMANDS[name][1](rest, prog)
    if argv[0].startswith("-"):  # `versweep --grid smoke`: the sweep, as it always was
        return _run(argv, "versweep")
    sys.stderr.write(f"versweep: error: '{argv[0]}' is not a command; one of "
                     f"{', '.join(COMMANDS)} (see versweep --help)\n")
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

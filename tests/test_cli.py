"""One command, `versweep`, and the documented scripts that are the same commands.

Each subcommand and its script give the same output and exit code for the same
arguments; a user error is one line, exit 2, in the command's own name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSWEEP = [sys.executable, "-c", "import sys; from sweeps.cli import main; sys.exit(main())"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp"})


def test_help_lists_every_command():
    from sweeps.cli import COMMANDS

    done = run([*VERSWEEP, "--help"], ROOT)
    assert done.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in done.stdout
    assert set(COMMANDS) >= {"run", "report", "images", "schedule", "datasets", "resources"}


@pytest.mark.parametrize("args, line", [
    (["frob"], "versweep: error: 'frob' is not a command; one of run, report"),
    ([], "usage: versweep COMMAND"),
])
def test_no_or_an_unknown_command_is_a_usage_error(args, line):
    done = run([*VERSWEEP, *args], ROOT)
    assert done.returncode == 2 and done.stderr.startswith(line), done.stderr


@pytest.mark.parametrize("command, script, args", [
    ("images", ["images/build.py"], ["list", "cpu"]),
    ("run", ["sweeps/run.py"], ["--grid", "smoke", "--dry-run"]),
    ("schedule", ["sweeps/schedule.py"], ["--help"]),
    ("report", ["analysis/report.py"], ["--help"]),
])
def test_a_script_and_its_subcommand_say_the_same(tmp_path, command, script, args):
    by_script = run([sys.executable, str(ROOT / script[0]), *args], tmp_path)
    by_command = run([*VERSWEEP, command, *args], tmp_path)
    assert by_script.returncode == by_command.returncode == 0, by_script.stderr
    if args == ["--help"]:  # the usage block names the command it was called as
        assert by_script.stdout.split("\n\n", 1)[1] == by_command.stdout.split("\n\n", 1)[1]
    else:
        assert by_script.stdout == by_command.stdout


@pytest.mark.parametrize("args, prefix", [
    (["report", "--experiment", "nope", "--tracking-uri", "sqlite:////nonexistent/x.db"],
     "versweep report: error: no MLflow store at /nonexistent/x.db"),
    (["images", "build", "torch-9.9.9"], "versweep images: error: "),
    (["datasets", "imagenet", "--dest", "d"], "versweep datasets: error: dataset 'imagenet'"),
    (["schedule", "--grid", "smoke"], "versweep schedule: error: "),
    (["run", "--grid", "nope"], "versweep: error: "),
])
def test_a_user_error_is_one_line_in_the_commands_name(tmp_path, args, prefix):
    done = run([*VERSWEEP, *args], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind

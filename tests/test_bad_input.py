"""Every bad input is refused cleanly (README: "bad input gets one clear line and exit 2").

Each class of bad input (docs/reliability.md, "Bad input"), several cases each, through the
commands as a user types them: the exit code is 2, stderr is one line ``<command>: error:``
naming the input, there is no traceback, and nothing was created: the working directory
lists the same files before and after (no mlflow.db, no mlruns/ or mlartifacts/, no report
or dataset directory) and the private Ray temp dir holds no session.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sweeping import free_port

from sweeps.cli import main

ROOT = Path(__file__).resolve().parent.parent
LONG_NAME = "a" * 5000  # the file system takes 255 bytes a name, 4095 a path
LONG_PATH = "d/" * 2100 + "grid.toml"


@pytest.fixture
def place(tmp_path, monkeypatch, ray_tmp):
    """A fresh working directory holding a few troublemakers: a file ``f``, a loop of
    symbolic links ``loop1.toml`` <-> ``loop2.toml``, a directory ``dir.toml``, a binary
    ``binary.toml`` and a dangling link ``gone.toml``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    (tmp_path / "f").write_text("a file\n")
    os.symlink("loop2.toml", tmp_path / "loop1.toml")
    os.symlink("loop1.toml", tmp_path / "loop2.toml")
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)) * 4)
    os.symlink("nowhere.toml", tmp_path / "gone.toml")
    return tmp_path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(args: list[str], place: Path, capsys, *, prog: str | None = None) -> str:
    """Run ``versweep ARGS`` in ``place``; assert the clean refusal; return the line."""
    before = listing(place)
    code = main(args)
    out, err = capsys.readouterr()
    prog = prog or (f"versweep {args[0]}" if args[0] != "run" else "versweep")
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "Error:" not in lines[0].split("error: ", 1)[1][:20]
    assert listing(place) == before, "something was created"
    ray_dir = os.environ["RAY_TMPDIR"]
    assert os.listdir(ray_dir) == [], "a Ray instance was started"
    return lines[0]


# --------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("grid, words", [
    (LONG_NAME, "too long for the file system"),
    (LONG_PATH, "too long for the file system"),
    ("a" * 300 + ".toml", "a name too long"),
    ("loop1.toml", "loop of symbolic links"),
    ("dir.toml", "is a directory"),
    ("f/grid.toml", "'f' is a file, not a directory"),
    ("binary.toml", "not UTF-8 text"),
    ("gone.toml", "no such file (a symbolic link to nothing)"),
    ("/dev/null", "not a regular file"),
    ("", "is empty"),
    ("smoke\n--dry-run", "control characters"),
])
def test_a_grid_path_that_cannot_be_read_is_one_line(place, capsys, grid, words):
    line = refused(["run", "--grid", grid, "--dry-run"], place, capsys)
    assert words in line
    assert len(line) < 400  # a 5000-character path is shown cut


def test_an_unreadable_grid_is_one_line(place, capsys, monkeypatch):
    grid = place / "locked.toml"
    grid.write_text("[sweep]\n")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                        if Path(path).name == "locked.toml" else real_access(path, mode, **kw))
    assert "cannot be read (permission denied)" in refused(
        ["run", "--grid", "locked.toml", "--dry-run"], place, capsys)


@pytest.mark.parametrize("out, words", [
    ("f", "is an existing file; give a directory"),
    ("f/report", "'f' is a file, not a directory"),
    ("loop1.toml", "loop of symbolic links"),
    ("gone.toml", "symbolic link to nothing"),
    (LONG_NAME, "too long"),
    ("r\nx", "control characters"),
])
def test_a_report_out_that_cannot_hold_the_report_is_one_line(place, capsys, out, words):
    line = refused(["report", "--experiment", "x", "--out", out], place, capsys)
    assert line.startswith("versweep report: error: --out ") and words in line


def test_a_report_out_in_a_directory_that_cannot_be_written_is_one_line(place, capsys,
                                                                          monkeypatch):
    locked = place / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                        if os.path.abspath(path) == str(locked)
                        else real_access(path, mode, **kw))
    assert "cannot be written" in refused(
        ["report", "--experiment", "x", "--out", "locked/today"], place, capsys)
    assert "cannot be written" in refused(
        ["report", "--experiment", "x", "--out", "locked"], place, capsys)


@pytest.mark.parametrize("args, words", [
    (["--tracking-uri", "sqlite:///f/mlflow.db"], "/f' is a file, not a directory"),
    (["--tracking-uri", "sqlite:///dir.toml"], "is a directory; name the SQLite file"),
    (["--tracking-uri", f"sqlite:///{LONG_NAME}.db"], "too long"),
    (["--tracking-uri", "f"], "is a file"),
    (["--matrix", "loop1.toml"], "loop of symbolic links"),
    (["--matrix", "dir.toml"], "is a directory"),
    # The smoke grid runs on the host's torch and reads no image, but a --matrix given is
    # checked all the same: a mistake there is not passed over in silence.
    (["--matrix", "f"], "f: not valid TOML"),
    (["--matrix", "ROOT/sweeps/grids/smoke.toml"], "smoke.toml: sweep: unknown key; the matrix "
                                                  "holds schema = 1 and [[image]] tables"),
    (["--set", "sweep.data_dir=f"], "sweep.data_dir: directory 'f' is a file"),
    (["--set", "sweep.data_dir=loop1.toml"], "loop of symbolic links"),
    (["--set", "sweep.workload_dirs=[\"PLACE/loop1.toml\"]"], "loop of symbolic links"),
    (["--set", "sweep.workload_dirs=[\"PLACE/f\"]"], "is a file, not a directory"),
])
def test_other_paths_of_a_sweep_are_one_line(place, capsys, args, words):
    args = [arg.replace("PLACE", str(place)).replace("ROOT", str(ROOT)) for arg in args]
    assert words in refused(["run", "--grid", "smoke", *args], place, capsys)


@pytest.mark.parametrize("dest, words", [
    ("f", "is an existing file"),
    ("f/ptb", "'f' is a file"),
    (LONG_NAME, "too long"),
])
def test_a_dataset_destination_that_cannot_be_made_is_one_line(place, capsys, dest, words):
    assert words in refused(["datasets", "ptb", "--dest", dest], place, capsys)


# --------------------------------------------------------------------------------- names


@pytest.mark.parametrize("args, words", [
    (["--experiment", "e" * 501], "is 501 characters long; a name has at most 200"),
    (["--experiment", "e" * 201], "is 201 characters long"),
    (["--experiment", ""], "is empty"),
    (["--experiment", "   "], "is empty"),
    (["--experiment", "two\nlines"], "control characters"),
    (["--experiment", "tab\there"], "control characters"),
    (["--experiment", " padded"], "white space"),
    (["--set", "sweep.name=" + "n" * 201], "sweep.name: 'nnn"),
    (["--set", "sweep.name=\"\""], "sweep.name: '' is empty"),
    (["--set", "sweep.name=\"a\\tb\""], "control characters"),
    (["--set", "sweep.name=résumé"], "ASCII letters"),
])
def test_a_name_beyond_mlflows_limits_is_one_line_before_any_store(place, capsys, args,
                                                                    words):
    # Not a dry run: the store would be the next thing made.
    assert words in refused(["run", "--grid", "smoke", *args], place, capsys)


def test_a_report_of_a_name_mlflow_cannot_hold_is_one_line(place, capsys):
    assert "is 600 characters long" in refused(
        ["report", "--experiment", "x" * 600], place, capsys)


# --------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("address, words", [
    ("not a:address:x", "holds spaces"),
    ("a:b:c", "more than one ':'"),
    ("head", "has no port"),
    ("head:", "has no port"),
    ("head:0", "from 1 to 65535"),
    ("head:99999", "from 1 to 65535"),
    ("head:http", "from 1 to 65535"),
    ("http://head:8265", "the dashboard's"),
    ("tcp://head:6379", "unknown scheme 'tcp'"),
    ("ray://head:x", "'ray://head:x'"),
    ("[::1", "unclosed '['"),
    ("", "is empty"),
    ("-_-:6379", "not a host name"),
])
def test_a_malformed_address_is_one_line_before_anything(place, capsys, address, words):
    line = refused(["run", "--grid", "smoke", f"--address={address}"], place, capsys)
    assert line.startswith("versweep: error: --address ") and words in line
    # The same words in a dry run, and from the other commands that join a cluster.
    assert words in refused(["run", "--grid", "smoke", "--dry-run", f"--address={address}"],
                            place, capsys)
    assert words in refused(["envs", "build", "--grid", "versions-cpu",
                             f"--address={address}"], place, capsys)


def test_num_cpus_with_a_cluster_to_join_is_one_line_not_ignored(place, capsys,
                                                                   monkeypatch):
    # --num-cpus sizes a local Ray; a joined cluster's nodes decide their own CPUs.
    line = refused(["run", "--grid", "smoke", "--num-cpus", "2", "--address",
                    f"127.0.0.1:{free_port()}"], place, capsys)
    assert "--num-cpus sizes the local Ray this command starts, but it joins" in line
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    assert "($RAY_ADDRESS)" in refused(["run", "--grid", "smoke", "--num-cpus", "2"],
                                       place, capsys)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_progress_pace_is_one_line_not_passed_over(place, capsys, monkeypatch, value):
    monkeypatch.setenv("VERSWEEP_PROGRESS_EVERY_S", value)
    monkeypatch.setenv("VERSWEEP_ENVS_DIR", str(place / "envs"))
    said = (f"error: VERSWEEP_PROGRESS_EVERY_S={value!r} is not a number of seconds (0 or "
            "more); set it to e.g. 5, or unset it")
    assert refused(["run", "--grid", "smoke"], place, capsys) == f"versweep: {said}"
    # Every command that shows progress: refused before it makes or fetches anything.
    for args in (["envs", "build", "torch-2.13.0-cpu"],
                 ["datasets", "ptb", "--dest", "ptb", "--base-url", "http://127.0.0.1:1/"]):
        assert refused(args, place, capsys) == f"versweep {args[0]}: {said}"


def test_an_address_where_nothing_listens_leaves_no_store(place, capsys):
    line = refused(["run", "--grid", "smoke", "--address", f"127.0.0.1:{free_port()}"],
                   place, capsys)
    assert "cannot join the Ray cluster at 127.0.0.1:" in line
    assert "nothing answers there" in line


@pytest.mark.parametrize("address, words", [
    ("http://[head", "Invalid IPv6 URL"),
    ("head:99999", "Port out of range"),
    ("ftp://head", "must start with http:// or https://"),
])
def test_a_malformed_dashboard_address_is_one_line(place, capsys, address, words):
    assert words in refused(["schedule", "--grid", "smoke", "--once",
                             f"--address={address}"], place, capsys)
    assert words in refused(["schedule", "list", f"--address={address}"], place, capsys,
                            prog="versweep schedule")


def test_resume_with_no_earlier_sweep_makes_no_store(place, capsys):
    line = refused(["run", "--grid", "smoke", "--resume"], place, capsys)
    assert "--resume: no earlier run of sweep 'smoke'" in line


# --------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("setting, words", [
    ("sweep.repeats=-1", "sweep.repeats: is -1; it must be at least 1"),
    ("sweep.repeats=0", "sweep.repeats: is 0; it must be at least 1"),
    ("sweep.repeats=1000000000", "it must be at most 10,000"),
    ("sweep.repeats=2.5", "must be an integer"),
    ("sweep.repeats=many", "must be an integer"),
    ("sweep.seed=18446744073709551616", "sweep.seed: is 18446744073709551616; it must be at "
                                        "most 4,294,967,295"),
    ("sweep.seed=-1", "sweep.seed: is -1"),
    ("sweep.seed=4294967295", "config key 'seed' is 4294967296"),  # repeat 1 runs seed + 1
    ("group.*.config.seed=4294967296", "it must be at most 4294967295"),
    ("sweep.trial_timeout_s=0", "must be greater than 0"),
    ("sweep.trial_timeout_s=-5", "must be greater than 0"),
    ("sweep.trial_timeout_s=1e308", "it must be at most 2,592,000"),
    ("sweep.trial_timeout_s=nan", "must be a finite number"),
    ("sweep.retries=1000", "it must be at most 100"),
    ("sweep.max_concurrent=0", "it must be at least 1"),
    ("group.*.config.hidden_size=100000000", "it must be at most 65536"),
    ("group.*.config.hidden_size=0", "it must be greater than 0"),
    ("group.*.config.batches=100000000", "it must be at most 10000000"),
    ("group.*.config.synthetic_words=1000000000000", "it must be at most 100000000"),
])
def test_a_size_out_of_bounds_is_one_line_in_the_dry_run(place, capsys, setting, words):
    sets = ["--set", setting] + (["--set", "sweep.repeats=2"] if "4294967295" in setting else [])
    line = refused(["run", "--grid", "smoke", "--dry-run", *sets], place, capsys)
    assert words in line, line
    if "sweep.seed=4294967295" in setting:
        assert "sweep.seed: " in line  # the key the user set, not the worker's


def test_a_grid_of_too_many_trials_is_refused_before_it_is_expanded(place, capsys):
    axes = ",".join(str(i) for i in range(1, 401))
    line = refused(["run", "--grid", "smoke", "--dry-run", "--set", "sweep.repeats=1000",
                    "--set", f"group.2.axes.seed=[{axes}]"], place, capsys)
    assert "expands to 400,000 trials" in line and "at most 100,000" in line


@pytest.mark.parametrize("setting, words", [
    ("group.*.config.hidden_size=60000", "parameters 429.3 GiB"),
    ("group.*.config.batch_size=1000000", "make batch_size, num_steps"),
    ("group.*.config.num_steps=100000", "activations"),
])
def test_a_config_that_cannot_fit_in_memory_is_refused_with_the_estimate(place, capsys,
                                                                          monkeypatch, setting,
                                                                          words):
    from sweeps import workloads

    # The check is against this machine's memory (os.sysconf); the test fixes it at 1 GiB.
    monkeypatch.setattr(workloads, "_machine_memory", lambda: 1 << 30)
    line = refused(["run", "--grid", "smoke", "--dry-run", "--set", setting], place, capsys)
    assert "the config needs at least" in line and "of memory" in line
    assert "but this machine has 1.0 GiB" in line and words in line


@pytest.mark.parametrize("args, words", [
    (["run", "--grid", "smoke", "--max-concurrent", "0"], "0 must be at least 1"),
    (["run", "--grid", "smoke", "--max-concurrent", "-3"], "-3 must be at least 1"),
    (["run", "--grid", "smoke", "--num-cpus", "10000000"], "is more than 1,000,000"),
    (["run", "--grid", "smoke", "--num-cpus", "two"], "is not a whole number"),
    (["datasets", "ptb", "--dest", "d", "--timeout", "-1"], "must be more than 0"),
    (["datasets", "ptb", "--dest", "d", "--timeout", "0"], "must be more than 0"),
    (["datasets", "ptb", "--dest", "d", "--timeout", "nan"], "must be more than 0"),
    (["datasets", "ptb", "--dest", "d", "--timeout", "1e9"], "at most 3600 seconds"),
    (["schedule", "--grid", "smoke", "--address", "127.0.0.1:1", "--every", "-5m"],
     "--every '-5m': an interval must be at least 1 s"),
    (["schedule", "--grid", "smoke", "--address", "127.0.0.1:1", "--every", "0s"],
     "at least 1 s"),
    (["schedule", "--grid", "smoke", "--address", "127.0.0.1:1", "--every", "400d"],
     "at most 366d"),
    (["schedule", "list", "--limit", "-2"], "-2 must be at least 1"),
])
def test_a_count_or_interval_out_of_bounds_is_one_line(place, capsys, args, words):
    prog = "versweep schedule" if args[0] == "schedule" else None
    assert words in refused(args, place, capsys, prog=prog)


# --------------------------------------------------------------------------------- worker configs


def test_a_binary_or_huge_worker_config_file_is_a_bad_config_event(tmp_path):
    from workers.cli import MAX_CONFIG_BYTES, load_config_text
    from workers.protocol import BadConfig

    binary = tmp_path / "config.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(BadConfig, match="is not UTF-8 text"):
        load_config_text(f"@{binary}")
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(BadConfig, match="larger than 1.0 MiB"):
        load_config_text(f"@{big}")
    with pytest.raises(BadConfig, match="nested too deeply"):
        load_config_text("[" * 100000)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"seed": 3}).encode())
    assert load_config_text(f"@{bom}") == {"seed": 3}


def test_the_worker_refuses_a_config_its_device_cannot_hold_with_the_estimate(worker,
                                                                               tmp_path):
    binary = tmp_path / "config.json"
    binary.write_bytes(bytes(range(256)))
    bad = worker("ptb_lm", raw_config=f"@{binary}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.one("error")["kind"] == "bad_config"

    huge = worker("rnn_bench", {"bench": "1x320-ce-short", "device": "cpu",
                                "hidden_size": 60000, "batch_size": 100000})
    assert huge.returncode == 3, huge.stderr
    reason = huge.one("unsupported")["reason"]
    assert reason.startswith("the config needs at least ") and "this machine has" in reason
    assert huge.kinds == ["env", "unsupported"] and huge.events[0]["device"] == "cpu"


def test_the_host_and_the_worker_share_one_estimate():
    from workers import memory, ptb_lm_config, rnn_bench_config
    from workers.workloads import resolve_workload_config

    small = resolve_workload_config("ptb_lm", {"preset": "small", "data_dir": "/ptb"})
    parts = dict(ptb_lm_config.memory_estimate(small))
    # The small model on PTB: 2 x (V x H) + 2 layers of 4H x 2H, with gradients, float32.
    assert 30e6 < parts["parameters"] < 45e6
    bench = resolve_workload_config("rnn_bench", {"bench": "4x320-ctc-long"})
    assert memory.total(rnn_bench_config.memory_estimate(bench)) < 8 << 30  # fits a 2017 GPU
    assert memory.problem(ptb_lm_config, small, 1 << 20, "it has").startswith(
        "the config needs at least ")
    assert memory.problem(ptb_lm_config, small, 1 << 40, "it has") is None
    assert memory.format_bytes(1536) == "1.5 KiB" and memory.format_bytes(12) == "12 bytes"


# --------------------------------------------------------------------------------- messages


def test_a_multi_line_set_value_is_refused_not_cut_short(place, capsys):
    line = refused(["run", "--grid", "smoke", "--dry-run", "--set", "sweep.repeats=2\nfoo=3"],
                   place, capsys)
    assert "'2\\nfoo=3' runs over several lines" in line
    # A TOML multi-line string is one value, and is taken.
    assert main(["run", "--grid", "smoke", "--dry-run", "--set",
                 'sweep.description="""two\nlines"""']) == 0


def test_a_grid_with_a_byte_order_mark_is_read(place, capsys):
    grid = place / "bom.toml"
    grid.write_bytes(b"\xef\xbb\xbf" + b'[sweep]\nname = "bom"\n\n[[group]]\nworkload = "env"\n')
    assert main(["run", "--grid", "bom.toml", "--dry-run"]) == 0
    assert "1 trials; nothing started (dry run)" in capsys.readouterr().out


def test_comparing_an_image_with_itself_is_refused(place, capsys):
    line = refused(["report", "--experiment", "x", "--compare", "torch-2.1.0-cu121",
                    "torch-2.1.0-cu121"], place, capsys)
    assert "'torch-2.1.0-cu121' is compared with itself" in line


def test_a_sweep_whose_every_trial_crashed_says_why_in_its_summary():
    from sweeps.execute.summary import TrialRecord, format_summary
    from sweeps.status import worker_end

    tail = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
            "ModuleNotFoundError: No module named 'torch'"]
    crash = worker_end(terminal=None, exit_code=1, stop_requested=False, timed_out=False,
                       killed=False, stderr_tail=tail)
    records = [TrialRecord(key=str(i), name=f"t{i}", workload="env", status=crash.status,
                           message=crash.message) for i in range(3)]
    text = format_summary(records, where="here", ui_command="ui", experiment="e")
    assert ("failed: t0: the worker exited with code 1 without a final event; its last stderr "
            "line: ModuleNotFoundError: No module named 'torch'") in text
    assert "every one of the 3 trials failed" in text


def test_an_interrupted_sweep_points_at_resume_not_at_tunes_restore(caplog):
    import logging

    from sweeps.execute import tune as sweep_tune
    from sweeps.execute.summary import format_summary

    sweep_tune._quiet_restore_hint()
    with caplog.at_level(logging.WARNING, logger="ray.tune.tune"):
        logging.getLogger("ray.tune.tune").warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/x", trainable=...)')
    assert "Tuner.restore" not in caplog.text
    text = format_summary([], where="here", ui_command="ui", experiment="e", interrupted=True)
    assert "continue it: the same command with --resume" in text


# --------------------------------------------------------------------------------- nothing created


def test_read_only_commands_create_nothing(place, capsys):
    before = listing(place)
    assert main(["run", "--grid", "smoke", "--dry-run"]) == 0
    assert main(["schedule", "list"]) == 0
    assert "no MLflow store there" in capsys.readouterr().out
    assert listing(place) == before and os.listdir(os.environ["RAY_TMPDIR"]) == []


@pytest.mark.parametrize("args, words", [
    (["--grid", LONG_NAME, "--dry-run"], "too long for the file system"),
    (["--grid", "loop1.toml", "--dry-run"], "loop of symbolic links"),
    (["--grid", "smoke", "--address", "not a:address:x"], "holds spaces"),
])
def test_the_reported_cases_as_a_user_runs_them(place, args, words):
    """The cases of issue 14, as processes: python sweeps/run.py ..."""
    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "run.py"), *args],
                          cwd=place, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("versweep: error: "), done.stderr[-2000:]
    assert words in lines[0]
    assert sorted(os.listdir(place)) == ["binary.toml", "dir.toml", "f", "gone.toml",
                                         "loop1.toml", "loop2.toml"]


def test_the_validation_layer_itself():
    from sweeps import validate
    from sweeps.errors import one_line

    assert one_line("a\nb\r\x00c") == "a\\nb\\r\\x00c"
    assert validate.shown("x" * 100).endswith("(100 characters)'")
    assert validate.ray_address(" head:6379 ") == "head:6379"
    assert validate.ray_address("ray://head") == "ray://head"
    assert validate.host_port("[::1]:80", "a") == ("::1", 80)
    assert validate.url("http://127.0.0.1:5000/", "u") == "http://127.0.0.1:5000/"
    with pytest.raises(validate.InputError) as caught:
        validate.integer(10, "--n", 1, 5)
    assert caught.value.problem == "must be from 1 to 5" and caught.value.what == "--n"
    out = io.StringIO()
    assert validate.number(2.5, "x") == 2.5 and not out.getvalue()

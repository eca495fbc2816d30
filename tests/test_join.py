"""analysis/join.py: the lines of several version sweeps joined into one series, with the
drift between the sweeps measured on the lines they share."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import join

ROOT = Path(__file__).resolve().parent.parent
HEADER = ["run_id", "name", "workload", "image", "repeat", "status", "ms_per_batch_median",
          "test_perplexity", "best_valid_perplexity", "words_per_second", "message"]


def trials(path: Path, lines: dict[str, float], *, noise=(0.99, 1.0, 1.01),
           status: str = "ok") -> Path:
    """A report's trials.csv: 1x320 cudnn at ``lines[image]`` ms, three repeats each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for image, ms in lines.items():
            for repeat, factor in enumerate(noise):
                writer.writerow([f"{image}{repeat}", f"rnn_bench 1x320 cudnn @ {image} #{repeat}",
                                 "rnn_bench", image, repeat, status, ms * factor, "", "", "",
                                 ""])
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.join", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_anchor_lines_give_the_drift_and_steps_across_sweeps_are_marked(tmp_path):
    first = trials(tmp_path / "first" / "trials.csv", {
        "torch-1.0.1-cu100": 100.0, "torch-1.4.0-cu101": 100.0, "torch-2.0.1-cu117": 40.0,
        "torch-2.4.0-cu124": 40.0})
    # The second sweep measures the lines between, and 2.0.1 again on a machine 10% slower.
    second = trials(tmp_path / "second" / "trials.csv", {
        "torch-1.2.0-cu100": 100.0, "torch-1.13.1-cu116": 100.0, "torch-2.0.1-cu117": 44.0,
        "torch-2.2.2-cu121": 20.0})
    done = run(str(first), str(second), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "7 torch lines from 2 sweeps" in done.stdout

    drift = list(csv.DictReader((tmp_path / "out" / "drift.csv").open()))
    assert [(d["image"], d["first_sweep"], d["later_sweep"]) for d in drift] == [
        ("torch-2.0.1-cu117", "first", "second")]
    assert float(drift[0]["ratio_later_over_first"]) == pytest.approx(1.1)

    lines = list(csv.DictReader((tmp_path / "out" / "lines.csv").open()))
    # Release order, each line once, an anchor's values from the first sweep that had it.
    assert [row["image"] for row in lines] == [
        "torch-1.0.1-cu100", "torch-1.2.0-cu100", "torch-1.4.0-cu101", "torch-1.13.1-cu116",
        "torch-2.0.1-cu117", "torch-2.2.2-cu121", "torch-2.4.0-cu124"]
    anchor = next(row for row in lines if row["image"] == "torch-2.0.1-cu117")
    assert anchor["sweep"] == "first" and float(anchor["median"]) == pytest.approx(40.0)

    steps = list(csv.DictReader((tmp_path / "out" / "steps.csv").open()))
    found = {(s["before"], s["after"]): s for s in steps}
    # 1.13.1 (second sweep) -> 2.0.1 (first sweep): across the sweeps, with the drift beside.
    big = found[("torch-1.13.1-cu116", "torch-2.0.1-cu117")]
    assert big["sweeps"] == "across (second -> first)"
    assert float(big["drift_low"]) == pytest.approx(1.1)
    assert float(big["ratio"]) == pytest.approx(0.4, rel=0.01)
    assert big["reading"] == "beyond the drift"  # 0.4x is far from the 1/1.1 drift gives
    # 2.0.1 -> 2.2.2 halves, 2.2.2 -> 2.4.0 doubles back: both found, both across sweeps.
    assert ("torch-2.0.1-cu117", "torch-2.2.2-cu121") in found
    assert ("torch-2.2.2-cu121", "torch-2.4.0-cu124") in found
    text = (tmp_path / "out" / "join.md").read_text()
    assert "| torch-2.0.1-cu117 | first | second |" in text
    assert "1 anchor figures: later / first median 1.100" in text
    assert list((tmp_path / "out" / "plots").glob("*.png"))


def test_a_figure_that_failed_in_one_sweep_comes_from_the_next_and_steps_use_that_pairs_drift(
        tmp_path):
    """2.1.0's benchmark failed in the second sweep and ran in the third: the series takes
    it from the third, and a step next to it is read against the drift between the first
    and the third sweep (measured on their shared lines), not the second's."""
    first = trials(tmp_path / "first" / "trials.csv", {
        "torch-1.13.1-cu116": 100.0, "torch-2.0.1-cu117": 40.0, "torch-2.2.2-cu121": 40.0})
    second = trials(tmp_path / "second" / "trials.csv", {"torch-1.13.1-cu116": 150.0,
                                                         "torch-2.1.0-cu121": 1.0},
                    status="failed")
    # The second sweep's one ok line: 1.13.1, 1.5x slower than the first (its drift).
    with second.open("a", newline="") as handle:
        for repeat in range(3):
            csv.writer(handle).writerow([f"ok{repeat}", f"rnn_bench 1x320 cudnn @ "
                                         f"torch-1.13.1-cu116 #{repeat}", "rnn_bench",
                                         "torch-1.13.1-cu116", repeat, "ok", 150.0, "", "",
                                         "", ""])
    # The third: 2.1.0 at last, and 2.0.1 / 2.2.2 again on a machine 1.2x slower than the
    # first's; 2.1.0 is 2x its neighbours, well beyond that.
    third = trials(tmp_path / "third" / "trials.csv", {
        "torch-2.0.1-cu117": 48.0, "torch-2.1.0-cu121": 96.0, "torch-2.2.2-cu121": 48.0})
    done = run(str(first), str(second), str(third), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr

    lines = {row["image"]: row for row in csv.DictReader((tmp_path / "out" / "lines.csv").open())}
    assert lines["torch-2.1.0-cu121"]["sweep"] == "third"
    assert float(lines["torch-2.1.0-cu121"]["median"]) == pytest.approx(96.0)
    assert lines["torch-2.0.1-cu117"]["sweep"] == "first"  # an anchor keeps its first values

    drift = {(d["image"], d["first_sweep"], d["later_sweep"]): float(d["ratio_later_over_first"])
             for d in csv.DictReader((tmp_path / "out" / "drift.csv").open())}
    assert drift == pytest.approx({("torch-1.13.1-cu116", "first", "second"): 1.5,
                                   ("torch-2.0.1-cu117", "first", "third"): 1.2,
                                   ("torch-2.2.2-cu121", "first", "third"): 1.2})
    steps = {(s["before"], s["after"]): s
             for s in csv.DictReader((tmp_path / "out" / "steps.csv").open())}
    up = steps[("torch-2.0.1-cu117", "torch-2.1.0-cu121")]
    assert up["sweeps"] == "across (first -> third)"
    assert float(up["drift_low"]) == pytest.approx(1.2)  # not the second sweep's 1.5
    assert float(up["ratio"]) == pytest.approx(2.4, rel=0.02)
    assert up["reading"] == "beyond the drift"
    text = (tmp_path / "out" / "join.md").read_text()
    assert "| torch-2.1.0-cu121 | third | - |" in text
    assert "- first -> third: 2 anchor figures" in text


def test_a_timing_the_report_marked_busy_is_left_out_and_its_perplexity_kept(tmp_path):
    path = tmp_path / "s" / "trials.csv"
    path.parent.mkdir()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER + ["busy"])
        for image in ("torch-1.0.1-cu100", "torch-1.2.0-cu100", "torch-1.4.0-cu101"):
            for repeat in range(3):
                busy = image == "torch-1.2.0-cu100" and repeat == 0
                writer.writerow([f"{image}{repeat}", f"ptb_lm small @ {image} #{repeat}",
                                 "ptb_lm", image, repeat, "ok", "", 60 + repeat, "",
                                 10.0 if busy else 1000.0 + repeat, "", busy])
    done = run(str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    lines = [(r["image"], r["metric"], r["repeats"], float(r["low"]))
             for r in csv.DictReader((tmp_path / "out" / "lines.csv").open())
             if r["image"] == "torch-1.2.0-cu100"]
    assert sorted(lines) == [("torch-1.2.0-cu100", "test perplexity", "3", 60.0),
                             ("torch-1.2.0-cu100", "words per second", "2", 1001.0)]


def test_a_step_within_one_sweep_is_marked_within_and_left_out_trials_stay_out(tmp_path):
    first = trials(tmp_path / "a" / "trials.csv", {
        "torch-1.0.1-cu100": 100.0, "torch-1.2.0-cu100": 100.0, "torch-1.4.0-cu101": 50.0,
        "torch-1.6.0-cu101": 50.0})
    done = run(str(first), "--out", str(tmp_path / "out"),
               "--leave-out", "rnn_bench 1x320 cudnn @ torch-1.6.0-cu101 #0")
    assert done.returncode == 0, done.stderr
    steps = list(csv.DictReader((tmp_path / "out" / "steps.csv").open()))
    assert [(s["before"], s["after"], s["sweeps"], s["reading"]) for s in steps] == [
        ("torch-1.2.0-cu100", "torch-1.4.0-cu101", "within", "torch (one sweep)")]
    lines = {row["image"]: row for row in csv.DictReader((tmp_path / "out" / "lines.csv").open())}
    assert lines["torch-1.6.0-cu101"]["repeats"] == "2"
    assert "the drift is unknown" in (tmp_path / "out" / "join.md").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.csv", "no such file"),
    (lambda p: (p / "bad.csv", (p / "bad.csv").write_text("a,b\n1,2\n"))[0],
     "not a report's trials.csv (no column"),
    (lambda p: trials(p / "x" / "trials.csv", {"gpu-image": 1.0, "torch-1.0.1-cu100": 2.0,
                                               "torch-1.2.0-cu100": 2.0}),
     "names no torch version"),
    (lambda p: trials(p / "y" / "trials.csv", {"torch-1.0.1-cu100": 1.0}),
     "a series needs 3"),
    # A PNG (or any file not UTF-8) given by mistake: said, not a UnicodeDecodeError.
    (lambda p: (p / "plot.png", (p / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\xff"))[0],
     "plot.png: not a report's trials.csv (not UTF-8 text: byte 0x89 at offset 0)"),
    (lambda p: (p / "report", (p / "report").mkdir())[0],
     "report: a folder with no trials.csv in it"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, message):
    path = make(tmp_path)
    done = run(str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("ratio, later_after, expected", [
    (1.30, True, "drift"),  # first -> later sweep, 1.3x: the 1.2-1.4 drift itself
    (0.75, False, "drift"),  # later -> first: the inverse drift, 1/1.4 to 1/1.2
    (1.30, False, "beyond the drift"),  # the wrong way round for drift
    (0.40, True, "beyond the drift"),
])
def test_a_step_across_sweeps_is_read_as_drift_only_within_the_anchors_range(
        ratio, later_after, expected):
    assert join.reading(ratio, 0.02, True, 1.2, 1.4, later_after) == expected
    assert join.reading(ratio, 0.02, True, None, None, later_after) == join.UNKNOWN
    assert join.reading(ratio, 0.02, False, None, None, later_after) == join.WITHIN


def test_release_order_is_numeric_not_alphabetic():
    images = ["torch-1.10.0-cu113", "torch-1.2.0-cu100", "torch-2.0.1-cu117",
              "torch-1.13.1-cu116"]
    assert sorted(images, key=join.release_key) == [
        "torch-1.2.0-cu100", "torch-1.10.0-cu113", "torch-1.13.1-cu116", "torch-2.0.1-cu117"]


LINES = {"torch-1.0.1-cu100": 100.0, "torch-1.2.0-cu100": 100.0, "torch-1.4.0-cu101": 50.0}


def one_error_line(done: subprocess.CompletedProcess, says: str) -> None:
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith("python -m analysis.join: error: "), done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def test_a_report_folder_is_taken_for_its_trials_csv(tmp_path):
    trials(tmp_path / "part-1" / "trials.csv", LINES)
    done = run(str(tmp_path / "part-1"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "3 torch lines from 1 sweeps" in done.stdout
    assert [r["sweep"] for r in csv.DictReader((tmp_path / "out" / "lines.csv").open())] == [
        "part-1"] * 3


@pytest.mark.parametrize("second", ["same path", "folder of it", "a copy"])
def test_one_sweep_given_twice_is_refused(tmp_path, second):
    first = trials(tmp_path / "a" / "trials.csv", LINES)
    other = {"same path": first, "folder of it": first.parent,
             "a copy": tmp_path / "b" / "trials.csv"}[second]
    if second == "a copy":
        other.parent.mkdir()
        other.write_bytes(first.read_bytes())
    done = run(str(first), str(other), "--out", str(tmp_path / "out"))
    one_error_line(done, "give each sweep's trials.csv once")
    assert ("same content" in done.stderr) == (second == "a copy")
    assert not (tmp_path / "out").exists()


def test_a_leave_out_that_names_no_trial_is_refused_with_the_names_to_use(tmp_path):
    path = trials(tmp_path / "a" / "trials.csv", LINES)
    done = run(str(path), "--leave-out", "nosuch", "--out", str(tmp_path / "out"))
    one_error_line(done, "--leave-out 'nosuch' is no trial of these files; the trials' names "
                         "are the `name` column of trials.csv, e.g. 'rnn_bench 1x320 cudnn @ ")
    typo = run(str(path), "--leave-out", "rnn_bench 1x320 cudnn @ torch-1.2.0-cu100 #7",
               "--out", str(tmp_path / "out"))
    one_error_line(typo, "did you mean 'rnn_bench 1x320 cudnn @ torch-1.2.0-cu100 #")
    assert not (tmp_path / "out").exists()


def test_a_bad_out_is_refused_before_anything_is_read(tmp_path):
    path = trials(tmp_path / "a" / "trials.csv", LINES)
    before = sorted(p.name for p in tmp_path.iterdir())
    # Run from tmp_path: an empty --out must not mean "loose in the working directory".
    one_error_line(run(str(path), "--out", "", cwd=tmp_path), "--out '': is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "afile").write_text("mine\n")
    # The input is missing too: --out, checked first, is what the line is about.
    done = run("missing.csv", "--out", "afile", cwd=tmp_path)
    one_error_line(done, "--out 'afile': is an existing file; give a directory")
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("args, says", [
    ([], "the following arguments are required: trials, --out"),
    (["x.csv"], "the following arguments are required: --out"),
    (["x.csv", "--out", "o", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_are_one_line_with_where_to_find_help(tmp_path, args, says):
    done = run(*args, cwd=tmp_path)
    one_error_line(done, says)
    assert "(see python -m analysis.join --help)" in done.stderr
    assert list(tmp_path.iterdir()) == []


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too): a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("blocker", ["join.md", "plots"])
def test_a_join_that_cannot_be_written_whole_leaves_out_as_it_was(tmp_path, blocker):
    path = trials(tmp_path / "a" / "trials.csv", LINES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine\n")
    (out / "drift.csv").write_text("an earlier join's\n")
    if blocker == "plots":  # a file where the figures' folder goes
        (out / "plots").write_text("not a folder\n")
    else:  # a folder where join.md, the last file written, goes
        (out / blocker).mkdir()
    before = _tree(out)
    done = run(str(path), "--out", str(out))
    one_error_line(done, f"{blocker}: it is a f")
    assert "Traceback" not in done.stderr
    assert _tree(out) == before  # no CSV, no figure moved in, drift.csv not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]  # no staging left

    (out / blocker).unlink() if blocker == "plots" else (out / blocker).rmdir()
    done = run(str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    after = _tree(out)
    assert after["README.md"] == b"mine\n" and after["drift.csv"].startswith(b"metric,")
    assert {"join.md", "steps.csv", "lines.csv"} <= set(after)
    assert any(name.startswith("plots/") and name.endswith(".png") for name in after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]

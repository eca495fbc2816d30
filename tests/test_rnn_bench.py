"""rnn_bench as a user runs it: ``python -m workers rnn_bench --config '{...}'`` at toy sizes.

One child process per benchmark (the ``worker`` fixture), plus bad input, divergence and
the compiled cell, covers the process boundary. The full bench x impl x cell matrix (36
runs) goes through the worker's own CLI (``workers.cli.main``: parsing, events, exit code)
in this process, because a child process each costs a torch import, seconds apiece on a
busy 2-core machine. Checks that need the pieces themselves (the gate's failure path, the
CTC decision on an old torch, the parameter counts at full size) call the worker's
functions; no test asserts a timing.
"""
import io
import itertools
import json
import subprocess

import pytest
import torch

from tests.conftest import WorkerRun
from workers import cli, rnn_bench, rnn_models
from workers.protocol import BadConfig, Mismatch, Unsupported
from workers.rnn_bench_config import BENCHMARKS, ctc_lengths
from workers.workloads import resolve_workload_config

BENCHES = ("1x320-ce-short", "1x320-ce-long", "4x320-ce-long", "4x320-ctc-long")
LOOP_AND_LIBRARY = ("basic", "fused", "cudnn")  # "compiled" has its own (slow) test
CELLS = ("lstm", "gru", "rnn")

# Toy sizes: 6 batches, 2 of them warm-up, a metric every 2 timed batches. Layers and
# direction stay the benchmark's own (1 or 4 layers, bidirectional for 4x320).
TINY = {"device": "cpu", "num_threads": 1, "batch_size": 4, "seq_len": 6, "input_size": 5,
        "hidden_size": 8, "batches": 6, "warmup_batches": 2, "chunk_batches": 2}
# CTC lengths at seq_len 6 are 3, 4, 5, 6: two labels fit the shortest (2*2-1 = 3 steps).
TINY_CTC_LABELS = 2

RESULT_METRICS = {"ms_per_batch_mean", "ms_per_batch_median", "ms_per_batch_p10",
                  "ms_per_batch_p90", "ms_per_batch_std", "ms_per_batch_min",
                  "ms_per_batch_max", "sequences_per_second", "parameters", "loss_first",
                  "loss_last", "check_max_abs_diff"}


def tiny(bench, **overrides):
    config = dict(TINY, bench=bench)
    if BENCHMARKS[bench]["loss"] == "ctc":
        config["labels_per_sample"] = TINY_CTC_LABELS
    config.update(overrides)
    return config


def expected_parameters(cell, input_size, hidden_size, num_layers, directions, classes):
    """Counted by hand: per layer and direction, gates x H x (in + H) weights + 2 biases."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    total = 0
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size * directions
        total += directions * (gates * hidden_size * (layer_input + hidden_size)
                               + 2 * gates * hidden_size)
    return total + hidden_size * directions * classes  # fc, no bias


def run_in_process(config):
    """The worker's own CLI (argument parsing, events, exit code) in this process.

    A child process per run costs a torch import (seconds on a busy 2-core machine); the
    36-run matrix below uses this instead. The process boundary itself is covered by the
    child-process runs further down, one per benchmark.
    """
    argv = ["rnn_bench", "--config", json.dumps(config)]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=stdout, stderr=stderr)
    return WorkerRun(subprocess.CompletedProcess(argv, code, stdout.getvalue(),
                                                 stderr.getvalue()))


@pytest.fixture(scope="module")
def matrix_runs():
    """Every bench x impl x cell at toy size, run once for the tests that read them."""
    return {combination: run_in_process(tiny(combination[0], impl=combination[1],
                                             cell=combination[2]))
            for combination in itertools.product(BENCHES, LOOP_AND_LIBRARY, CELLS)}


def check_a_tiny_run(run, bench, impl, cell):
    """What a user reads from a toy run of ``tiny(bench, impl=impl, cell=cell)``."""
    where = f"{bench} {impl} {cell}: {run.stderr[-2000:]}"
    assert run.returncode == 0, where
    # env, then a metric per 2 timed batches (4 timed: 2 chunks), then the result.
    assert run.kinds == ["env", "metric", "metric", "result"], where
    env = run.events[0]
    # The resolved config shows the sizes that ran: given ones and the benchmark's own.
    assert env["config"]["input_size"] == 5 and env["config"]["impl"] == impl
    assert env["config"]["num_layers"] == BENCHMARKS[bench]["num_layers"]
    assert env["config"]["classes"] == BENCHMARKS[bench]["classes"]

    metric_events = run.of("metric")
    assert [e["step"] for e in metric_events] == [3, 5]  # batch indices
    for event in metric_events:
        assert event["metrics"]["chunk_ms_per_batch_median"] > 0
        assert event["metrics"]["loss"] > 0

    result = run.one("result")
    metrics = result["metrics"]
    assert RESULT_METRICS <= set(metrics), where
    assert (metrics["ms_per_batch_min"] <= metrics["ms_per_batch_p10"]
            <= metrics["ms_per_batch_median"] <= metrics["ms_per_batch_p90"]
            <= metrics["ms_per_batch_max"])
    assert metrics["sequences_per_second"] == pytest.approx(
        4 / (metrics["ms_per_batch_mean"] / 1000.0))
    assert metrics["check_max_abs_diff"] <= 1e-5
    assert metrics["batches_timed"] == 4 and len(result["samples"]) == 4
    directions = 2 if BENCHMARKS[bench]["bidirectional"] else 1
    assert metrics["parameters"] == expected_parameters(
        cell, 5, 8, BENCHMARKS[bench]["num_layers"], directions, BENCHMARKS[bench]["classes"])
    assert metrics["loss_last"] == metric_events[-1]["metrics"]["loss"]


@pytest.mark.parametrize("bench, impl, cell",
                         list(itertools.product(BENCHES, LOOP_AND_LIBRARY, CELLS)))
def test_every_bench_impl_and_cell_reports_what_a_user_reads(matrix_runs, bench, impl, cell):
    check_a_tiny_run(matrix_runs[(bench, impl, cell)], bench, impl, cell)


@pytest.mark.parametrize("bench, impl, cell", [
    ("1x320-ce-short", "basic", "gru"),
    ("1x320-ce-long", "fused", "rnn"),
    ("4x320-ce-long", "cudnn", "lstm"),
    ("4x320-ctc-long", "basic", "lstm"),
])
def test_the_worker_process_runs_each_benchmark(worker, bench, impl, cell):
    check_a_tiny_run(worker("rnn_bench", tiny(bench, impl=impl, cell=cell)), bench, impl, cell)


@pytest.mark.parametrize("bench, cell", list(itertools.product(BENCHES, CELLS)))
def test_implementations_train_the_same_network(matrix_runs, bench, cell):
    # Same weights, same batch: basic, fused and cudnn start from the same loss and,
    # after the same Adam steps, still agree (this is what the gate promises).
    results = [matrix_runs[(bench, impl, cell)].one("result")["metrics"]
               for impl in LOOP_AND_LIBRARY]
    for metrics in results[1:]:
        assert metrics["loss_first"] == pytest.approx(results[0]["loss_first"], rel=1e-5)
        assert metrics["loss_last"] == pytest.approx(results[0]["loss_last"], rel=1e-4)


def test_warmup_batches_are_dropped_and_chunks_follow_the_timed_batches():
    run = run_in_process(tiny("1x320-ce-short", batches=7, warmup_batches=3,
                              chunk_batches=3, check=False))
    assert run.returncode == 0, run.stderr
    result = run.one("result")
    # Batches 3..6 are timed: a full chunk ends at batch 5, the last one (1 batch) at 6.
    assert len(result["samples"]) == 7 - 3
    assert result["metrics"]["batches_timed"] == 4
    assert all(seconds > 0 for seconds in result["samples"])
    assert [e["step"] for e in run.of("metric")] == [5, 6]
    assert result["metrics"]["ms_per_batch_max"] == pytest.approx(
        max(result["samples"]) * 1000.0)
    assert "check_max_abs_diff" not in result["metrics"]  # check: false skips the gate


@pytest.mark.parametrize("bench, expected", [
    ("1x320-ce-short", 572800),
    ("1x320-ce-long", 572800),
    ("4x320-ce-long", 8533760),
    ("4x320-ctc-long", 8565120),
])
def test_parameter_counts_at_full_size_match_the_seed(bench, expected):
    # The seed's CSV (seed-facts.md §3.2); the LSTM models are built, not run.
    config = resolve_workload_config("rnn_bench", {"bench": bench})
    shape = rnn_bench.benchmark_shape(config)
    shape["cell"] = "lstm"
    for impl in LOOP_AND_LIBRARY:
        assert rnn_models.count_parameters(rnn_bench.build_for(impl, shape)) == expected, impl
    assert expected == expected_parameters("lstm", 123, 320, shape["num_layers"],
                                           2 if shape["bidirectional"] else 1, shape["classes"])


def test_toy_batch_follows_the_seeds_label_rules_at_full_size():
    torch.manual_seed(0)
    ce = rnn_bench.make_toy_batch(rnn_bench.benchmark_shape(
        resolve_workload_config("rnn_bench", {"bench": "1x320-ce-short"})))
    assert tuple(ce["inputs"].shape) == (100, 64, 123)  # time-major (T, N, C)
    assert -1 <= float(ce["inputs"].min()) and float(ce["inputs"].max()) <= 1
    assert ce["targets"].shape == (64,)
    assert 0 <= int(ce["targets"].min()) and int(ce["targets"].max()) <= 8  # never class 9

    ctc = rnn_bench.make_toy_batch(rnn_bench.benchmark_shape(
        resolve_workload_config("rnn_bench", {"bench": "4x320-ctc-long"})))
    assert tuple(ctc["inputs"].shape) == (1000, 32, 123)
    assert ctc["targets"].shape == (3200,)  # 100 labels per sample, flat
    assert 1 <= int(ctc["targets"].min()) and int(ctc["targets"].max()) <= 57  # blank is 0
    assert ctc["target_lengths"] == [100] * 32
    assert ctc["lengths"] == ctc_lengths(1000, 32)


def test_ctc_lengths_are_the_seeds():
    lengths = ctc_lengths(1000, 32)
    assert lengths[:3] == [500, 516, 532] and lengths[-2:] == [983, 1000]
    assert len(lengths) == 32 and lengths == sorted(lengths)


BAD_INPUT = [
    ({"bench": "1x320-ce-shrt"}, "did you mean '1x320-ce-short'"),
    ({"bench": "1x320-ce-short", "batches": 5, "warmup_batches": 5},
     "warmup_batches must be less than batches"),
    ({"bench": "1x320-ce-short", "hidden_size": 0}, "'hidden_size' is 0; it must be greater"),
    ({"bench": "1x320-ce-short", "seq_len": -3}, "'seq_len' is -3; it must be greater"),
    ({"bench": "1x320-ce-short", "batch_size": "8"}, "'batch_size' is a string"),
    ({"bench": "1x320-ce-short", "check": "yes"}, "'check' is a string; it must be true"),
]


def check_one_line_exit_2(run, needle):
    assert run.returncode == 2
    assert run.kinds == ["env", "error"]
    assert run.events[-1]["kind"] == "bad_config"
    assert needle in run.events[-1]["message"]
    assert "\n" not in run.events[-1]["message"]
    assert needle in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("raw, needle", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(raw, needle):
    check_one_line_exit_2(run_in_process(raw), needle)


@pytest.mark.parametrize("raw, needle", BAD_INPUT[:2])
def test_bad_input_from_the_worker_process(worker, raw, needle):
    check_one_line_exit_2(worker("rnn_bench", raw), needle)


@pytest.mark.parametrize("raw, needle", [
    # Every CTC label draw must be alignable: 2*labels-1 steps in the shortest sequence.
    ({"bench": "4x320-ctc-long", "seq_len": 6, "labels_per_sample": 3},
     "the shortest sequence has 3 steps"),
    ({"bench": "4x320-ctc-long", "seq_len": 16}, "'labels_per_sample' is 100"),
    ({"bench": "1x320-ce-long", "labels_per_sample": 4}, "applies only to the CTC benchmark"),
    ({"bench": "1x320-ce-long", "classes": 1}, "need at least 2"),
    ({"bench": "4x320-ctc-long", "classes": 2}, "needs at least 3"),
    ({"bench": "1x320-ce-long", "learning_rate": 1e38}, "at most 3e+37"),
    ({"bench": "1x320-ce-long", "impl": "cudn"}, "did you mean 'cudnn'"),
    ({"bench": "1x320-ce-long", "cell": "LSTM"}, "choose one of: lstm, gru, rnn"),
])
def test_the_host_rejects_impossible_configs_with_the_workers_rules(raw, needle):
    # sweeps/ validates grid trials with this same function before any trial starts.
    with pytest.raises(BadConfig) as caught:
        resolve_workload_config("rnn_bench", raw)
    assert needle in caught.value.message


def test_a_huge_learning_rate_diverges_with_exit_4(worker):
    # Adam moves every weight by about the learning rate per step; at 1e36 the fc
    # weights and the gates' sums overflow float32 and the loss becomes inf.
    config = tiny("1x320-ce-short", hidden_size=256, learning_rate=1e36)
    run = worker("rnn_bench", config)
    assert run.returncode == 4, run.stderr
    assert run.kinds == ["env", "error"]  # it stops in the warm-up: no timing, no result
    error = run.events[-1]
    assert error["kind"] == "diverged"
    assert "the loss is inf" in error["message"] or "the loss is nan" in error["message"]
    assert "Traceback" not in run.stderr

    # The same run at the seed's learning rate finishes: the rate alone made it diverge.
    calm = run_in_process(dict(config, learning_rate=1e-3))
    assert calm.returncode == 0, calm.stderr


def test_implementations_that_disagree_report_an_error_not_a_time(worker):
    # The gate compares basic, fused and cudnn on shared weights. Their float32 sums
    # differ by ~1e-7 in a different order of operations, so a 1e-12 tolerance makes
    # them disagree for real: the benchmark must then time nothing.
    run = worker("rnn_bench", tiny("1x320-ce-short", impl="basic", check_tolerance=1e-12))
    assert run.returncode == 5, run.stderr
    assert run.kinds == ["env", "error"]
    assert run.events[-1]["kind"] == "mismatch"
    assert "implementations disagree" in run.events[-1]["message"]
    assert "Traceback" not in run.stderr


def _tiny_models(bench, cell, impls):
    config = resolve_workload_config("rnn_bench", tiny(bench, cell=cell))
    shape = rnn_bench.benchmark_shape(config)
    shape["cell"] = cell
    torch.manual_seed(0)
    batch = rnn_bench.make_toy_batch(shape)
    reference = rnn_bench.build_for("cudnn", shape)
    models = [(impl, rnn_bench.loaded_copy(impl, shape, reference, torch.device("cpu")))
              for impl in impls]
    return models, batch, shape


@pytest.mark.parametrize("cell", CELLS)
def test_the_gate_passes_shared_weights_and_catches_a_small_difference(cell):
    # Bidirectional, two layers' worth of variable-length CTC frames: the hardest case.
    models, batch, _ = _tiny_models("4x320-ctc-long", cell, ["cudnn", "fused", "basic"])
    inputs, lengths = rnn_bench.gate_slice(batch, 64, 4)
    absolute, scaled = rnn_bench.check_agreement(models, inputs, lengths, 1e-5)
    assert absolute <= 1e-5 and scaled <= 1e-5

    # One recurrent weight of the reverse direction of the top layer off by 0.01
    # (the weights are U(-0.35, 0.35) at hidden size 8).
    basic = models[2][1]
    with torch.no_grad():
        dict(basic.named_shared_parameters())["weight_hh_l3_reverse"][0, 0] += 0.01
    with pytest.raises(Mismatch) as caught:
        rnn_bench.check_agreement(models, inputs, lengths, 1e-5)
    assert "basic and cudnn differ" in caught.value.message


def test_the_gate_rejects_implementations_with_their_own_weights():
    models, batch, shape = _tiny_models("1x320-ce-short", "lstm", ["cudnn"])
    fused_with_its_own_weights = rnn_bench.build_for("fused", shape)  # cudnn's not loaded
    inputs, lengths = rnn_bench.gate_slice(batch, 64, 4)
    with pytest.raises(Mismatch) as caught:
        rnn_bench.check_agreement(models + [("fused", fused_with_its_own_weights)], inputs,
                                  lengths, 1e-5)
    assert "fused and cudnn differ" in caught.value.message


def test_the_gate_compares_only_frames_inside_each_sequence():
    models, batch, _ = _tiny_models("4x320-ctc-long", "lstm", ["cudnn", "basic"])
    inputs, lengths = rnn_bench.gate_slice(batch, 64, 4)
    assert lengths == [3, 4, 5, 6]
    # Garbage in the padding must not change anything: the loops reverse within length.
    padded = inputs.clone()
    for sequence, length in enumerate(lengths):
        padded[length:, sequence] = 1e6
    rnn_bench.check_agreement(models, padded, lengths, 1e-5)


def test_packing_by_hand_as_old_torch_needs_gives_the_same_output():
    # torch < 1.1 has no enforce_sorted: run_packed then sorts and unsorts itself.
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True)
    inputs = torch.rand(6, 4, 5)
    lengths = [3, 6, 4, 5]
    by_torch = rnn_models.run_packed(rnn, inputs, lengths, sort_yourself=False)
    by_hand = rnn_models.run_packed(rnn, inputs, lengths, sort_yourself=True)
    assert tuple(by_hand.shape) == (6, 4, 16)
    assert torch.equal(by_torch, by_hand)


@pytest.mark.parametrize("native, warpctc, chosen", [
    (True, True, "nn.CTCLoss"),
    (True, False, "nn.CTCLoss"),
    (False, True, "warpctc_pytorch"),
])
def test_ctc_loss_choice(native, warpctc, chosen):
    assert rnn_bench.choose_ctc_loss(native, warpctc) == chosen


def test_no_ctc_loss_is_unsupported_with_the_reason():
    # torch 0.4 without warp-ctc: the decision, given what that torch offers.
    with pytest.raises(Unsupported) as caught:
        rnn_bench.choose_ctc_loss(has_native_ctc=False, has_warpctc=False)
    assert caught.value.reason == ("nn.CTCLoss needs torch>=1.0 and warpctc_pytorch is "
                                   "not installed")
    assert rnn_bench.ctc_loss_here() == "nn.CTCLoss"  # this torch has it


def test_compiled_is_unsupported_without_torch_compile(monkeypatch):
    # torch < 2.0 has no torch.compile; take it away from this torch to ask the question.
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(Unsupported) as caught:
        rnn_models.compiled_step("lstm")
    assert caught.value.reason == "torch.compile needs torch>=2.0"


def test_compiled_cell_runs_and_passes_the_gate(worker):
    # Inductor compiles the step on the CPU: tens of seconds, so one tiny run only.
    run = worker("rnn_bench", tiny("1x320-ce-short", impl="compiled", samples=False))
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.one("result")
    assert "samples" not in result  # samples: false
    assert result["metrics"]["check_max_abs_diff"] <= 1e-5
    assert result["metrics"]["batches_timed"] == 4

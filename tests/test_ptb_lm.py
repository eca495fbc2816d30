"""The `ptb_lm` workload as a user runs it: `python -m workers ptb_lm --config ...`.

Runs use the synthetic corpus or a tiny data directory made here, tiny models
(hidden 16, 5 steps, batch 4) and one CPU thread, so each takes a second or two.
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import torch
from compare import assert_same

from tests.conftest import run_worker
from workers import ptb_data, ptb_lm
from workers.protocol import BadConfig
from workers.ptb_lm_config import learning_rate
from workers.workloads import resolve_workload_config

# A run small enough for seconds on a shared 2-core machine.
TINY = {
    "hidden_size": 16, "num_steps": 5, "batch_size": 4, "max_epochs": 2,
    "max_steps_per_epoch": 20, "synthetic_words": 3000, "synthetic_vocab": 100,
    "num_threads": 1, "seed": 1234,
}
TINY_SEED = TINY["seed"]

EPOCH_METRICS = {"train_perplexity", "valid_perplexity", "words_per_second", "learning_rate",
                 "epoch_seconds", "perplexity_bound"}


@pytest.fixture(scope="module")
def tiny_run():
    """One tiny synthetic run, shared by the tests that only read it."""
    return run_worker("ptb_lm", tiny())


def tiny(**overrides):
    config = dict(TINY)
    config.update(overrides)
    return config


def assert_one_line_error(run, kind, exit_code, *fragments):
    assert run.returncode == exit_code, run.stderr
    assert run.kinds == ["env", "error"], run.stdout
    error = run.one("error")
    assert error["kind"] == kind
    stderr_lines = run.stderr.strip().splitlines()
    assert len(stderr_lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error["message"]


# --- presets: every number of seed-facts.md -----------------------------------------------

# seed-facts section 2 (TF ptb_word_lm.py configs; test layout from the eval_config) and
# section 1.3 (Kuchaiev's ptb-lm.py flags and hard-coded constants).
PRESET_TABLE = {
    #  key               small    medium   large     kuchaiev2017
    "init_scale":      (0.1,    0.05,    0.04,     0.1),
    "learning_rate":   (1.0,    1.0,     1.0,      20.0),
    "clip_norm":       (5.0,    5.0,     10.0,     0.25),
    "num_layers":      (2,      2,       2,        2),
    "num_steps":       (20,     35,      35,       35),
    "hidden_size":     (200,    650,     1500,     1500),
    "lr_flat_epochs":  (4,      6,       14,       14),
    "epochs":          (13,     39,      55,       40),
    "keep_prob":       (1.0,    0.5,     0.35,     0.35),
    "lr_decay":        (0.5,    0.8,     1 / 1.15, 1 / 1.15),
    "batch_size":      (20,     20,      20,       20),
    "lr_schedule":     ("tf",   "tf",    "tf",     "compound"),
    "init":            ("tf",   "tf",    "tf",     "kuchaiev2017"),
    "loss":            ("sum_steps", "sum_steps", "sum_steps", "mean"),
    "test_batch_size": (1,      1,       1,        1),
    "test_num_steps":  (1,      1,       1,        35),
}
PRESET_NAMES = ("small", "medium", "large", "kuchaiev2017")


@pytest.mark.parametrize("column, preset", enumerate(PRESET_NAMES))
def test_every_preset_number_is_the_seeds(column, preset):
    config = resolve_workload_config("ptb_lm", {"preset": preset})
    for key, values in PRESET_TABLE.items():
        assert_same(config[key], values[column], rel=1e-12, what=f"{preset} {key}")
        assert type(config[key]) is type(values[column]), (preset, key)
    # without limits a preset is the full published run on the synthetic corpus
    assert config["max_epochs"] is None and config["max_steps_per_epoch"] is None
    assert config["data_dir"] is None


def test_the_default_preset_is_small_and_user_keys_override_the_preset():
    assert resolve_workload_config("ptb_lm", {})["hidden_size"] == 200
    config = resolve_workload_config("ptb_lm", {"preset": "large", "learning_rate": 0.5,
                                                "epochs": 3})
    assert (config["learning_rate"], config["epochs"]) == (0.5, 3)
    assert config["hidden_size"] == 1500 and config["clip_norm"] == 10.0


def test_an_unknown_preset_names_the_nearest_one():
    with pytest.raises(BadConfig, match="'larg'.*did you mean 'large'"):
        resolve_workload_config("ptb_lm", {"preset": "larg"})


# --- learning-rate schedules ----------------------------------------------------------------


def test_compounding_schedule_of_the_port_matches_the_seed_values():
    config = resolve_workload_config("ptb_lm", {"preset": "kuchaiev2017"})
    rates = [learning_rate(config, epoch) for epoch in range(40)]
    # seed-facts 1.3: "epochs 0-14 = 20, 15 = 17.39, 16 = 13.15, ... 39 = 3.8e-19"
    assert rates[:15] == [20.0] * 15
    listed = [  # (epoch, value as printed, significant digits printed)
        (15, 17.39, 4), (16, 13.15, 4), (17, 8.65, 3), (18, 4.94, 3), (19, 2.46, 3),
        (20, 1.06, 3), (21, 0.40, 2), (22, 0.13, 2), (23, 0.037, 2), (24, 0.0092, 2),
        (25, 0.0020, 2), (39, 3.8e-19, 2),
    ]
    for epoch, value, digits in listed:
        assert float(f"{rates[epoch]:.{digits}g}") == value, (epoch, rates[epoch])


def test_tf_schedule_matches_the_large_models_log():
    config = resolve_workload_config("ptb_lm", {"preset": "large"})
    rates = [learning_rate(config, epoch) for epoch in range(55)]
    # seed-facts 1.7: "lr 1.000 for epochs 1-14, then 0.870 (ep15), 0.756, 0.658 ... 0.003 (ep55)"
    assert rates[:14] == [1.0] * 14
    assert [round(r, 3) for r in rates[14:17]] == [0.870, 0.756, 0.658]
    assert round(rates[54], 3) == 0.003


def test_tf_schedule_of_the_small_model_halves_after_four_epochs():
    config = resolve_workload_config("ptb_lm", {"preset": "small"})
    rates = [learning_rate(config, epoch) for epoch in range(13)]
    assert rates == [1.0] * 4 + [0.5 ** k for k in range(1, 10)]


def test_the_worker_reports_the_compounding_rate_per_epoch(worker):
    run = worker("ptb_lm", tiny(preset="kuchaiev2017", max_epochs=18, max_steps_per_epoch=1,
                                max_eval_steps=1, test_num_steps=5))
    assert run.returncode == 0, run.stderr
    rates = [m["metrics"]["learning_rate"] for m in run.of("metric")]
    assert [m["step"] for m in run.of("metric")] == list(range(1, 19))
    assert rates[:15] == [20.0] * 15
    assert [round(r, 2) for r in rates[15:]] == [17.39, 13.15, 8.65]


# --- runs on the synthetic corpus -----------------------------------------------------------


def test_a_tiny_synthetic_run_reports_env_two_epochs_and_a_result(tiny_run):
    run = tiny_run

    assert run.returncode == 0, run.stderr
    assert run.kinds == ["env", "metric", "metric", "result"]
    env = run.one("env")
    assert env["workload"] == "ptb_lm"
    assert env["data"]["synthetic"] is True
    assert env["data"]["source"].startswith("synthetic(words=3000, vocab=100")
    assert env["config"]["preset"] == "small" and env["config"]["hidden_size"] == 16
    assert env["reference_perplexity"]["test"] == 115.91

    metrics = run.of("metric")
    assert [m["step"] for m in metrics] == [1, 2]
    for event in metrics:
        assert set(event["metrics"]) == EPOCH_METRICS
        assert all(math.isfinite(v) and v > 0 for v in event["metrics"].values())
        # a perplexity lies between 1 (certain) and the vocabulary size (uniform) or so
        assert 1 < event["metrics"]["valid_perplexity"] < 100

    result = run.one("result")["metrics"]
    assert {"test_perplexity", "best_valid_perplexity", "train_perplexity",
            "valid_perplexity", "words_per_second", "epochs_run"} <= set(result)
    # The divergence bound is in the record: ten times the vocabulary, every epoch and at
    # the end.
    bound = 10 * result["vocab_size"]
    assert result["perplexity_bound"] == bound and 100 < bound <= 1000
    assert [m["metrics"]["perplexity_bound"] for m in metrics] == [bound, bound]
    assert all(math.isfinite(v) for v in result.values())
    assert result["epochs_run"] == 2
    assert result["best_valid_perplexity"] == min(m["metrics"]["valid_perplexity"]
                                                  for m in metrics)
    assert result["valid_perplexity"] == metrics[-1]["metrics"]["valid_perplexity"]
    speeds = [m["metrics"]["words_per_second"] for m in metrics]
    assert result["words_per_second"] == pytest.approx(sum(speeds) / 2)


def test_same_seed_on_cpu_gives_the_same_perplexity_and_another_seed_does_not(worker,
                                                                              tiny_run):
    first = tiny_run
    again = worker("ptb_lm", tiny(seed=TINY_SEED))
    other = worker("ptb_lm", tiny(seed=TINY_SEED + 1))
    assert first.returncode == again.returncode == other.returncode == 0

    def perplexities(run):
        values = [run.one("result")["metrics"]["test_perplexity"]]
        for event in run.of("metric"):
            values += [event["metrics"]["train_perplexity"],
                       event["metrics"]["valid_perplexity"]]
        return values

    assert perplexities(first) == perplexities(again)
    assert perplexities(first)[0] != perplexities(other)[0]


def test_a_small_model_learns_the_synthetic_corpus(worker):
    run = worker("ptb_lm", tiny(hidden_size=32, max_epochs=3, max_steps_per_epoch=None,
                                synthetic_words=5000, synthetic_vocab=200))
    assert run.returncode == 0, run.stderr
    valid = [m["metrics"]["valid_perplexity"] for m in run.of("metric")]
    train = [m["metrics"]["train_perplexity"] for m in run.of("metric")]
    vocab_size = run.one("result")["metrics"]["vocab_size"]
    assert valid[-1] < valid[0] and train[-1] < train[0]
    # far better than guessing uniformly over the vocabulary
    assert valid[-1] < vocab_size / 3


def test_a_regularised_preset_runs_when_shrunk(worker):
    # medium: dropout (keep 0.5) on the embedding, between the LSTM layers and on the
    # output. (kuchaiev2017's own settings run in the compounding-rate test above.)
    run = worker("ptb_lm", tiny(preset="medium", max_epochs=1))
    assert run.returncode == 0, run.stderr
    config = run.one("env")["config"]
    assert (config["keep_prob"], config["init_scale"], config["lr_flat_epochs"]) == \
        (0.5, 0.05, 6)
    assert math.isfinite(run.one("result")["metrics"]["test_perplexity"])


# --- a data directory -----------------------------------------------------------------------


def make_data_dir(path, valid=None):
    ptb_data.write_synthetic(str(path), 3000, 100)
    if valid is not None:
        (path / "ptb.valid.txt").write_text(valid)
    return path


def test_a_data_directory_is_read_and_identified_by_its_checksums(worker, tmp_path):
    data_dir = make_data_dir(tmp_path / "ptb")
    run = worker("ptb_lm", tiny(data_dir=str(data_dir)))

    assert run.returncode == 0, run.stderr
    assert run.kinds == ["env", "metric", "metric", "result"]
    data = run.one("env")["data"]
    assert data["synthetic"] is False and data["source"] == str(data_dir)
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        git_id = subprocess.run(["git", "hash-object", str(data_dir / name)],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert data["git_blob_sha1"][name] == git_id
    assert data["canonical_ptb"] is False  # these are not Mikolov's files


def test_a_valid_word_outside_the_vocabulary_is_a_data_error(worker, tmp_path):
    data_dir = make_data_dir(tmp_path / "ptb", valid=" w0 w1 \n w0 aardvark w1 \n")
    run = worker("ptb_lm", tiny(data_dir=str(data_dir)))
    assert_one_line_error(run, "data", 2, str(data_dir / "ptb.valid.txt"), "line 2",
                          "'aardvark'")


def test_a_missing_data_directory_is_a_data_error(worker, tmp_path):
    run = worker("ptb_lm", tiny(data_dir=str(tmp_path / "no-such-dir")))
    message = assert_one_line_error(run, "data", 2, str(tmp_path / "no-such-dir"))
    assert "does not exist" in message


def test_a_directory_without_the_ptb_files_is_a_data_error(worker, tmp_path):
    run = worker("ptb_lm", tiny(data_dir=str(tmp_path)))
    assert_one_line_error(run, "data", 2, str(tmp_path / "ptb.train.txt"), "missing")


def test_a_corpus_too_small_for_the_batch_layout_is_a_data_error(worker):
    run = worker("ptb_lm", tiny(batch_size=400))
    assert_one_line_error(run, "data", 2, "synthetic valid split", "batch size 400")


# --- divergence -----------------------------------------------------------------------------


def test_a_nan_loss_ends_the_run_as_diverged(worker):
    # lr 1e40 makes the float32 update overflow to inf, and the next loss is NaN.
    run = worker("ptb_lm", tiny(learning_rate=1e40, clip_norm=1e30))
    assert_one_line_error(run, "diverged", 4, "training loss became nan")


def test_an_exploding_but_finite_loss_stops_the_run_early_as_diverged(worker):
    # lr 1e6 blows the softmax layer up while the LSTM saturates: the losses stay
    # finite in float32 (about 1e7 nats, a perplexity exp() cannot even represent), far
    # beyond 10 x the vocabulary; five such steps in a row stop the run in its first epoch.
    run = worker("ptb_lm", tiny(learning_rate=1e6, clip_norm=1e9))
    message = assert_one_line_error(run, "diverged", 4, "training perplexity beyond the bound ",
                                    " (10 x the vocabulary) for 5 steps in a row")
    found = re.match(r"epoch 1 step (\d+): ", message)
    assert found and 5 <= int(found.group(1)) < TINY["max_steps_per_epoch"], message
    assert run.of("metric") == []


def test_a_finite_perplexity_beyond_the_bound_is_diverged_not_a_result(worker):
    # The review's case: a trial whose perplexity reached 1.47e18 was recorded as ok. A
    # learning rate of 30 without clipping sends the tiny model far past 10 x its
    # vocabulary (a perplexity no model reaches) without any non-finite loss.
    run = worker("ptb_lm", tiny(learning_rate=30.0, clip_norm=1e9, max_epochs=1))
    message = assert_one_line_error(run, "diverged", 4, "beyond the bound ",
                                    "10 x the vocabulary")
    assert "nan" not in message and "inf" not in message


@pytest.mark.parametrize("mean_loss, diverged", [(4.0, False), (math.log(859), False),
                                                 (math.log(861), True), (41.8, True),
                                                 (1e7, True)])
def test_an_epoch_perplexity_beyond_the_bound_is_diverged(mean_loss, diverged):
    # The epoch's and the evaluations' perplexity, against 10 x the vocabulary (86 words):
    # 1.47e18 (a mean loss of 41.8 nats) and one exp() cannot represent are both diverged.
    from workers import ptb_lm
    from workers.protocol import Diverged

    bound = ptb_lm.perplexity_bound(86)
    config = {"learning_rate": 1.0, "clip_norm": 5.0}
    if not diverged:
        assert ptb_lm._perplexity(mean_loss * 3, 3, "test", config, bound) <= bound
        return
    with pytest.raises(Diverged, match=r"^test perplexity \S+ is beyond the bound 860 \(10 x "
                                       r"the vocabulary: worse than guessing\); lower "):
        ptb_lm._perplexity(mean_loss * 3, 3, "test", config, bound)


# --- bad input ------------------------------------------------------------------------------


# The worker's own command line, for a wrong type, a non-positive size, an impossible
# value and a misspelt preset; the full rule table below checks the same resolver
# in-process (the worker calls exactly resolve_workload_config), which is much faster
# than starting torch once per case.
@pytest.mark.parametrize("override, fragment", [
    ({"hidden_size": "big"}, "'hidden_size' is a string"),
    ({"batch_size": 0}, "'batch_size' is 0; it must be greater than 0"),
    ({"keep_prob": 1.5}, "'keep_prob' is 1.5; it must be at most 1.0"),
    ({"preset": "smal"}, "did you mean 'small'"),
])
def test_bad_config_is_one_line_and_exit_2(worker, override, fragment):
    run = worker("ptb_lm", tiny(**override))
    assert_one_line_error(run, "bad_config", 2, fragment)


@pytest.mark.parametrize("override, fragment", [
    ({"hidden_size": "big"}, "'hidden_size' is a string"),
    ({"hidden_size": 0}, "'hidden_size' is 0; it must be greater than 0"),
    ({"num_layers": 1.5}, "'num_layers' is a number"),
    ({"num_layers": 0}, "'num_layers' is 0"),
    ({"num_steps": -3}, "'num_steps' is -3"),
    ({"batch_size": True}, "'batch_size' is a boolean"),
    ({"epochs": 0}, "'epochs' is 0"),
    ({"test_batch_size": 0}, "'test_batch_size' is 0"),
    ({"test_num_steps": 0}, "'test_num_steps' is 0"),
    ({"keep_prob": 0}, "'keep_prob' is 0.0"),
    ({"learning_rate": "fast"}, "'learning_rate' is a string"),
    ({"learning_rate": -1}, "'learning_rate' is -1.0"),
    ({"lr_decay": 1.2}, "'lr_decay' is 1.2; it must be at most 1.0"),
    ({"lr_flat_epochs": -1}, "'lr_flat_epochs' is -1; it must be at least 0"),
    ({"clip_norm": 0}, "'clip_norm' is 0.0"),
    ({"init_scale": None}, "'init_scale' must not be null"),
    ({"max_epochs": 0}, "'max_epochs' is 0"),
    ({"max_steps_per_epoch": -1}, "'max_steps_per_epoch' is -1"),
    ({"max_eval_steps": 0}, "'max_eval_steps' is 0"),
    ({"synthetic_words": 0}, "'synthetic_words' is 0"),
    ({"synthetic_vocab": 2}, "'synthetic_vocab' is 2; it must be at least 3"),
    ({"data_dir": 5}, "'data_dir' is an integer"),
    ({"data_dir": " "}, "'data_dir' is an empty string"),
    ({"preset": 3}, "'preset' is an integer"),
    ({"lr_schedule": "cosine"}, "choose one of: tf, compound"),
    ({"init": "xavier"}, "choose one of: tf, kuchaiev2017"),
    ({"loss": "sum_step"}, "did you mean 'sum_steps'"),
    ({"hiden_size": 16}, "did you mean 'hidden_size'"),
])
def test_every_bad_value_is_refused_with_one_line(override, fragment):
    with pytest.raises(BadConfig) as caught:
        resolve_workload_config("ptb_lm", tiny(**override))
    assert fragment in caught.value.message
    assert "\n" not in caught.value.message


# --- the pieces, in-process -----------------------------------------------------------------


def test_batches_are_contiguous_rows_like_the_tf_reader():
    ids = list(range(26))  # 26 // 4 = 6 tokens per row; the 2 tail tokens are dropped
    data = ptb_lm.batchify(ids, 4, torch.device("cpu"))
    assert data.t().tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11],
                                 [12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23]]
    windows = list(ptb_lm.windows(data, 2, None))
    assert len(windows) == ptb_data.epoch_size(len(ids), 4, 2) == 2
    inputs, targets = windows[1]
    # TF's ptb_iterator: x = data[:, 2:4], y = data[:, 3:5], here time-major (T, B)
    assert inputs.t().tolist() == [[2, 3], [8, 9], [14, 15], [20, 21]]
    assert targets.t().tolist() == [[3, 4], [9, 10], [15, 16], [21, 22]]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    config = resolve_workload_config("ptb_lm", tiny())
    torch.manual_seed(0)
    model = ptb_lm.build_model(config, 37)
    # zero softmax layer: every word gets probability 1/37, cross-entropy log(37)
    model.decoder.weight.data.zero_()
    model.decoder.bias.data.zero_()
    data = ptb_lm.batchify([i % 37 for i in range(500)], 4, torch.device("cpu"))
    perplexity = ptb_lm.evaluate(model, data, 5, config, torch.device("cpu"), "test")
    assert perplexity == pytest.approx(37.0, rel=1e-5)

"""A sweep's records read back for a report, from a real store filled as a sweep fills it.

The store (tests/analysis_store.py) is written through sweeps.records.store.SweepRecords:
a "versions" sweep over four images with ok, unsupported (by the worker and by
backend.check), failed, diverged, interrupted and superseded trials; an older
sweep of the same experiment; an Optuna search with its study; a sweep with
nothing decided yet; and an experiment versweep did not write. The tests load
them as the report does and check what a person reading the report would check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from analysis_store import (
    BASE,
    DIVERGED_MESSAGE,
    FAILED_MESSAGE,
    FUSED_REASON,
    HPARAMS,
    IMAGES,
    MID,
    NEW,
    NOT_A_SWEEP,
    OLD,
    OLD_REASON,
    PTB_EPOCHS,
    PTB_TEST_PERPLEXITY,
    SEARCH_OUTCOMES,
    UNFINISHED,
    VERSIONS,
    FilledStore,
    shared_store,
    write_older_versions_sweep,
    write_search_sweep,
)
from compare import assert_same
from sweeping import running_mlflow_server

from analysis.load import (
    load_samples,
    load_sweep_data,
    metric_histories,
    metric_history,
    order_images,
    study_name,
)
from analysis.stats import DIFFERS, FASTER, NOT_AVAILABLE, SAME, SLOWER, compare, median_ci, parity
from sweeps.errors import UserError
from sweeps.records.store import SweepRecords

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FilledStore:
    return shared_store(lambda: tmp_path_factory.mktemp("analysis-store"))


@pytest.fixture(scope="module")
def versions(store):
    return load_sweep_data(store.tracking_uri, VERSIONS)


def ms_repeats(data, samples, bench, impl, image):
    """Per-batch ms of each ok repeat of one bench/impl/image, as a report groups them."""
    return [[s * 1000.0 for s in samples[t.run_id]]
            for t in sorted(data.trials, key=lambda t: t.repeat)
            if t.workload == "rnn_bench" and t.params.get("bench") == bench
            and t.params.get("impl") == impl and t.image == image and t.status == "ok"]


# --------------------------------------------------------------------------- the sweep


def test_the_newest_sweep_with_every_decided_trial_and_nothing_else(store, versions):
    assert versions.parent_run_id == store.versions.parent_run_id
    assert versions.experiment_name == VERSIONS and versions.sweep_name == VERSIONS
    assert not versions.search and versions.study() is None
    decided = {t.run_id for t in store.versions.decided}
    assert {t.run_id for t in versions.trials} == decided
    assert len(versions.trials) == 60  # 4 benches x 4 images x 3 + ptb_lm 4 images x 3
    # The interrupted and the superseded runs ended KILLED: not decisions, not shown.
    killed = {t.run_id for t in store.versions.trials if not t.decided}
    assert len(killed) == 2 and not killed & {t.run_id for t in versions.trials}
    assert versions.parent_tags["versweep.summary.ok"] == "38"
    assert versions.parent_status == "FINISHED"
    assert "[sweep]" in versions.grid_text and 'name = "versions"' in versions.grid_text


def test_each_trial_says_how_it_ended_and_why(store, versions):
    written = {t.run_id: t for t in store.versions.decided}
    for trial in versions.trials:
        expected = written[trial.run_id]
        assert (trial.status, trial.workload, trial.image, trial.repeat) == (
            expected.status, expected.workload, expected.image, expected.repeat)
        assert trial.name == expected.name and trial.trial_key
        if trial.status != "ok":
            assert trial.message == expected.message
    reasons = {(t.image, t.status): t.message for t in versions.trials if t.status != "ok"}
    assert reasons[(OLD, "unsupported")] == OLD_REASON
    assert reasons[(NEW, "unsupported")] == FUSED_REASON
    assert reasons[(NEW, "failed")] == FAILED_MESSAGE
    assert reasons[(NEW, "diverged")] == DIVERGED_MESSAGE


def test_what_ran_where_is_in_the_tags(versions):
    old = [t for t in versions.trials if t.image == OLD]
    assert old and all(t.tags["versweep.decided_by"] == "backend.check" for t in old)
    assert all(not any(k.startswith("versweep.env.") for k in t.tags) for t in old)
    ran = [t for t in versions.trials if t.image == MID and t.status == "ok"]
    assert {t.tags["versweep.torch"] for t in ran} == {"2.0.1+cu118"}
    assert {t.tags["versweep.cudnn"] for t in ran} == {"8700"}
    assert {t.tags["versweep.env.flags.tf32_matmul"] for t in ran} == {"false"}
    assert {t.tags["versweep.gpu"] for t in ran} == {"NVIDIA H100 80GB HBM3",
                                                     "NVIDIA A100-SXM4-80GB"}
    assert all(t.tags["versweep.image_digest"].startswith("sha256:") for t in ran)


def test_images_come_oldest_torch_first(versions):
    assert versions.images == list(IMAGES)
    # Images outside images/matrix.toml: by the torch their runs reported, else the version
    # in the name; one with neither comes last.
    assert order_images({"my-build", "torch-2.0.1-cu118", "local", "torch-1.2.3-custom",
                         "torch-0.4.1-cu90"}, {"local": "2.13.0+cpu"}) == [
        "torch-0.4.1-cu90", "torch-1.2.3-custom", "torch-2.0.1-cu118", "local", "my-build"]


def test_params_and_result_metrics_as_written(store, versions):
    written = {t.run_id: t for t in store.versions.decided}
    for trial in versions.trials:
        expected = written[trial.run_id]
        if trial.workload == "rnn_bench":
            assert trial.params["bench"] == expected.bench
            assert trial.params["impl"] == expected.impl
            assert trial.params["seed"] == str(1234 + trial.repeat)
        for name, value in expected.metrics.items():
            assert trial.metrics[name] == pytest.approx(value)


# --------------------------------------------------------------------------- samples


def test_samples_are_the_per_batch_seconds_written(store, versions):
    samples = load_samples(versions.trials)
    written = {t.run_id: t for t in store.versions.decided}
    with_samples = {t.run_id for t in store.versions.decided if t.samples_ms is not None}
    assert set(samples) == with_samples  # failed, unsupported, ptb_lm: none
    for run_id, values in samples.items():
        assert values == pytest.approx([ms / 1000.0 for ms in written[run_id].samples_ms])
    one = next(t for t in versions.trials if t.run_id in with_samples)
    assert one.samples() == samples[one.run_id]
    assert next(t for t in versions.trials if t.status == "failed").samples() is None


@pytest.mark.parametrize("text, seconds", [
    ('{"unit": "s", "description": "...", "values": [0.5, 0.25]}', [0.5, 0.25]),  # layout 3
    ('{"unit": "ms", "values": [500, 250.0]}', [0.5, 0.25]),
    ("[0.5, 0.25]", [0.5, 0.25]),  # layouts 1 and 2: a bare list of seconds
    ('[0.5, "x", true, 1]', [0.5, 1.0]),
    ('{"unit": "furlongs", "values": [1.0]}', None),
    ('{"unit": "s"}', None),
    ('"0.5"', None),
    ("not json", None),
])
def test_samples_json_of_every_layout_reads_as_seconds(text, seconds):
    from analysis.load import _parse_samples

    assert _parse_samples(text) == seconds


# --------------------------------------------------------------------------- golden figures


@pytest.mark.parametrize("bench, impl, image, median, mark", [
    ("1x320-ce-long", "cudnn", MID, 60.0, FASTER),
    ("1x320-ce-long", "cudnn", NEW, 81.2, "~"),
    ("1x320-ce-long", "fused", MID, 204.0, SLOWER),
    ("1x320-ce-long", "fused", NEW, None, NOT_AVAILABLE),
    ("4x320-ce-long", "cudnn", MID, 529.2, "~"),
    ("4x320-ce-long", "cudnn", NEW, None, NOT_AVAILABLE),
    ("4x320-ctc-long", "cudnn", MID, 660.0, "~"),
    ("4x320-ctc-long", "cudnn", NEW, 590.0, "~"),
])
def test_the_speed_figures_from_the_store(versions, bench, impl, image, median, mark):
    samples = load_samples(versions.trials)
    base = ms_repeats(versions, samples, bench, impl, BASE)
    cand = ms_repeats(versions, samples, bench, impl, image)
    base_median = {"cudnn": 80.0, "fused": 170.0}[impl] if bench == "1x320-ce-long" else \
        {"4x320-ce-long": 540.0, "4x320-ctc-long": 600.0}[bench]
    assert median_ci(base).estimate == pytest.approx(base_median)
    comparison = compare(base, cand)
    assert comparison.mark == mark
    if median is None:
        assert cand == [] and median_ci(cand).n_repeats == 0
        return
    interval = median_ci(cand)
    assert interval.estimate == pytest.approx(median)
    assert interval.low < median < interval.high
    assert comparison.ratio == pytest.approx(median / base_median)
    assert comparison.low < comparison.ratio < comparison.high


def test_the_parity_verdicts_from_the_store(versions):
    by_image = {image: [t.metrics["test_perplexity"] for t in versions.trials_of("ptb_lm")
                        if t.image == image and t.status == "ok"]
                for image in (BASE, MID, NEW)}
    assert by_image == {image: pytest.approx(values)
                        for image, values in PTB_TEST_PERPLEXITY.items()}
    verdicts = parity(by_image, BASE)
    assert (verdicts[MID].verdict, verdicts[NEW].verdict) == (SAME, DIFFERS)


def test_learning_curves_have_one_value_per_epoch(store, versions):
    ptb = [t for t in versions.trials_of("ptb_lm") if t.status == "ok"]
    curve = metric_history(store.tracking_uri, ptb[0].run_id, "valid_perplexity")
    test = ptb[0].metrics["test_perplexity"]
    assert_same(curve, [(e, test * (1.0 + 0.8 / e) + 4.0) for e in range(1, PTB_EPOCHS + 1)],
                rel=1e-6)
    # words_per_second is also a result metric, logged again at the last step.
    speeds = metric_histories(store.tracking_uri, [t.run_id for t in ptb], "words_per_second")
    assert set(speeds) == {t.run_id for t in ptb}
    assert all([step for step, _ in points] == [1, 2, 3, 4] for points in speeds.values())
    assert metric_history(store.tracking_uri, ptb[0].run_id, "no_such_metric") == []


# --------------------------------------------------------------------------- choosing a sweep


def test_the_plan_of_the_grid_and_what_of_it_is_undecided(store, versions):
    # trials.json of the parent run: every trial the grid planned, each decided once. The
    # Ctrl-C'd and superseded runs were extra repeats outside the plan: nothing undecided.
    assert sorted(p.key for p in versions.planned) == sorted(t.trial_key for t in versions.trials)
    assert versions.trials_planned == len(versions.planned) == len(store.versions.decided)
    assert versions.undecided() == [] and versions.parent_status == "FINISHED"
    by_key = {t.trial_key: t for t in versions.trials}
    for planned in versions.planned:
        trial = by_key[planned.key]
        assert (planned.name, planned.image, planned.workload, planned.repeat) == (
            trial.name, trial.image, trial.workload, trial.repeat)
    search = load_sweep_data(store.tracking_uri, HPARAMS)
    assert search.planned == () and search.trials_planned == 20  # the grid's num_samples


def test_an_earlier_sweep_by_id_or_prefix(store):
    older = store.older_versions.parent_run_id
    for name in (older, older[:8], older.upper()):
        data = load_sweep_data(store.tracking_uri, VERSIONS, name)
        assert data.parent_run_id == older
        assert [t.run_id for t in data.trials] == [store.older_versions.trials[0].run_id]
        assert data.images == [BASE]


def test_both_readers_give_the_same_sweep(store, versions):
    through_mlflow = load_sweep_data(store.tracking_uri, VERSIONS, direct_sqlite=False)
    assert through_mlflow == versions
    search = load_sweep_data(store.tracking_uri, HPARAMS)
    assert load_sweep_data(store.tracking_uri, HPARAMS, direct_sqlite=False) == search


def test_reading_a_sqlite_store_needs_no_mlflow(store):
    # MLflow takes seconds to import; the direct reader is why a report starts fast.
    code = (f"import sys; from analysis.load import load_sweep_data, load_samples; "
            f"d = load_sweep_data({store.tracking_uri!r}, {VERSIONS!r}); load_samples(d.trials); "
            f"assert len(d.trials) == 60; assert 'mlflow' not in sys.modules, 'mlflow imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- bad input


def one_line_error(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


def test_an_unknown_experiment_names_the_nearest(store):
    message = one_line_error(lambda: load_sweep_data(store.tracking_uri, "version"))
    assert "'version' does not exist" in message and "did you mean 'versions'?" in message
    message = one_line_error(lambda: load_sweep_data(store.tracking_uri, "zzzz"))
    assert "experiments there:" in message and "hparams" in message


def test_an_unknown_sweep_lists_the_sweeps(store):
    message = one_line_error(lambda: load_sweep_data(store.tracking_uri, VERSIONS, "f00ba4"))
    assert "no sweep 'f00ba4'" in message
    assert store.versions.parent_run_id in message
    assert store.older_versions.parent_run_id in message
    # Newest first.
    assert message.index(store.versions.parent_run_id) < message.index(
        store.older_versions.parent_run_id)


def test_an_experiment_versweep_did_not_write(store):
    message = one_line_error(lambda: load_sweep_data(store.tracking_uri, NOT_A_SWEEP))
    assert "has no sweep runs" in message


def test_a_sweep_with_nothing_decided_yet(store):
    message = one_line_error(lambda: load_sweep_data(store.tracking_uri, UNFINISHED))
    assert "no finished trial runs" in message
    assert store.unfinished_parent_run_id in message


def test_a_store_that_does_not_exist_is_not_created(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    message = one_line_error(lambda: load_sweep_data(f"sqlite:///{missing}", VERSIONS))
    assert "no MLflow store at" in message and str(missing) in message
    assert not missing.exists() and not missing.parent.exists()
    # An empty file (touch mlflow.db) holds no store either, and is not written to.
    empty = tmp_path / "empty.db"
    empty.touch()
    message = one_line_error(lambda: load_sweep_data(f"sqlite:///{empty}", VERSIONS))
    assert "no MLflow store at" in message and str(empty) in message
    assert empty.stat().st_size == 0


# --------------------------------------------------------------------------- the search


def test_a_search_sweep_and_its_optuna_study(store):
    data = load_sweep_data(store.tracking_uri, HPARAMS)
    assert data.search and data.parent_run_id == store.search.parent_run_id
    assert (data.search_metric, data.search_mode) == ("valid_perplexity", "min")
    assert data.search_space == ("learning_rate", "keep_prob", "hidden_size", "clip_norm")
    assert [t.status for t in data.trials] == list(SEARCH_OUTCOMES)
    assert data.images == ["local"]
    stopped = [t for t in data.trials if t.status == "stopped"]
    assert all(t.message.startswith("stopped early by ASHA at step") for t in stopped)
    study = data.study()
    assert study is not None and len(study.trials) == len(SEARCH_OUTCOMES)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == SEARCH_OUTCOMES.count("ok")
    best_valid = min(t.metrics["best_valid_perplexity"] for t in data.trials if t.status == "ok")
    assert study.best_value == pytest.approx(best_valid)


def test_the_study_name_is_the_one_the_sweep_uses():
    # One definition, in the records layout, for the sweep (which creates the study) and
    # the report (which reads it); the name is part of the layout a store keeps.
    import sweeps.execute.tune
    from sweeps.records import layout

    assert study_name is layout.study_name is sweeps.execute.tune.study_name
    assert study_name("e", "s", "abc") == "versweep/e/s/abc"


def lose_grid_file(client, run_id: str) -> str:
    """Delete the grid file a parent run keeps (as an artifact store may lose it); its name."""
    from sweeps.records.read import local_artifact_dir

    directory = local_artifact_dir(client.get_run(run_id).info.artifact_uri)
    (grid,) = directory.glob("*.toml")
    grid.unlink()
    return grid.name


def test_a_sweep_whose_grid_file_is_lost_keeps_its_kind_or_says_it_cannot_tell(tmp_path):
    # Without its grid file, a search must not quietly become a grid report: the parent
    # run's versweep.sweep_kind tag says what it is (with a warning that the search's
    # metric, mode and parameters come from its runs); a grid's plan says it is a grid;
    # with neither, loading it is one clear error.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    records = SweepRecords(uri, VERSIONS)
    grid = write_older_versions_sweep(records)
    records.experiment = HPARAMS
    search = write_search_sweep(records, tmp_path)
    lose_grid_file(records.client, grid.parent_run_id)
    name = lose_grid_file(records.client, search.parent_run_id)

    for direct_sqlite in (True, False):
        with pytest.warns(UserWarning, match=rf"sweep {search.parent_run_id} of experiment "
                                             rf"'hparams': its grid file \({name}\) could not "
                                             r"be read .*; it is a search \(tag "
                                             r"versweep.sweep_kind\)"):
            data = load_sweep_data(uri, HPARAMS, direct_sqlite=direct_sqlite)
        assert data.search and data.grid_text == "" and data.planned == ()
        assert (data.search_metric, data.search_space) == (None, ())
        assert [t.status for t in data.trials] == list(SEARCH_OUTCOMES)
        data = load_sweep_data(uri, VERSIONS, direct_sqlite=direct_sqlite)
        assert not data.search and data.trials[0].run_id == grid.trials[0].run_id
        assert [p.key for p in data.planned] == [data.trials[0].trial_key]

    # A search recorded before the tag existed: nothing says what it is.
    records.client.delete_tag(search.parent_run_id, "versweep.sweep_kind")
    message = one_line_error(lambda: load_sweep_data(uri, HPARAMS))
    assert message.startswith(f"cannot tell whether sweep {search.parent_run_id} of experiment "
                              f"'hparams' is a grid or an Optuna search: its grid file ({name}) "
                              "could not be read")


def test_every_run_says_its_records_layout_and_a_newer_one_is_refused(tmp_path):
    # versweep.schema on the parent and every trial run; a store without it (layout 1,
    # before the tag) still reads; a newer layout is one clear line, on both readers and
    # for --resume, never a report built on a layout this versweep does not know.
    from sweeps.records.layout import SCHEMA_TAG, SCHEMA_VERSION

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    records = SweepRecords(uri, VERSIONS)
    written = write_older_versions_sweep(records)
    client = records.client
    parent = client.get_run(written.parent_run_id)
    assert parent.data.tags[SCHEMA_TAG] == str(SCHEMA_VERSION)
    for trial in written.trials:
        assert client.get_run(trial.run_id).data.tags[SCHEMA_TAG] == str(SCHEMA_VERSION)

    client.delete_tag(written.parent_run_id, SCHEMA_TAG)  # as a layout-1 store has it
    for direct_sqlite in (True, False):
        assert load_sweep_data(uri, VERSIONS, direct_sqlite=direct_sqlite).trials

    client.set_tag(written.parent_run_id, SCHEMA_TAG, str(SCHEMA_VERSION + 1))
    for direct_sqlite in (True, False):
        message = one_line_error(lambda direct=direct_sqlite: load_sweep_data(
            uri, VERSIONS, direct_sqlite=direct))
        assert message == (f"sweep {written.parent_run_id} of experiment '{VERSIONS}' was "
                           f"written by a newer versweep (records layout {SCHEMA_VERSION + 1}; "
                           f"this one reads layouts 1 to {SCHEMA_VERSION}): update versweep "
                           "to read it")
    client.set_tag(written.parent_run_id, SCHEMA_TAG, "two")
    assert "is not a layout version" in one_line_error(lambda: load_sweep_data(uri, VERSIONS))


# --------------------------------------------------------------------------- a tracking server


def test_a_sweep_on_a_tracking_server(store, tmp_path):
    """Through MlflowClient and the server's proxied artifacts (mlflow-artifacts:/)."""
    db = tmp_path / "server.db"
    shutil.copyfile(store.directory / "mlflow.db", db)  # tables made: the server starts sooner
    with running_mlflow_server(tmp_path, db) as url:
        written = write_older_versions_sweep(SweepRecords(url, "remote"))
        data = load_sweep_data(url, "remote")
        assert data.parent_run_id == written.parent_run_id
        trial = data.trials[0]
        assert trial.artifact_uri.startswith("mlflow-artifacts:")
        samples = load_samples(data.trials)
        assert samples[trial.run_id] == pytest.approx(
            [ms / 1000.0 for ms in written.trials[0].samples_ms])
        assert 'name = "versions"' in data.grid_text
        assert [p.key for p in data.planned] == [trial.trial_key] and data.undecided() == []
        assert [step for step, _ in metric_history(url, trial.run_id,
                                                   "chunk_ms_per_batch_median")] == [50, 100]
        message = one_line_error(lambda: load_sweep_data(url, "remot"))
        assert "did you mean 'remote'?" in message


def test_a_sweeps_recorded_set_overrides_decide_its_search_metric_and_space():
    """A search run with --set search.metric=... is reported by the metric it searched."""
    from analysis.load import _parse_grid
    from sweeps.grid.load import OVERRIDE_LINE, OVERRIDES_NOTE

    text = "\n".join([
        "[search]", 'metric = "valid_perplexity"', 'mode = "min"',
        "[search.space]", 'learning_rate = {loguniform = [0.1, 2.0]}', "",
        OVERRIDES_NOTE, f"{OVERRIDE_LINE}search.metric=train_perplexity",
        f"{OVERRIDE_LINE}search.space.keep_prob={{uniform=[0.3, 1.0]}}", ""])
    grid = _parse_grid(text)
    assert grid["search"]["metric"] == "train_perplexity"
    assert set(grid["search"]["space"]) == {"learning_rate", "keep_prob"}
    assert _parse_grid("not [ toml") == {}

"""Grid files as a user writes them: the shipped grids, --set overrides, and every kind of
mistake a grid can hold, each named by file and key path before any trial starts."""
import itertools
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sweeps.errors import GridError
from sweeps.grid.load import GRIDS_DIR, MATRIX_PATH, load_sweep
from sweeps.grid.spec import LOCAL_IMAGE
from workers.workloads import resolve_workload_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def test_the_four_grids_of_the_issue_are_shipped():
    assert {"smoke", "versions", "hparams", "nightly"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_grid_loads(name):
    sweep = load_sweep(name)
    assert sweep.name == name
    assert sweep.is_search or sweep.trials
    assert sweep.text == (GRIDS_DIR / f"{name}.toml").read_text()
    for trial in sweep.trials:
        # Configs are the worker's resolved configs: resolving again changes nothing.
        assert resolve_workload_config(trial.workload, trial.config_dict) == trial.config_dict
    if sweep.backend == "local":
        assert {t.image for t in sweep.trials} <= {LOCAL_IMAGE} and sweep.images == ()
    else:
        assert {t.image for t in sweep.trials} == {i.name for i in sweep.images}


def test_a_grid_is_found_by_name_or_by_path():
    assert load_sweep("smoke").trials == load_sweep(str(GRIDS_DIR / "smoke.toml")).trials


def test_versions_runs_the_full_cross_product():
    """Count the trial table from the two TOML files directly, without the loader."""
    grid = tomllib.loads((GRIDS_DIR / "versions.toml").read_text())
    matrix = tomllib.loads(MATRIX_PATH.read_text())["image"]
    assert grid["sweep"]["images"] == "cuda"
    cuda_images = [entry["name"] for entry in matrix if entry["cuda"]]
    repeats = grid["sweep"]["repeats"]
    per_image = sum(len(list(itertools.product(*group.get("axes", {}).values())))
                    for group in grid["group"])
    expected = len(cuda_images) * per_image * repeats

    sweep = load_sweep("versions")
    assert len(sweep.trials) == expected
    assert repeats == 3 and len(cuda_images) >= 31

    # Every image runs every benchmark with basic, fused and cudnn, and ptb_lm medium,
    # three times each.
    cells = {(t.image, t.config_dict.get("bench"), t.config_dict.get("impl"), t.repeat)
             for t in sweep.trials if t.workload == "rnn_bench"}
    benches = ["1x320-ce-short", "1x320-ce-long", "4x320-ce-long", "4x320-ctc-long"]
    assert cells == set(itertools.product(cuda_images, benches, ["basic", "fused", "cudnn"],
                                          range(3)))
    lm = [(t.image, t.repeat) for t in sweep.trials if t.workload == "ptb_lm"]
    assert sorted(lm) == sorted(itertools.product(cuda_images, range(3)))
    assert all(t.config_dict["preset"] == "medium" for t in sweep.trials
               if t.workload == "ptb_lm")
    assert sweep.device == "cuda" and sweep.backend == "docker"


def test_trial_keys_are_unique_and_stable_across_loads_and_processes():
    first = [t.key for t in load_sweep("versions").trials]
    assert len(set(first)) == len(first)
    assert [t.key for t in load_sweep("versions").trials] == first
    # A resumed sweep runs in a new process: the keys must not depend on hash seeds.
    code = ("import json; from sweeps.grid.load import load_sweep; "
            "print(json.dumps([t.key for t in load_sweep('versions').trials]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == first


def test_repeats_get_distinct_seeds_unless_the_grid_fixes_one(tmp_path):
    sweep = load_sweep("versions")
    image = sweep.trials[0].image
    lm = sorted((t.repeat, t.config_dict["seed"]) for t in sweep.trials
                if t.workload == "ptb_lm" and t.image == image)
    assert lm == [(0, 1234), (1, 1235), (2, 1236)]

    grid = _write(tmp_path, BENCH + 'config.seed = 7\n', repeats=3)
    seeds = [t.config_dict["seed"] for t in load_sweep(str(grid)).trials]
    assert seeds == [7, 7, 7]
    based = load_sweep(str(grid), ["group.0.config={}", "sweep.seed=100",
                                   'group.0.config.bench="1x320-ce-short"'])
    assert [t.config_dict["seed"] for t in based.trials] == [100, 101, 102]


def test_repeats_are_queued_repeat_by_repeat():
    repeats = [t.repeat for t in load_sweep("nightly").trials]
    assert repeats == sorted(repeats)


def test_within_a_repeat_each_variant_runs_on_every_image_back_to_back_in_turning_order(
        tmp_path):
    """Drift on a shared machine must not pass for a version effect (sweeps/grid/load.py)."""
    grid = tmp_path / "order.toml"
    grid.write_text("""
[sweep]
backend = "docker"
device = "cpu"
repeats = 2
images = ["torch-1.13.1-cu116", "torch-2.0.1-cu118", "torch-2.13.0-cpu"]

[[group]]
workload = "rnn_bench"
axes.bench = ["1x320-ce-short", "1x320-ce-long"]
""")
    order = [(t.repeat, t.config_dict["bench"], t.image.split("-")[1])
             for t in load_sweep(str(grid)).trials]
    assert order == [
        (0, "1x320-ce-short", "1.13.1"), (0, "1x320-ce-short", "2.0.1"),
        (0, "1x320-ce-short", "2.13.0"),
        (0, "1x320-ce-long", "1.13.1"), (0, "1x320-ce-long", "2.0.1"),
        (0, "1x320-ce-long", "2.13.0"),
        (1, "1x320-ce-short", "2.13.0"), (1, "1x320-ce-short", "2.0.1"),
        (1, "1x320-ce-short", "1.13.1"),
        (1, "1x320-ce-long", "2.13.0"), (1, "1x320-ce-long", "2.0.1"),
        (1, "1x320-ce-long", "1.13.1")]


def test_every_trial_name_in_every_shipped_grid_is_unique():
    for name in SHIPPED:
        trials = load_sweep(name).trials
        assert len({t.name for t in trials}) == len(trials), name


def test_names_show_the_config_keys_that_tell_trials_apart(tmp_path):
    grid = tmp_path / "names.toml"
    grid.write_text("""
[sweep]
backend = "local"
device = "cpu"
repeats = 2

[[group]]
workload = "ptb_lm"
axes.learning_rate = [0.5, 1.0]
axes.keep_prob = [0.35, 1.0]

[[group]]
workload = "rnn_bench"
axes.bench = ["1x320-ce-short", "1x320-ce-long"]
axes.impl = ["basic", "cudnn"]
""")
    names = [t.name for t in load_sweep(str(grid)).trials]
    assert len(set(names)) == len(names) == 16
    # The axes that vary within a label, the workload's key columns first; the seed, which
    # follows the repeat, and the label's own keys are not repeated.
    assert "ptb_lm small learning_rate=0.5 keep_prob=0.35 @ local #0" in names
    assert "ptb_lm small learning_rate=1 keep_prob=1 @ local #1" in names
    assert "rnn_bench 1x320-ce-long cudnn @ local #1" in names


def test_a_search_trial_is_named_by_its_sampled_values():
    from sweeps.execute.tune import search_spec

    sweep = load_sweep("hparams")
    sampled = {p.name: (p.values[0] if p.values else int(p.low) if p.kind == "int" else p.low)
               for p in sweep.search.space}
    spec = search_spec(sweep, sampled)
    for param in sweep.search.space:
        assert f" {param.name}=" in spec.name
    assert spec.name.startswith("ptb_lm ") and spec.name.endswith(" #0")
    assert spec.key == search_spec(sweep, sampled).key


def test_smoke_is_tiny_and_local():
    sweep = load_sweep("smoke")
    assert sweep.backend == "local" and sweep.device == "auto"
    assert 5 <= len(sweep.trials) <= 8
    workloads = {t.workload for t in sweep.trials}
    benches = {t.config_dict["bench"] for t in sweep.trials if t.workload == "rnn_bench"}
    assert workloads == {"ptb_lm", "rnn_bench"} and len(benches) == 4
    for trial in sweep.trials:
        config = trial.config_dict
        assert config["hidden_size"] <= 32
        if trial.workload == "rnn_bench":
            assert config["batches"] <= 20 and config["seq_len"] <= 32
        else:
            assert config["max_epochs"] <= 2 and config["max_steps_per_epoch"] <= 20


def test_hparams_is_a_tpe_search_with_asha_on_validation_perplexity():
    sweep = load_sweep("hparams")
    search = sweep.search
    assert sweep.trials == () and search.workload == "ptb_lm" and search.sampler == "tpe"
    assert {p.name: p.kind for p in search.space} == {
        "learning_rate": "loguniform", "keep_prob": "uniform", "hidden_size": "choice",
        "clip_norm": "loguniform"}
    assert (search.metric, search.mode) == ("valid_perplexity", "min")
    assert search.scheduler.kind == "asha" and search.scheduler.grace_period == 1
    assert search.scheduler.max_t == dict(search.base_config)["max_epochs"]
    assert dict(search.base_config)["preset"] == "medium" and search.image == LOCAL_IMAGE


# ---------------------------------------------------------------- overrides


def test_set_overrides_change_the_trial_table():
    full = load_sweep("versions")
    once = load_sweep("versions", ["sweep.repeats=1"])
    assert len(once.trials) * 3 == len(full.trials)

    short = load_sweep("versions", ["group.*.config.batches=20", "group.*.config.warmup_batches=5"])
    benches = [t for t in short.trials if t.workload == "rnn_bench"]
    assert benches and all(t.config_dict["batches"] == 20 for t in benches)

    cudnn_only = load_sweep("versions", ['group.0.axes.impl=["cudnn"]'])
    group0 = {t.config_dict["impl"] for t in cudnn_only.trials if t.group == 0}
    assert group0 == {"cudnn"}
    # The same with the quotes a shell took away.
    bare = load_sweep("versions", ["group.0.axes.impl=[cudnn, fused]"])
    assert {t.config_dict["impl"] for t in bare.trials if t.group == 0} == {"cudnn", "fused"}
    assert "sweep.repeats=1" in once.text

    assert load_sweep("hparams", ["search.num_samples=4"]).search.num_samples == 4
    two = load_sweep("nightly", ['sweep.images=["torch-2.13.0-cu130"]', "sweep.backend=docker"])
    assert {t.image for t in two.trials} == {"torch-2.13.0-cu130"}


def test_the_sweep_data_dir_reaches_every_ptb_lm_trial_as_an_absolute_path(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "ptb").mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep("smoke", ["sweep.data_dir=ptb"])
    assert sweep.data_dir == str(tmp_path / "ptb")
    for trial in sweep.trials:
        if trial.workload == "ptb_lm":
            assert trial.config_dict["data_dir"] == str(tmp_path / "ptb")
        else:
            assert "data_dir" not in trial.config_dict
    assert load_sweep("smoke").trials[0].config_dict["data_dir"] is None


def test_a_grid_reads_images_from_the_matrix_it_is_given(tmp_path):
    matrix = tmp_path / "matrix.toml"
    renamed = MATRIX_PATH.read_text().replace('"torch-2.13.0-cu130"',
                                              '"torch-2.13.0-cu130-mirror"')
    matrix.write_text(renamed)
    grid = _write(tmp_path, DOCKER + 'images = ["torch-2.13.0-cu130-mirror"]\n' + BENCH)
    sweep = load_sweep(str(grid), matrix_path=matrix)
    assert [i.name for i in sweep.images] == ["torch-2.13.0-cu130-mirror"]
    assert {t.image for t in sweep.trials} == {"torch-2.13.0-cu130-mirror"}
    # A local grid that names no image never reads the matrix.
    assert load_sweep("smoke", matrix_path=tmp_path / "absent.toml").trials


def test_the_local_backend_runs_a_docker_grid_on_the_host_torch():
    sweep = load_sweep("nightly", ["sweep.backend=local", "sweep.device=auto"])
    assert {t.image for t in sweep.trials} == {LOCAL_IMAGE}
    assert len(sweep.trials) == len(load_sweep("nightly").trials) // 4


@pytest.mark.parametrize("override, says", [
    ("group.9.config.batches=20", "group has 4 entries"),
    ("sweep.repeats", "expected key.path=value"),
    ("sweep.repeats=zero", "sweep.repeats: must be an integer"),
    ("group.*.config.batchs=20", "no group's workload has a config key 'batchs' (did you mean "
                                 "'batches'?)"),
    ("group.0.config.batches=20", "group[0].config.batches: config key 'batches' is unknown"),
    ("sweep.name.x=1", "is a value, not a table"),
    ("search.num_samples=4", "a grid is either [[group]] tables or one [search]"),
    ('sweep.images=["torch-2.13.0-cpu"', "is not a TOML value (an unclosed list"),
    ('sweep.name="smoke', "is not a TOML value"),
])
def test_bad_overrides_fail_with_the_path(override, says):
    with pytest.raises(GridError) as caught:
        load_sweep("smoke", [override])
    message = str(caught.value)
    assert message.startswith("sweeps/grids/smoke.toml: ") or "smoke.toml: " in message
    assert says in message, message


# ---------------------------------------------------------------- bad grids

BENCH = """
[[group]]
workload = "rnn_bench"
config.bench = "1x320-ce-short"
"""
SEARCH = """
[search]
workload = "ptb_lm"
config.preset = "small"
config.max_epochs = 3
metric = "valid_perplexity"
mode = "min"
[search.space.learning_rate]
type = "loguniform"
low = 0.1
high = 10.0
"""
DOCKER = '[sweep]\nbackend = "docker"\ndevice = "cuda"\n'


def _write(tmp_path, body, repeats=None, name="bad.toml"):
    path = tmp_path / name
    head = f"[sweep]\nrepeats = {repeats}\n" if repeats else ""
    path.write_text(head + body)
    return path


BAD_GRIDS = [
    # (case, grid text, key path in the message, what the message says)
    ("unknown top-level table", "[sweeps]\nrepeats = 1\n" + BENCH, "sweeps",
     "did you mean 'sweep'"),
    ("misspelled sweep key", "[sweep]\nrepeat = 2\n" + BENCH, "sweep.repeat",
     "did you mean 'repeats'"),
    ("misspelled group key", BENCH + 'axis.impl = ["fused"]\n', "group[0].axis",
     "did you mean 'axes'"),
    ("wrong type", '[sweep]\nrepeats = "three"\n' + BENCH, "sweep.repeats",
     "must be an integer"),
    ("zero repeats", "[sweep]\nrepeats = 0\n" + BENCH, "sweep.repeats", "at least 1"),
    ("empty axis", BENCH + "axes.impl = []\n", "group[0].axes.impl", "non-empty array"),
    ("axis not an array", BENCH + 'axes.impl = "fused"\n', "group[0].axes.impl",
     "non-empty array"),
    ("axis twice", BENCH + 'axes.impl = ["fused", "fused"]\n', "group[0].axes.impl",
     "twice"),
    ("key in config and axes", BENCH + 'axes.bench = ["1x320-ce-long"]\n',
     "group[0].axes.bench", "also set in group[0].config"),
    ("unknown backend", '[sweep]\nbackend = "dokcer"\n' + BENCH, "sweep.backend",
     "did you mean 'docker'"),
    ("unknown device", '[sweep]\ndevice = "gpu"\n' + BENCH, "sweep.device",
     "not one of auto, cpu, cuda"),
    ("unknown image", DOCKER + 'images = ["torch-1.13.1-cu117"]\n' + BENCH, "sweep.images[0]",
     "did you mean 'torch-1.13.1-cu116'"),
    ("unknown image selector", DOCKER + 'images = "al"\n' + BENCH, "sweep.images",
     "did you mean 'all'"),
    ("docker without images", DOCKER + BENCH, "group[0].images", "set sweep.images"),
    ("CPU image on cuda", DOCKER + 'images = ["torch-2.13.0-cpu"]\n' + BENCH, "sweep.images",
     "has no CUDA"),
    ("unknown workload", BENCH.replace("rnn_bench", "rnn_bnch"), "group[0].workload",
     "did you mean 'rnn_bench'"),
    ("missing workload", "[[group]]\nconfig.bench = \"1x320-ce-short\"\n", "group[0].workload",
     "missing"),
    ("unknown preset", '[[group]]\nworkload = "ptb_lm"\nconfig.preset = "meduim"\n',
     "group[0].config.preset", "did you mean 'medium'"),
    ("unknown benchmark", BENCH.replace("1x320-ce-short", "1x320-ce-shrt"),
     "group[0].config.bench", "did you mean '1x320-ce-short'"),
    ("bad axis value in the second group", BENCH + BENCH.replace("short", "long")
     + 'axes.impl = ["fused", "cudn"]\n', "group[1].axes.impl",
     "config key 'impl' is 'cudn' (did you mean 'cudnn'?)"),
    ("unknown worker key", BENCH + "config.batchs = 20\n", "group[0].config.batchs",
     "did you mean 'batches'"),
    ("worker value out of range", BENCH + "config.batches = -5\n", "group[0].config.batches",
     "greater than 0"),
    ("cross-key worker check", BENCH + "config.batches = 10\nconfig.warmup_batches = 20\n",
     "group[0].config.warmup_batches", "must be less than batches"),
    ("required worker key missing", '[[group]]\nworkload = "rnn_bench"\n', "group[0].config",
     "'bench' is required"),
    ("device set per group", BENCH + 'config.device = "cuda"\n', "group[0].config.device",
     "set sweep.device"),
    ("group as a table", BENCH.replace("[[group]]", "[group]"), "group",
     "write [[group]], not [group]"),
    ("the same trial twice", BENCH + BENCH, "group[1]", "also produced by group[0]"),
    ("missing data directory", '[sweep]\ndata_dir = "no/such/dir"\n' + BENCH, "sweep.data_dir",
     "does not exist"),
    ("no groups and no search", '[sweep]\nname = "x"\n', "group", "no [[group]]"),
    ("groups and a search", BENCH + SEARCH, "search", "either [[group]] tables or one [search]"),
    ("search: loguniform from 0", SEARCH.replace("low = 0.1", "low = 0.0"),
     "search.space.learning_rate.low", "needs low > 0"),
    ("search: low above high", SEARCH.replace("high = 10.0", "high = 0.01"),
     "search.space.learning_rate", "must be less than high"),
    ("search: empty choice", SEARCH + '[search.space.hidden_size]\ntype = "choice"\nvalues = []\n',
     "search.space.hidden_size.values", "non-empty array"),
    ("search: int bounds not integers",
     SEARCH + '[search.space.num_layers]\ntype = "int"\nlow = 1.5\nhigh = 3\n',
     "search.space.num_layers.low", "must be an integer"),
    ("search: uniform on an integer key",
     SEARCH + '[search.space.hidden_size]\ntype = "uniform"\nlow = 100\nhigh = 800\n',
     "search.space.hidden_size.type", "takes integers"),
    ("search: key the workload lacks", SEARCH.replace("space.learning_rate", "space.lerning_rate"),
     "search.space.lerning_rate", "did you mean 'learning_rate'"),
    ("search: bound the worker rejects",
     SEARCH + '[search.space.keep_prob]\ntype = "uniform"\nlow = 0.5\nhigh = 1.5\n',
     "search.space.keep_prob.high", "at most 1.0"),
    ("search: choice the worker rejects",
     SEARCH + '[search.space.loss]\ntype = "choice"\nvalues = ["mean", "sum"]\n',
     "search.space.loss.values[1]", "choose one of"),
    ("search: unknown space type", SEARCH.replace('"loguniform"', '"log-uniform"'),
     "search.space.learning_rate.type", "did you mean 'loguniform'"),
    ("search: range keys on a choice", SEARCH.replace('"loguniform"', '"choice"'),
     "search.space.learning_rate.low", "unknown key"),
    ("search: empty space", SEARCH.split("[search.space")[0] + "space = {}\n", "search.space",
     "is empty"),
    ("search: unknown metric", SEARCH.replace('metric = "valid_perplexity"',
                                              'metric = "valid_perplexty"'),
     "search.metric", "did you mean 'valid_perplexity'"),
    ("search: ASHA on a result-only metric",
     SEARCH.replace('metric = "valid_perplexity"', 'metric = "test_perplexity"')
     + '[search.scheduler]\ntype = "asha"\n', "search.metric",
     "only at the end, but ASHA stops trials"),
    ("search: unknown scheduler", SEARCH + '[search.scheduler]\ntype = "hyperband"\n',
     "search.scheduler.type", "not one of asha"),
    ("search: max_t beyond the epochs", SEARCH + '[search.scheduler]\ntype = "asha"\nmax_t = 9\n',
     "search.scheduler.max_t", "runs 3 epochs"),
    ("search: missing mode", SEARCH.replace('mode = "min"\n', ""), "search.mode", "missing"),
    ("search: wrong mode", SEARCH.replace('mode = "min"', 'mode = "minimize"'), "search.mode",
     "not one of min, max"),
    ("search: repeats", "[sweep]\nrepeats = 3\n" + SEARCH, "sweep.repeats",
     "raise search.num_samples"),
    ("search: docker without an image", DOCKER + SEARCH, "search.image", "name one"),
    ("search: unknown image",
     DOCKER + SEARCH.replace("[search]\n", '[search]\nimage = "torch-2.13.0-cu13"\n'),
     "search.image", "did you mean 'torch-2.13.0-cu130'"),
    ("search: CPU image on cuda",
     DOCKER + SEARCH.replace("[search]\n", '[search]\nimage = "torch-2.13.0-cpu"\n'),
     "search.image", "has no CUDA"),
    ("docker: a memory limit that is not a size", DOCKER.replace(
        "[sweep]\n", '[sweep]\ncontainer_memory = "16g; rm -rf /"\n') + BENCH,
     "sweep.container_memory", "is not a memory size like '16g'"),
    ("docker: a memory limit that is a number", DOCKER.replace(
        "[sweep]\n", "[sweep]\ncontainer_memory = 16\n") + BENCH,
     "sweep.container_memory", "must be a string"),
    ("docker: an image name that is a shell command",
     DOCKER.replace("[sweep]\n", '[sweep]\nimages = ["torch-2.13.0-cu130; rm -rf /"]\n')
     + BENCH,
     "sweep.images[0]", "is not in images/matrix.toml"),
    ("search: space key also fixed", SEARCH.replace("config.max_epochs = 3",
                                                    "config.learning_rate = 1.0"),
     "search.space.learning_rate", "also fixed in search.config"),
]


@pytest.mark.parametrize("case, text, where, says", BAD_GRIDS, ids=[c[0] for c in BAD_GRIDS])
def test_a_bad_grid_names_the_file_and_the_key_path(tmp_path, monkeypatch, case, text, where,
                                                    says):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, text)
    with pytest.raises(GridError) as caught:
        load_sweep(str(path))
    message = str(caught.value)
    assert message.startswith(f"bad.toml: {where}: "), message
    assert says in message, message
    assert "\n" not in message


def test_a_toml_syntax_error_gives_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BENCH + "config.batches = = 3\n")
    with pytest.raises(GridError, match=r"^bad.toml: not valid TOML: .*line 5"):
        load_sweep(str(path))


def test_a_missing_grid_file_or_name(tmp_path):
    with pytest.raises(GridError, match="no such file"):
        load_sweep(str(tmp_path / "nothing.toml"))
    with pytest.raises(GridError, match="did you mean 'smoke'"):
        load_sweep("smok")


def test_a_bad_grid_is_an_error_from_a_valid_config_of_the_trial_table(tmp_path, monkeypatch):
    """A mistake in one combination of axes fails the whole grid, naming that axis."""
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BENCH + 'axes.batches = [10, 3]\nconfig.warmup_batches = 5\n')
    with pytest.raises(GridError, match=r"group\[0\]\.axes\.batches: .*warmup_batches"):
        load_sweep(str(path))


RUN_PY = ROOT / "sweeps" / "run.py"


@pytest.mark.skipif(not RUN_PY.exists(), reason="sweeps/run.py (EXECUTION) is not there yet")
def test_run_py_refuses_a_bad_grid_with_one_line_and_exit_2(tmp_path):
    path = _write(tmp_path, "[sweep]\nrepeat = 2\n" + BENCH)
    proc = subprocess.run([sys.executable, str(RUN_PY), "--grid", str(path), "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "bad.toml: sweep.repeat: unknown key (did you mean 'repeats'?)" in lines[0]
    assert "Traceback" not in proc.stderr

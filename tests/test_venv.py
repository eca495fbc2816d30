"""The venv backend and its environments, for real: uv builds them, workers run in them.

Every environment here is a real one (torch 2.13.0 on Python 3.11, from uv's shared cache:
hard links plus the ``env`` workload that verifies it, seconds per build) in a temporary
``VERSWEEP_ENVS_DIR``; trials run through ``run_trial`` as a sweep runs them; locks are
real flocks, two builders are two processes. What needs the package index itself (the
index's answer for a torch version or a Python it has no wheel for) is marked
``needs("package-index")`` and skipped with one line where the index cannot be reached.
The backend contract (events, kills, GPUs, statuses) runs over this backend too, in
tests/test_backends.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from needs import need
from venvenv import (
    VENV_CUDA_IMAGE,
    VENV_IMAGE,
    VENV_KEY,
    build_or_skip,
    linked_copy,
    venv_backend,
)

from sweeps.envs import command
from sweeps.envs.store import (
    MARKER,
    BudgetError,
    EnvState,
    EnvStore,
    eviction_order,
)
from sweeps.errors import UserError
from sweeps.execute.backends import get_backend
from sweeps.execute.backends.venv import VenvBackend
from sweeps.execute.trial import run_trial
from sweeps.grid.load import load_sweep
from sweeps.grid.matrix import load_matrix
from sweeps.grid.spec import TrialSpec
from sweeps.paths import MATRIX_PATH, REPO_ROOT
from workers.ptb_lm_config import MAX_EPOCHS
from workers.workloads import resolve_workload_config

MATRIX = load_matrix(MATRIX_PATH)
TINY_BENCH = {"bench": "1x320-ce-short", "impl": "cudnn", "batch_size": 2, "seq_len": 4,
              "hidden_size": 8, "batches": 3, "warmup_batches": 1, "num_threads": 1,
              "device": "cpu"}
ENDLESS_LM = {"device": "cpu", "hidden_size": 16, "num_layers": 1, "num_steps": 5,
              "batch_size": 4, "epochs": MAX_EPOCHS, "max_steps_per_epoch": None,
              "max_eval_steps": 3, "synthetic_words": 3000, "synthetic_vocab": 50,
              "test_batch_size": 1, "test_num_steps": 5}


def spec_of(workload: str, raw: dict, image: str = VENV_IMAGE, repeat: int = 0) -> TrialSpec:
    """A TrialSpec as a grid makes it (env and ptb_lm configs resolved by the worker's rules)."""
    config = resolve_workload_config(workload, raw) if workload in ("env", "ptb_lm") else raw
    return TrialSpec(workload=workload, image=image, config=tuple(sorted(config.items())),
                     repeat=repeat, group=0)


def marker_of(store: EnvStore, key: str = VENV_KEY) -> dict:
    return json.loads((store.path_of(key) / MARKER).read_text())


def envs_command(args: list[str], monkeypatch, capsys, root: Path, **variables: str):
    """``versweep envs ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("VERSWEEP_ENVS_DIR", str(root))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code = command.main(args, prog="versweep envs")
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------- trials in an environment


def test_an_env_trial_runs_in_the_environment_of_its_matrix_entry(venv_store, tmp_path):
    backend = venv_backend(venv_store)
    outcome = run_trial(backend, spec_of("env", {"device": "cpu"}), log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    assert outcome.env["torch"].split("+")[0] == "2.13.0"
    assert outcome.env["python"].startswith("3.11.")
    path = venv_store.path_of(VENV_KEY)
    assert outcome.tags["versweep.env_path"] == str(path)
    assert outcome.tags["versweep.backend"] == "venv"
    marker = marker_of(venv_store)
    assert outcome.tags["versweep.env_python"] == marker["interpreter"]
    assert Path(marker["interpreter"]).name.startswith("python3.11")
    # The marker: what was asked, what was got, when, how big, and the freeze.
    assert (marker["torch"], marker["python_minor"], marker["key"]) == ("2.13.0", "3.11", VENV_KEY)
    assert marker["torch_reported"] == outcome.env["torch"]
    # ... and the wheel's own CUDA and GPU architectures, for the GPU rules.
    assert marker["cuda_reported"] == outcome.env["cuda"]
    assert marker["archs_reported"] == outcome.env["compiled_archs"]
    assert marker["size_bytes"] > 500 * 2**20 and marker["builder"].startswith("uv ")
    assert "torch==2.13.0" in marker["freeze"].splitlines()
    assert marker["built_at"] <= marker["last_used"]
    # The freeze heads the trial's log (an artifact of its run).
    log = outcome.log_text()
    assert f"venv: environment {VENV_KEY} at {path}" in log
    assert "    torch==2.13.0" in log and f"{path}/bin/python -m workers env" in log
    # ... and is an artifact of its own, environment.txt, for the run's records.
    assert outcome.artifacts["environment.txt"] == marker["freeze"].rstrip("\n") + "\n"


def test_a_tiny_rnn_bench_trial_runs_in_the_environment(venv_store, tmp_path):
    outcome = run_trial(venv_backend(venv_store), spec_of("rnn_bench", TINY_BENCH),
                        log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    assert outcome.env["torch"].split("+")[0] == "2.13.0"
    assert outcome.result_metrics, outcome.result_metrics


def sources_compiled_on_import(python: str, env_root: Path, module: str) -> list[str]:
    """The files of ``env_root`` that ``python`` compiled from source to import ``module``
    (``python -v`` says "code object from <file>.py" for those; "...pyc'" for bytecode),
    with bytecode writing off as a worker on a machine with PYTHONDONTWRITEBYTECODE runs."""
    proc = subprocess.run([python, "-v", "-c", f"import {module}"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                          timeout=120, check=True)
    prefix = "# code object from "
    return [line[len(prefix):] for line in proc.stderr.splitlines()
            if line.startswith(prefix) and line.endswith(".py")
            and line[len(prefix):].startswith(str(env_root))]


def test_an_environment_holds_its_bytecode_so_no_trial_compiles_torch(venv_store, tmp_path):
    """Compiled once at the build: a worker's import of torch (and of torch._dynamo, which
    its optimizers reach) compiles nothing, also where bytecode may not be written."""
    path = venv_store.path_of(VENV_KEY)
    assert marker_of(venv_store)["bytecode"] is True
    python = str(path / "bin" / "python")
    # Tell-tale first: this check does see sources compiled on import.
    plain = tmp_path
    (plain / "fresh_module.py").write_text("X = 1\n")
    compiled = sources_compiled_on_import(python, plain, "sys; sys.path.insert(0, "
                                          f"{str(plain)!r}); import fresh_module")
    assert compiled == [str(plain / "fresh_module.py")]
    assert sources_compiled_on_import(python, path, "torch, torch._dynamo") == []


def test_a_second_start_reuses_the_environment_without_building(venv_store, tmp_path):
    before = marker_of(venv_store)
    inode = venv_store.path_of(VENV_KEY).stat().st_ino
    time.sleep(1.1)  # last_used has whole seconds
    outcome = run_trial(venv_backend(venv_store), spec_of("env", {"device": "cpu"}),
                        log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    after = marker_of(venv_store)
    assert after["built_at"] == before["built_at"] and after["last_used"] > before["last_used"]
    assert venv_store.path_of(VENV_KEY).stat().st_ino == inode
    assert "built now" not in outcome.log_text() and "building" not in outcome.log_text()
    assert venv_store.leftovers() == []


def test_entries_that_differ_only_in_cuda_build_share_one_environment(venv_store):
    backend = venv_backend(venv_store, VENV_IMAGE, VENV_CUDA_IMAGE)
    cpu, cuda = backend.plan(MATRIX[VENV_IMAGE]), backend.plan(MATRIX[VENV_CUDA_IMAGE])
    assert not isinstance(cpu, str) and not isinstance(cuda, str)
    assert cpu.key == cuda.key == VENV_KEY and cpu.path == cuda.path


@pytest.mark.parametrize("image, gpu_ids, expected", [
    (VENV_IMAGE, ["3"], ""),  # a CPU-only entry gets no GPU, as in its image
    (VENV_CUDA_IMAGE, ["0", "2"], "0,2"),
])
def test_the_worker_gets_the_trials_gpus_this_checkout_and_nothing_of_the_host(
        venv_store, tmp_path, monkeypatch, image, gpu_ids, expected):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    backend = venv_backend(venv_store, image)
    handle = backend.start(spec_of("ptb_lm", ENDLESS_LM, image=image), gpu_ids=gpu_ids,
                           log_path=tmp_path / "w.log")
    try:
        assert next(handle.events())["event"] == "env"
        with open(f"/proc/{handle.pid}/environ", "rb") as environ:
            variables = dict(item.decode().split("=", 1) for item in
                             environ.read().split(b"\0") if b"=" in item)
        assert variables["CUDA_VISIBLE_DEVICES"] == expected
        assert variables["PYTHONPATH"] == str(REPO_ROOT)
        assert variables["PYTHONNOUSERSITE"] == "1"
        with open(f"/proc/{handle.pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        assert argv[0].decode() == str(venv_store.path_of(VENV_KEY) / "bin" / "python")
        # While it runs, the trial holds the environment: it cannot be evicted.
        assert venv_store.in_use(VENV_KEY) and not venv_store.evict(VENV_KEY)
    finally:
        handle.close()
    assert not venv_store.in_use(VENV_KEY)
    assert venv_store.problem(VENV_KEY) is None


# ----------------------------------------------------------------- builds: locked, atomic, whole


_BUILDER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from sweeps.envs.store import EnvStore
    from sweeps.grid.matrix import load_matrix
    from sweeps.paths import MATRIX_PATH
    store = EnvStore({envs!r})
    plan = store.plan(load_matrix(MATRIX_PATH)[{image!r}])
    env = store.ensure(plan, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({{"built": env.built, "path": str(env.path)}}), flush=True)
""")


def _builder(tmp_path: Path, envs: Path) -> list[str]:
    script = tmp_path / "build_env.py"
    script.write_text(_BUILDER.format(root=str(REPO_ROOT), envs=str(envs), image=VENV_IMAGE))
    return [sys.executable, str(script)]


def test_a_crashed_build_is_ignored_and_two_processes_build_one_environment_once(tmp_path):
    envs = tmp_path / "envs"
    args = _builder(tmp_path, envs)
    # A build killed half-way leaves only its .building-* directory.
    crashed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(envs.glob(".building-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    crashed.kill()
    crashed.wait()
    store = EnvStore(envs)
    leftovers = store.leftovers()
    assert [p.name.startswith(f".building-{VENV_KEY}-") for p in leftovers] == [True]
    assert store.problem(VENV_KEY) == "not built"  # nothing half-made is taken for an env
    assert store.states() == []

    # Two processes at once: one builds (and deletes the crashed build's leftovers), the
    # other waits for the lock and finds it built.
    both = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results, logs = [], ""
    for proc in both:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
        logs += err
    assert sorted(r["built"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {str(envs / VENV_KEY)}
    assert logs.count(f"{VENV_KEY}: building torch 2.13.0") == 1
    assert logs.count(f"deleting {leftovers[0].name}, left by a build") == 1, logs
    assert store.leftovers() == [] and store.problem(VENV_KEY) is None


@pytest.mark.parametrize("damage", ["marker removed", "torch deleted", "marker disagrees",
                                    "built with less", "built without bytecode"])
def test_a_corrupt_environment_is_rebuilt_and_never_used(venv_store, tmp_path, damage):
    store = EnvStore(tmp_path / "envs")
    linked_copy(venv_store, store)  # a whole environment, as built, then damaged
    assert store.problem(VENV_KEY) is None
    path = store.path_of(VENV_KEY)
    marker = marker_of(store)
    if damage == "marker removed":
        (path / MARKER).unlink()
        expected = "it has no marker"
    elif damage == "torch deleted":
        import shutil

        shutil.rmtree(path / marker["site_packages"] / "torch")
        expected = "torch is missing from it"
    elif damage == "marker disagrees":
        (path / MARKER).write_text(json.dumps(dict(marker, torch="2.12.0")))
        expected = "its marker says torch '2.12.0', not '2.13.0'"
    elif damage == "built without bytecode":  # from a versweep that compiled nothing
        (path / MARKER).write_text(json.dumps({k: v for k, v in marker.items()
                                               if k != "bytecode"}))
        expected = "it was built without compiled bytecode"
    else:  # an environment from a versweep that did not yet install all its torch needs
        (path / MARKER).write_text(json.dumps(dict(marker, requirements=["torch==2.13.0",
                                                                         "numpy<2"])))
        expected = ("it was built with ['torch==2.13.0', 'numpy<2'], and this versweep "
                    "installs ['torch==2.13.0']")
    assert store.problem(VENV_KEY).startswith(expected)
    assert [s.problem for s in store.states()] == [store.problem(VENV_KEY)]

    outcome = run_trial(venv_backend(store), spec_of("env", {"device": "cpu"}),
                        log_dir=tmp_path / "logs")
    assert outcome.status == "ok", outcome.message
    assert outcome.env["torch"].split("+")[0] == "2.13.0"
    log = outcome.log_text()
    assert f"{VENV_KEY}: {expected}" in log and "deleting it and building it again" in log
    assert "built now" in log
    assert store.problem(VENV_KEY) is None and marker_of(store)["built_at"] >= marker["built_at"]
    assert store.leftovers() == []


@pytest.mark.needs("package-index")
def test_an_old_torch_on_python_36_built_with_venv_and_pip_runs_a_trial(tmp_path):
    """The standard library's venv and that environment's pip (what is used where uv cannot
    serve an interpreter), forced here: torch 1.0.1 (PyPI's oldest) on Python 3.6, with the
    NumPy 1.x it imports without declaring it, downloaded by pip from the index."""
    store = EnvStore(tmp_path / "envs", builder="pip")
    plan = store.plan(MATRIX["torch-1.0.1-cu100"])
    if isinstance(plan, str) or plan.interpreter.minor != "3.6":
        pytest.skip(f"no Python 3.6 here for torch 1.0.1: {plan}")
    env = store.ensure(plan)
    assert env.built and env.marker["builder"] == "venv+pip"
    assert env.marker["requirements"] == ["torch==1.0.1", "numpy<2"]
    assert {"torch==1.0.1", "numpy==1.19.5"} <= set(env.marker["freeze"].splitlines())
    backend = VenvBackend({"torch-1.0.1-cu100": MATRIX["torch-1.0.1-cu100"]}, store=store)
    outcome = run_trial(backend, spec_of("rnn_bench", dict(TINY_BENCH, impl="fused"),
                                         image="torch-1.0.1-cu100"), log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    assert (outcome.env["torch"], outcome.env["python"][:4]) == ("1.0.1", "3.6.")


@pytest.mark.needs("package-index")
def test_an_old_torch_on_python_36_built_by_uv_holds_its_bytecode_and_runs_a_trial(tmp_path):
    """uv's own --compile-bytecode fails on Python 3.6; the build compiles with the
    environment's interpreter instead, so an old line's trials compile nothing either."""
    store = EnvStore(tmp_path / "envs")
    plan = store.plan(MATRIX["torch-1.0.1-cu100"])
    if isinstance(plan, str) or plan.interpreter.minor != "3.6":
        pytest.skip(f"no Python 3.6 here for torch 1.0.1: {plan}")
    env = store.ensure(plan)
    assert env.built and env.marker["builder"].startswith("uv ") and env.marker["bytecode"]
    site = plan.path / env.marker["site_packages"]
    assert (site / "torch" / "__pycache__" / "__init__.cpython-36.pyc").is_file()
    assert sources_compiled_on_import(str(plan.path / "bin" / "python"), plan.path,
                                      "torch") == []
    backend = VenvBackend({"torch-1.0.1-cu100": MATRIX["torch-1.0.1-cu100"]}, store=store)
    outcome = run_trial(backend, spec_of("rnn_bench", dict(TINY_BENCH, impl="basic"),
                                         image="torch-1.0.1-cu100"), log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    assert outcome.env["python"].startswith("3.6.")


# ----------------------------------------------------------------- the budget


def test_a_budget_too_small_for_one_environment_is_one_clear_error(tmp_path, monkeypatch,
                                                                   capsys):
    plan = EnvStore(tmp_path / "a").plan(MATRIX[VENV_IMAGE])
    assert not isinstance(plan, str)
    with pytest.raises(BudgetError, match=r"^the environments budget VERSWEEP_ENVS_BUDGET="
                                          r"100m is too small for one environment \(each "
                                          r"takes at least 256 MB\); raise it"):
        EnvStore(tmp_path / "a", budget="100m").ensure(plan)
    assert not (tmp_path / "a" / VENV_KEY).exists()

    # Big enough to try, too small for what the build measures: nothing is kept, and the
    # next attempt knows the size at once.
    small = EnvStore(tmp_path / "b", budget="1g")
    with pytest.raises(BudgetError, match=r"too small for one environment: "
                                          r"torch-2\.13\.0-py3\.11 takes \d.* \(measured\); "
                                          r"raise it to at least \d+g$"):
        small.ensure(small.plan(MATRIX[VENV_IMAGE]))
    assert not small.path_of(VENV_KEY).exists() and small.leftovers() == []
    started = time.monotonic()
    with pytest.raises(BudgetError, match=r"\(measured at its last build\)"):
        small.ensure(small.plan(MATRIX[VENV_IMAGE]))
    assert time.monotonic() - started < 5

    code, out, err = envs_command(["build", VENV_IMAGE], monkeypatch, capsys, tmp_path / "c",
                                  VERSWEEP_ENVS_BUDGET="1m")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("versweep envs: error: the environments budget "
                          "VERSWEEP_ENVS_BUDGET=1m is too small for one environment")
    code, out, err = envs_command(["list"], monkeypatch, capsys, tmp_path / "c",
                                  VERSWEEP_ENVS_BUDGET="lots")
    assert (code, err) == (2, "versweep envs: error: VERSWEEP_ENVS_BUDGET='lots' is not a "
                              "size like '40g' or '512m'\n")


def test_a_prune_with_a_mistaken_budget_or_folder_touches_nothing(tmp_path, monkeypatch,
                                                                   capsys):
    # A budget under any environment's size would evict every one not in use: refused,
    # as a build refuses it (--all, which evicts regardless of the budget, still runs).
    root = tmp_path / "envs"
    kept = root / "torch-2.13.0-py3.11"
    kept.mkdir(parents=True)
    (kept / "versweep-env.json").write_text("{}")
    for budget in ("0", "1m"):
        code, out, err = envs_command(["prune"], monkeypatch, capsys, root,
                                      VERSWEEP_ENVS_BUDGET=budget)
        assert (code, out) == (2, ""), err
        assert err == (f"versweep envs: error: the environments budget VERSWEEP_ENVS_BUDGET="
                       f"{budget} is too small for one environment (each takes at least "
                       "256 MB); raise it, e.g. to 40g\n")
        assert (kept / "versweep-env.json").read_text() == "{}"
    # $VERSWEEP_ENVS_DIR naming a file: one line for every subcommand, the file untouched.
    afile = tmp_path / "envs.txt"
    afile.write_text("mine\n")
    for args in (["list"], ["prune"], ["build", VENV_IMAGE]):
        code, out, err = envs_command(args, monkeypatch, capsys, afile,
                                      VERSWEEP_ENVS_BUDGET="40g")
        assert (code, out) == (2, ""), (args, out, err)
        assert err == (f"versweep envs: error: the environments folder {afile} is a file, "
                       "not a folder; set VERSWEEP_ENVS_DIR to a folder (or unset it for "
                       "~/.cache/versweep/envs)\n"), args
    below = afile / "sub"
    for args in (["list"], ["prune"], ["build", VENV_IMAGE]):
        code, out, err = envs_command(args, monkeypatch, capsys, below,
                                      VERSWEEP_ENVS_BUDGET="40g")
        assert (code, out) == (2, ""), (args, out, err)
        assert err.startswith(f"versweep envs: error: the environments folder {below} is "
                              f"below the file {afile}, not a folder;"), (args, err)
    assert afile.read_text() == "mine\n"
    # A build with a budget under one environment: one line before anything is planned,
    # printed or made; a prune of a folder never made: nothing to do, nothing made.
    fresh = tmp_path / "fresh"
    code, out, err = envs_command(["build", VENV_IMAGE], monkeypatch, capsys, fresh,
                                  VERSWEEP_ENVS_BUDGET="0")
    assert (code, out) == (2, "") and err.count("\n") == 1, (out, err)
    code, out, err = envs_command(["prune"], monkeypatch, capsys, fresh,
                                  VERSWEEP_ENVS_BUDGET="40g")
    assert (code, out, err) == (0, "deleted 0 (0 B); kept 0 environment(s), 0 B of "
                                   "VERSWEEP_ENVS_BUDGET=40g\n", "")
    assert not fresh.exists()


def test_the_least_recently_used_environment_not_in_use_is_evicted(tmp_path):
    store = EnvStore(tmp_path / "envs")
    size = build_or_skip(store).marker["size_bytes"]
    tight = EnvStore(tmp_path / "envs", budget=size + 2**20)
    lease = tight.acquire(tight.plan(MATRIX[VENV_IMAGE]))
    try:  # in use: it stays, and there is no room for another
        with pytest.raises(BudgetError, match=r"is full: .* of environments in use "
                                              rf"\({VENV_KEY}\) leave no room"):
            tight.make_room(size)
        assert tight.prune() == [] and tight.problem(VENV_KEY) is None
    finally:
        lease.release()
    assert tight.make_room(size) == [VENV_KEY]  # no longer used: evicted
    assert not tight.path_of(VENV_KEY).exists() and tight.leftovers() == []

    def state(key, last_used, in_use=False):
        return EnvState(key, Path(key), {"last_used": last_used}, None, in_use)

    order = eviction_order([state("b", "2025-01-02T00:00:00Z"), state("a", "2025-01-03"),
                            state("c", "2025-01-01T00:00:00Z", in_use=True),
                            state("d", None)])
    assert [s.key for s in order] == ["d", "b", "a"]


def test_prune_deletes_leftovers_and_broken_environments_and_all_on_request(tmp_path,
                                                                            monkeypatch, capsys):
    root = tmp_path / "envs"
    build_or_skip(EnvStore(root))
    (root / f".building-{VENV_KEY}-deadbeef" / "bin").mkdir(parents=True)
    (root / "torch-1.0.1-py3.6").mkdir()  # no marker: not whole
    code, out, err = envs_command(["prune"], monkeypatch, capsys, root)
    assert code == 0, err
    assert f"deleted .building-{VENV_KEY}-deadbeef" in out
    assert "deleted torch-1.0.1-py3.6" in out and "not whole: it has no marker" in out
    assert out.splitlines()[-1].startswith("deleted 2 (") and "kept 1 environment(s)" in out
    assert EnvStore(root).problem(VENV_KEY) is None
    code, out, err = envs_command(["prune", "--all"], monkeypatch, capsys, root)
    assert code == 0 and f"deleted {VENV_KEY}" in out and not (root / VENV_KEY).exists()


# ----------------------------------------------------------------- what cannot be built here


@pytest.mark.needs("package-index")
def test_a_torch_on_no_index_is_an_unsupported_reason_before_any_trial_starts(venv_store,
                                                                              tmp_path):
    backend = venv_backend(venv_store, "torch-0.4.1-cu90")
    spec = spec_of("env", {"device": "cpu"}, image="torch-0.4.1-cu90")
    reason = "torch 0.4.1 is on no package index reachable here (PyPI has no torch==0.4.1)"
    assert backend.check(spec, gpu_ids=[]) == reason
    outcome = run_trial(backend, spec, log_dir=tmp_path)
    assert (outcome.status, outcome.message) == ("unsupported", reason)
    assert outcome.decided_before_start and outcome.attempts == 0

    unknown = dataclasses.replace(MATRIX[VENV_IMAGE], name="torch-9.9.9-cpu", torch="9.9.9")
    assert EnvStore(tmp_path / "envs").plan(unknown) == \
        "torch 9.9.9 is on no package index reachable here (PyPI has no torch==9.9.9)"
    # The index's answers are remembered: asked once per torch, Python and platform.
    remembered = json.loads((tmp_path / "envs" / ".wheels.json").read_text())
    assert [v["kind"] for k, v in remembered.items() if k.startswith("torch==9.9.9 ")] \
        == ["missing"]


def test_the_dry_run_shows_which_trials_are_unsupported_here_and_why(venv_store, tmp_path,
                                                                     monkeypatch, capsys):
    from sweeps.execute.sweep import run_sweep

    monkeypatch.setenv("VERSWEEP_ENVS_DIR", str(venv_store.root))
    grid = tmp_path / "old.toml"
    grid.write_text("""
[sweep]
backend = "venv"
device = "cpu"
images = ["torch-0.4.1-cu90", "torch-2.13.0-cpu"]

[[group]]
workload = "env"
""")
    assert run_sweep(str(grid), dry_run=True) == 0
    out = capsys.readouterr().out
    rows = [line.rstrip() for line in out.splitlines() if line[:1].isdigit()]
    old = [row for row in rows if "@ torch-0.4.1-cu90" in row]
    new = [row for row in rows if "@ torch-2.13.0-cpu" in row]
    assert len(old) == len(new) == 1
    assert old[0].endswith("unsupported: no environment here: torch 0.4.1 is on no package "
                           "index reachable here (PyPI has no torch==0.4.1)")
    assert new[0].endswith("CPU 1")  # nothing decided: it runs
    assert "1 of 2 trials are unsupported here, decided before any worker starts" in out


@pytest.mark.needs("package-index")
def test_a_missing_python_falls_back_or_is_an_unsupported_reason(tmp_path, monkeypatch):
    this = os.path.realpath(sys.executable)  # Python 3.11: the only one it may use
    monkeypatch.setenv("VERSWEEP_ENVS_PYTHONS", this)
    store = EnvStore(tmp_path / "envs")
    # The entry's Python is not here: the newest that has a wheel for its torch is used.
    odd = dataclasses.replace(MATRIX[VENV_IMAGE], name="torch-2.13.0-py3.99", python="3.99")
    plan = store.plan(odd)
    assert not isinstance(plan, str)
    assert (plan.key, plan.note) == (VENV_KEY, "Python 3.99 (the matrix's) is not here")
    # torch 1.0.1 has wheels for Python <= 3.7 only, and only 3.11 is here.
    reason = store.plan(MATRIX["torch-1.0.1-cu100"])
    assert reason == ("no Python here has a torch 1.0.1 wheel for linux x86_64 on PyPI (it has "
                      "wheels for cp27m, cp27mu, cp35m, cp36m, cp37m): Python 3.6 (the "
                      "matrix's) is not here; tried 3.11")
    backend = VenvBackend({"torch-1.0.1-cu100": MATRIX["torch-1.0.1-cu100"]}, store=store)
    assert backend.check(spec_of("env", {"device": "cpu"}, image="torch-1.0.1-cu100"),
                         gpu_ids=[]) == reason
    # No interpreter at all.
    monkeypatch.setenv("VERSWEEP_ENVS_PYTHONS", str(tmp_path / "no-such-python"))
    assert store.plan(dataclasses.replace(odd, torch="2.12.0")) == (
        "no Python >= 3.6 found here (PATH, pyenv, uv, conda); install one or name "
        "interpreters in VERSWEEP_ENVS_PYTHONS")


def test_a_workload_the_entrys_torch_cannot_run_is_unsupported_before_it_starts(venv_store):
    backend = venv_backend(venv_store, "torch-1.13.1-cu116")
    spec = spec_of("rnn_bench", dict(TINY_BENCH, impl="compiled"), image="torch-1.13.1-cu116")
    # Decided from the entry's torch, without building its environment.
    assert backend.check(spec, gpu_ids=[]) == \
        "torch.compile needs torch>=2.0 (torch-1.13.1-cu116 has torch 1.13.1)"
    assert not venv_store.path_of("torch-1.13.1-py3.10").exists()


# ----------------------------------------------------------------- sweeps and the command


def test_preflight_checks_the_matrix_and_uv_and_builds_nothing(tmp_path, monkeypatch):
    sweep = load_sweep("smoke", ["sweep.backend=venv", f'sweep.images=["{VENV_IMAGE}"]'])
    assert sweep.backend == "venv" and [i.name for i in sweep.images] == [VENV_IMAGE]
    backend = get_backend("venv", sweep)
    assert isinstance(backend, VenvBackend) and set(backend.images) == {VENV_IMAGE}
    monkeypatch.setenv("VERSWEEP_ENVS_DIR", str(tmp_path / "envs"))
    backend.preflight(sweep)
    assert list((tmp_path / "envs").iterdir()) == [tmp_path / "envs" / ".locks"]
    with pytest.raises(UserError, match=r"sweep 'smoke' names torch-2\.13\.0-cpu; name matrix "):
        VenvBackend({}).preflight(sweep)
    monkeypatch.setenv("VERSWEEP_UV", str(tmp_path / "no-uv"))
    with pytest.raises(UserError, match=r"builds environments with uv, which is not installed "
                                        r"here: pip install uv"):
        get_backend("venv", sweep).preflight(sweep)


@pytest.mark.needs("package-index")
def test_envs_list_shows_each_entry_its_environment_or_why_not(venv_store, monkeypatch, capsys):
    code, out, err = envs_command(["list", VENV_IMAGE, VENV_CUDA_IMAGE, "torch-0.4.1-cu90",
                                   "torch-1.13.1-cu116"], monkeypatch, capsys, venv_store.root)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"environments in {venv_store.root}: 1 built, 4.")
    assert "of VERSWEEP_ENVS_BUDGET=100g" in lines[0] and "not shared with uv's cache" in lines[0]
    assert lines[1].split() == ["IMAGE", "TORCH", "PYTHON", "SIZE", "LAST", "USED",
                                "ENVIRONMENT"]
    rows = {line.split()[0]: line for line in lines[2:]}
    path = str(venv_store.path_of(VENV_KEY))
    for name in (VENV_IMAGE, VENV_CUDA_IMAGE):
        words = rows[name].split()
        assert words[1:3] == ["2.13.0", marker_of(venv_store)["python"]]
        assert words[3:5] == [words[3], "GB"] and words[-1] == path and "UTC" in rows[name]
    assert rows["torch-0.4.1-cu90"].endswith(
        "cannot be built here: torch 0.4.1 is on no package index reachable here (PyPI has "
        "no torch==0.4.1)")
    assert "torch-1.13.1-py3.10 (not built; Python from " in rows["torch-1.13.1-cu116"]


@pytest.mark.needs("package-index")
def test_envs_build_says_what_it_did_and_what_cannot_be_built(venv_store, monkeypatch, capsys):
    code, out, err = envs_command(["build", VENV_IMAGE, VENV_CUDA_IMAGE, "torch-0.4.1-cu90"],
                                  monkeypatch, capsys, venv_store.root)
    assert code == 1, err  # one entry cannot be built here
    lines = out.splitlines()
    assert lines[0] == "[1/3] torch-0.4.1-cu90: cannot be built here: torch 0.4.1 is on no " \
                       "package index reachable here (PyPI has no torch==0.4.1)"
    assert lines[1].startswith(f"[2/3] {VENV_CUDA_IMAGE}: {VENV_KEY}, Python 3.11.")
    assert lines[2].startswith(f"[2/3] {VENV_CUDA_IMAGE}: {VENV_KEY} is already built (")
    assert lines[3] == f"[3/3] {VENV_IMAGE}: shares {VENV_KEY} (already built)"
    assert lines[4].startswith("done in ") and lines[4].endswith(
        ": 0 built, 1 already built, 1 cannot be built here, 0 failed")


def test_envs_command_user_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    for args, message in [
        (["build", "torch-2.13.0-cpuu"], "image 'torch-2.13.0-cpuu' is not in "
                                         "images/matrix.toml (did you mean 'torch-2.13.0-cpu'?)"),
        (["build"], "nothing to build: name matrix entries, all / cuda / cpu, or --grid"),
        (["build", "--grid", "nosuch"], "grid 'nosuch': no such grid"),
        (["frob"], "argument COMMAND: invalid choice: 'frob'"),
    ]:
        code, out, err = envs_command(args, monkeypatch, capsys, tmp_path / "envs")
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"versweep envs: error: {message}"), err
    assert not (tmp_path / "envs").exists()  # nothing made


def test_versweep_envs_is_a_command_of_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys; from sweeps.cli import main; "
                           "sys.exit(main())", "envs", "prune"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120,
                          env=dict(os.environ, VERSWEEP_ENVS_DIR=str(tmp_path / "envs")))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "deleted 0 (0 B); kept 0 environment(s), 0 B of " \
                          "VERSWEEP_ENVS_BUDGET=100g\n"


def test_an_environment_installs_what_its_torchs_import_needs_undeclared():
    from sweeps.envs.store import requirements

    assert requirements("1.0.1") == ["torch==1.0.1", "numpy<2"]
    assert requirements("1.10.0") == ["torch==1.10.0", "numpy<2", "setuptools<70"]
    assert requirements("1.11.0") == ["torch==1.11.0", "numpy<2", "setuptools<70"]
    assert requirements("1.12.1") == ["torch==1.12.1", "numpy<2", "setuptools<70"]
    assert requirements("2.1.0") == ["torch==2.1.0", "numpy<2", "setuptools<70"]
    assert requirements("2.2.2") == ["torch==2.2.2", "numpy<2"]
    assert requirements("2.3.1") == ["torch==2.3.1"]
    assert requirements("2.15.0") == ["torch==2.15.0"]


def test_on_a_gpu_the_rules_apply_to_the_wheel_the_environment_really_holds():
    """PyPI's torch 1.10.0 is a CUDA 10.2 build for sm_37..sm_70 whatever the entry says:
    on an sm_80 GPU its trials are unsupported, with that reason, before any worker."""
    from sweeps.execute.backends.venv import wheel_image
    from sweeps.plan.compat import Gpu, unsupported_reason

    entry = MATRIX["torch-1.10.0-cu113"]
    marker = {"cuda_reported": "10.2", "archs_reported": ["sm_37", "sm_50", "sm_60", "sm_70"]}
    wheel = wheel_image(entry, marker)
    assert (wheel.cuda, wheel.archs, wheel.ptx) == ("10.2", ("sm_37", "sm_50", "sm_60",
                                                             "sm_70"), ())
    a100 = Gpu(index="0", name="NVIDIA A100-SXM4-80GB", capability=(8, 0), driver="550.54")
    v100 = Gpu(index="0", name="Tesla V100-SXM2-16GB", capability=(7, 0), driver="550.54")
    config = {"device": "cuda", "bench": "1x320-ce-short", "impl": "cudnn"}
    reason = unsupported_reason(wheel, "rnn_bench", config, [a100])
    assert reason is not None and "sm_80" in reason and entry.name in reason
    assert unsupported_reason(wheel, "rnn_bench", config, [v100]) is None
    # Where the wheel's torch did not say (torch < 1.7), the entry's own lists stand.
    old = MATRIX["torch-1.4.0-cu101"]
    assert wheel_image(old, {"cuda_reported": "10.1", "archs_reported": None}).archs \
        == old.archs


@pytest.mark.needs("package-index")
def test_envs_build_with_an_address_builds_on_every_node_of_the_cluster(tmp_path):
    """Two real Ray nodes, each with its own environment directory: one pinned task per node
    builds there, and each node's report comes back under its name."""
    from loopback_cluster import cluster_env, loopback_cluster

    from sweeps.envs.store import MARKER

    dirs = {"head": tmp_path / "head-envs", "node": tmp_path / "node-envs"}
    with loopback_cluster() as cluster:
        cluster.start_head(num_cpus=1, resources={}, dashboard=False,
                           env={"VERSWEEP_ENVS_DIR": str(dirs["head"])})
        cluster.add_node(num_cpus=1, resources={}, env={"VERSWEEP_ENVS_DIR": str(dirs["node"])})
        done = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "envs", "build", VENV_IMAGE, "--address",
             cluster.address], env=cluster_env(), capture_output=True, text=True,
            timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    heads = [line for line in done.stdout.splitlines() if line.startswith("== node ")]
    assert len(heads) == 2 and all(line.endswith(": ok") for line in heads)
    assert done.stdout.rstrip().endswith("2 node(s): every environment built")
    for where in dirs.values():
        marker = json.loads((where / VENV_KEY / MARKER).read_text())
        assert marker["torch"] == "2.13.0"


def test_envs_build_address_errors_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "envs", "build", VENV_IMAGE,
                           "--address", "http://127.0.0.1:8265"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "VERSWEEP_ENVS_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "versweep envs: error: --address 'http://127.0.0.1:8265': is a web address (the "
        "dashboard's, for Ray Jobs); give the head's GCS address, e.g. HEAD:6379, or "
        "ray://HEAD:10001"]


def test_an_environment_of_an_older_marker_format_is_rebuilt_not_trusted(venv_store):
    """A format-1 marker has no wheel CUDA or architectures to judge GPUs by."""
    from sweeps.envs.store import MARKER

    path = venv_store.path_of(VENV_KEY)
    venv_store.ensure(venv_store.plan(MATRIX[VENV_IMAGE]))
    marker = json.loads((path / MARKER).read_text())
    old = {k: v for k, v in marker.items() if k not in ("cuda_reported", "archs_reported")}
    old["format"] = 1
    (path / MARKER).write_text(json.dumps(old))
    assert venv_store.problem(VENV_KEY) == "its marker says format 1, not 2"
    env = venv_store.ensure(venv_store.plan(MATRIX[VENV_IMAGE]))
    assert env.built and env.marker["format"] == 2 and "archs_reported" in env.marker


# ----------------------------------------------------------------- a build on the console


def slow_uv(tmp_path: Path, seconds: float) -> str:
    """A uv whose package installs are silent for ``seconds`` first, as uv is while it
    downloads a large wheel without a terminal to draw on."""
    script = tmp_path / "slow-uv"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        if [ "$1" = pip ] && [ "$2" = install ] && [[ " $* " != *" --dry-run "* ]]; then
            sleep {seconds}
        fi
        exec {EnvStore(tmp_path / "unused").uv} "$@"
        """))
    script.chmod(0o755)
    return str(script)


def test_build_progress_says_the_stores_lines_at_once_and_uvs_in_a_heartbeat():
    from sweeps.envs.build import BuildProgress

    now = [0.0]
    lines: list[str] = []
    build = BuildProgress("torch-1.4.0-py3.6", lines.append, every=5, clock=lambda: now[0])
    key = "torch-1.4.0-py3.6"
    build(f"{key}: building torch 1.4.0 with Python 3.6.15 (/usr/bin/python3.6) in .building-x")
    build(f"{key}:   Resolved 12 packages in 2.1s")
    build(f"{key}:   Downloading torch (766.2MiB)")  # then uv says nothing for minutes
    now[0] = 14.0
    build.progress.tick()
    now[0] = 45.0
    build.progress.tick()
    build(f"{key}:    + torch==1.4.0")
    build("evicted torch-1.0.1-py3.6 (1.4 GB, last used 2026-11-01 10:00:00 UTC)")
    build(f"{key}: verifying (python -m workers env)")
    assert lines == [
        f"{key}: building torch 1.4.0 with Python 3.6.15 (/usr/bin/python3.6) in .building-x",
        f"{key}: still building, 45 s (last: Downloading torch (766.2MiB))",
        "evicted torch-1.0.1-py3.6 (1.4 GB, last used 2026-11-01 10:00:00 UTC)",
        f"{key}: verifying (python -m workers env)",
    ]
    # `versweep envs build` also says uv's lines, but its per-package ones.
    echoed: list[str] = []
    cli = BuildProgress(key, lambda line: None, tools=echoed.append, clock=lambda: now[0])
    for said in ("  Resolved 12 packages in 2.1s", "  Downloading torch (766.2MiB)",
                 "   + torch==1.4.0"):
        cli(f"{key}: {said}")
    assert echoed == [f"{key}:   Resolved 12 packages in 2.1s"]
    # Another process builds it: this one says it waits, and how long.
    waits: list[str] = []
    waiting = BuildProgress(key, waits.append, every=5, clock=lambda: now[0])
    waiting(f"{key}: waiting for another process that is building or checking it")
    now[0] += 20
    waiting.progress.tick()
    assert waits[-1] == f"{key}: still waiting, 20 s"


def test_a_trials_build_says_its_progress_on_the_console_and_all_of_it_in_the_log(
        tmp_path, monkeypatch):
    # uv is silent for 4 s while it installs; lines at most every 0.5 s, a heartbeat
    # after 1.5 s of silence.
    monkeypatch.setenv("VERSWEEP_UV", slow_uv(tmp_path, 4))
    monkeypatch.setenv("VERSWEEP_PROGRESS_EVERY_S", "0.5")
    backend = venv_backend(EnvStore(tmp_path / "envs", budget="100g"))
    console: list[str] = []
    backend.console = console.append
    spec = spec_of("rnn_bench", TINY_BENCH)
    log_path = tmp_path / "trial.log"
    try:
        handle = backend.start(spec, gpu_ids=[], log_path=log_path)
    except UserError as exc:
        if "cannot be reached" in str(exc):
            need("package-index")
        raise
    handle.wait()
    handle.close()

    assert console[0].startswith(f"{VENV_KEY}: building torch 2.13.0 with Python 3.11"), console
    beats = [line for line in console if line.startswith(f"{VENV_KEY}: still building, ")]
    assert beats and all(" s (last: " in line for line in beats), console
    assert f"{VENV_KEY}: verifying (python -m workers env)" in console
    assert console[-1].startswith(f"{VENV_KEY}: built in "), console
    assert not any(" + " in line or "Installed" in line for line in console), console
    log = log_path.read_text()
    assert "Installed" in log and " + torch==2.13.0" in log  # every line of uv's, logged
    assert "still building" not in log  # the log has the lines themselves, not heartbeats

    console.clear()  # built now: a second trial's start says nothing on the console
    again = backend.start(spec, gpu_ids=[], log_path=tmp_path / "again.log")
    again.wait()
    again.close()
    assert console == []


def test_a_venv_sweep_says_its_environment_build_on_the_drivers_console(tmp_path, ray_tmp):
    # The trial runs in a Ray actor whose output never reaches the driver's console
    # (log_to_driver=False); its build's lines come through the sweep's relay.
    from sweeping import versweep

    grid = tmp_path / "tiny-venv.toml"
    config = "".join(f"config.{key} = {json.dumps(value)}\n"
                     for key, value in TINY_BENCH.items() if key != "device")
    grid.write_text(f'[sweep]\nname = "tiny-venv"\nbackend = "venv"\ndevice = "cpu"\n'
                    f'images = ["{VENV_IMAGE}"]\n[[group]]\nworkload = "rnn_bench"\n{config}')
    done = versweep(["--grid", str(grid)], cwd=tmp_path, ray_tmp=ray_tmp,
                    VERSWEEP_ENVS_DIR=str(tmp_path / "envs"),
                    VERSWEEP_UV=slow_uv(tmp_path, 4), VERSWEEP_PROGRESS_EVERY_S="0.5")
    if done.returncode != 0 and "cannot be reached" in done.stdout + done.stderr:
        need("package-index")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    said = [line for line in lines if line.startswith(f"versweep: {VENV_KEY}: ")]
    assert said[0].startswith(f"versweep: {VENV_KEY}: building torch 2.13.0 with Python"), \
        done.stdout
    assert any(line.startswith(f"versweep: {VENV_KEY}: still building, ") for line in said)
    assert said[-1].startswith(f"versweep: {VENV_KEY}: built in "), said
    assert "trials: 1 ok" in done.stdout
    # Said before the sweep's end, not after it.
    assert lines.index(said[-1]) < lines.index("sweep finished")


def test_a_trial_that_waits_for_another_build_of_its_environment_says_so(venv_store,
                                                                        monkeypatch):
    import threading

    from sweeps.envs import store as store_module

    monkeypatch.setattr(store_module, "WAIT_SAY_S", 0.2)
    plan = venv_store.plan(MATRIX[VENV_IMAGE])
    other = store_module._Flock(venv_store._lock_path(VENV_KEY, "build"))
    assert other.acquire()  # "another process" builds it (a flock of its own open file)
    threading.Timer(1.0, other.release).start()
    lines: list[str] = []
    env = venv_store.ensure(plan, progress=lines.append)
    assert not env.built
    assert lines == [f"{VENV_KEY}: waiting for another process that is building or checking it"]

    lines.clear()  # a lock nobody holds: not a word
    venv_store.ensure(plan, progress=lines.append)
    assert lines == []

"""A real MLflow store filled the way a sweep fills it, for the analysis and report tests.

Everything is written through sweeps.records.store.SweepRecords, the module a sweep
writes with: open_sweep with a Sweep, start_trial with TrialSpecs, log_event with
the worker protocol's env / metric / result / unsupported / error events,
finish_trial with a status, extra tags and samples, close_sweep with the counts.
Only the figures are made up, and they are made up so that a person can check
the report's numbers by hand:

* every rnn_bench repeat holds 21 per-batch times spread evenly around its
  median (median * (1 + spread * k / 10), k = -10..10, shuffled), so each
  repeat's median is known exactly; three repeats per image sit at
  median * (0.998, 1, 1.002), so the median of repeat medians is the median;
* the ptb_lm runs have fixed test perplexities per seed (PTB_TEST_PERPLEXITY).

The "versions" sweep (docker backend, one GPU node) over four images of images/matrix.toml:

    ms per batch        1x320-ce-long  1x320-ce-long  4x320-ce-long  4x320-ctc-long  ptb_lm small
                        cudnn          fused          cudnn          cudnn           test ppl
    torch-0.4.1-cu90    unsupported: no kernels for the GPU, decided by backend.check (all)
    torch-1.13.1-cu116  80.0           170.0          540.0          600.0           115.6 base
    torch-2.0.1-cu118   60.0 faster    204.0 slower   529.2 ~ (-2%)  660 ~ (noisy)   115.6 same
    torch-2.13.0-cu130  81.2 ~ (+1.5%) unsupported    failed (x3)    diverged #0,    121.4 differs
                                       (worker)                      590.0 #1 #2

plus, in the same sweep, a trial interrupted by Ctrl-C (KILLED: not a decision)
and a superseded run (KILLED, versweep.superseded=true), which a report must
not count; one torch-2.0.1 repeat of 4x320-ce-long ran on another GPU model
(a provenance warning). An older "versions" sweep with one trial comes first.

The "hparams" sweep is an Optuna search (the real sweeps/grids/hparams.toml) on
the local image: 5 trials ok, 2 stopped early by ASHA, 1 diverged, with its
study in optuna.db next to mlflow.db, as sweeps/run.py keeps it; 8 of the
grid's num_samples = 20, so its report must say that 12 were never decided.

write_interrupted_sweep (not part of fill_store: a test adds it when it needs it)
writes a grid sweep stopped by Ctrl-C part-way through its plan.

Two more experiments exist for the error paths: "unfinished" (a sweep whose only
trial is still running and one that was interrupted) and "not-a-sweep" (a run
that versweep did not write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.grid.load import load_sweep
from sweeps.grid.spec import Sweep, TrialSpec
from sweeps.records.store import SweepRecords
from workers.workloads import resolve_workload_config

ROOT = Path(__file__).resolve().parent.parent

VERSIONS = "versions"
HPARAMS = "hparams"
UNFINISHED = "unfinished"
NOT_A_SWEEP = "not-a-sweep"

OLD, BASE, MID, NEW = ("torch-0.4.1-cu90", "torch-1.13.1-cu116", "torch-2.0.1-cu118",
                       "torch-2.13.0-cu130")
IMAGES = (OLD, BASE, MID, NEW)
REPEATS = 3
SAMPLES_PER_REPEAT = 21

# (bench, impl) -> image -> either the median ms/batch of every repeat (a float, with the
# repeats at * 0.998, 1, 1.002), an explicit list of repeat medians, or a status per repeat.
SPEED = {
    ("1x320-ce-long", "cudnn"): {BASE: 80.0, MID: 60.0, NEW: 81.2},
    ("1x320-ce-long", "fused"): {BASE: 170.0, MID: 204.0, NEW: "unsupported"},
    ("4x320-ce-long", "cudnn"): {BASE: 540.0, MID: 529.2, NEW: "failed"},
    ("4x320-ctc-long", "cudnn"): {BASE: 600.0, MID: [420.0, 660.0, 900.0],
                                  NEW: ["diverged", 590.0, 590.0]},
}
# The spread of the 21 values of one repeat around its median (+-1%; the noisy one +-5%).
SPREAD = 0.01
NOISY_SPREAD = 0.05

# Test perplexity per seed (repeat 0, 1, 2) of ptb_lm small on each image that runs it.
PTB_TEST_PERPLEXITY = {
    BASE: [115.2, 116.0, 115.6],
    MID: [115.5, 115.9, 115.4],
    NEW: [121.0, 121.8, 121.3],
}
PTB_WORDS_PER_SECOND = {BASE: 21000.0, MID: 22500.0, NEW: 24000.0}
PTB_EPOCHS = 4

GPU = "NVIDIA H100 80GB HBM3"
OTHER_GPU = "NVIDIA A100-SXM4-80GB"
DRIVER = "580.65.06"
HOST = "gpu-node-1"
OTHER_HOST = "gpu-node-2"
OLD_REASON = ("image torch-0.4.1-cu90 has no kernels for this node's GPU (NVIDIA H100 80GB "
              "HBM3, sm_90): it was built for sm_35, sm_50, sm_60, sm_61, sm_70")
FUSED_REASON = ("impl 'fused' with deterministic=true: this torch has no deterministic "
                "nn.LSTMCell backward on CUDA")
FAILED_MESSAGE = "worker exited with code -11 (SIGSEGV)\nFatal Python error: Segmentation fault"
DIVERGED_MESSAGE = "loss became nan at batch 37"

# What the images are, as their env events would say.
IMAGE_ENV = {
    BASE: {"torch": "1.13.1+cu116", "cuda": "11.6", "cudnn": 8302, "python": "3.10.8"},
    MID: {"torch": "2.0.1+cu118", "cuda": "11.8", "cudnn": 8700, "python": "3.10.11"},
    NEW: {"torch": "2.13.0+cu130", "cuda": "13.0", "cudnn": 91200, "python": "3.12.9"},
}

# The search sweep: 8 sampled configs and how each ended.
SEARCH_OUTCOMES = ("ok", "ok", "stopped", "ok", "diverged", "ok", "stopped", "ok")
SEARCH_EPOCHS = 6


@dataclass
class WrittenTrial:
    """One child run as written: what a report should find for it."""

    run_id: str
    name: str
    workload: str
    image: str
    repeat: int
    status: str
    decided: bool  # False: the run ended KILLED and must not be counted
    bench: str | None = None
    impl: str | None = None
    message: str = ""
    samples_ms: list[float] | None = None  # rnn_bench ok: the per-batch times in ms
    metrics: dict[str, float] = field(default_factory=dict)  # the result metrics
    config: dict = field(default_factory=dict)


@dataclass
class WrittenSweep:
    experiment: str
    parent_run_id: str
    trials: list[WrittenTrial]

    @property
    def decided(self) -> list[WrittenTrial]:
        return [t for t in self.trials if t.decided]

    def speed_repeats(self, bench: str, impl: str, image: str) -> list[list[float]]:
        """The per-batch ms of every ok repeat of one bench/impl/image, repeat order."""
        return [t.samples_ms for t in sorted(self.decided, key=lambda t: t.repeat)
                if t.bench == bench and t.impl == impl and t.image == image
                and t.status == "ok" and t.samples_ms is not None]

    def test_perplexities(self, image: str) -> list[float]:
        return [t.metrics["test_perplexity"] for t in sorted(self.decided, key=lambda t: t.repeat)
                if t.workload == "ptb_lm" and t.image == image and t.status == "ok"]


@dataclass
class FilledStore:
    """Where the store is and what was written into it."""

    directory: Path
    tracking_uri: str
    versions: WrittenSweep  # the newest sweep of experiment "versions"
    older_versions: WrittenSweep  # the first, smaller sweep of "versions"
    search: WrittenSweep  # experiment "hparams"
    unfinished_parent_run_id: str


# --------------------------------------------------------------------------- the data


def repeat_samples_ms(median: float, spread: float, seed: int) -> list[float]:
    """21 per-batch times whose median is exactly ``median``, in a shuffled order."""
    values = [median * (1.0 + spread * k / 10.0) for k in range(-10, 11)]
    random.Random(seed).shuffle(values)
    return values


def _bench_result(samples_ms: list[float], batch_size: int) -> dict[str, float]:
    """The result metrics the rnn_bench worker computes from its per-batch times."""
    ordered = sorted(samples_ms)
    n = len(ordered)
    median = statistics.median(ordered)
    return {
        "ms_per_batch_mean": statistics.fmean(ordered),
        "ms_per_batch_median": median,
        "ms_per_batch_p10": ordered[int(0.1 * (n - 1))],
        "ms_per_batch_p90": ordered[int(0.9 * (n - 1))],
        "ms_per_batch_std": statistics.pstdev(ordered),
        "ms_per_batch_min": ordered[0],
        "ms_per_batch_max": ordered[-1],
        "sequences_per_second": batch_size / (median / 1000.0),
        "batches_timed": float(n),
        "parameters": 572800.0,
    }


def _digest(image: str) -> str:
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def _env_event(image: str, workload: str, config: dict, *, gpu: str = GPU,
               host: str = HOST) -> dict:
    facts = IMAGE_ENV[image] if image in IMAGE_ENV else {
        "torch": "2.13.0+cpu", "cuda": None, "cudnn": None, "python": "3.11.7"}
    on_gpu = facts["cuda"] is not None
    event = {
        "v": 1, "event": "env", "workload": workload, "config": config,
        "python": facts["python"], "torch": facts["torch"], "cuda": facts["cuda"],
        "cudnn": facts["cudnn"], "device": "cuda:0" if on_gpu else "cpu",
        "gpu": gpu if on_gpu else None,
        "capability": ("8.0" if gpu == OTHER_GPU else "9.0") if on_gpu else None,
        "driver": DRIVER if on_gpu else None,
        "arch_list": ["sm_80", "sm_90"] if on_gpu else None,
        "host": host if on_gpu else "vm", "platform": "Linux-6.8.0-x86_64-with-glibc2.35",
        "flags": {"cudnn_benchmark": False, "cudnn_deterministic": False,
                  "cudnn_enabled": True, "deterministic_algorithms": False,
                  "float32_matmul_precision": "highest", "num_threads": 8,
                  "tf32_cudnn": False, "tf32_matmul": False},
    }
    if workload == "ptb_lm":
        event["data"] = {"synthetic": True,
                         "source": "synthetic(words=60000, vocab=1000, seed=20170611)"}
    return event


def _sweep(name: str, text: str, trials: tuple[TrialSpec, ...], *, backend: str = "docker",
           path: str | None = None) -> Sweep:
    return Sweep(name=name, path=Path(path or f"/home/me/grids/{name}.toml"), text=text,
                 description=f"analysis test sweep '{name}'", backend=backend, device="auto",
                 trial_timeout_s=3600.0, retries=1, max_concurrent=1, trials=trials)


def _spec(workload: str, image: str, raw: dict, repeat: int) -> TrialSpec:
    config = resolve_workload_config(workload, {**raw, "seed": 1234 + repeat})
    return TrialSpec(workload=workload, image=image, config=tuple(sorted(config.items())),
                     repeat=repeat, group=0 if workload == "ptb_lm" else 1)


def _bench_config(bench: str, impl: str) -> dict:
    return {"bench": bench, "impl": impl, "deterministic": impl == "fused"}


PTB_CONFIG = {"preset": "small", "max_epochs": PTB_EPOCHS}


# --------------------------------------------------------------------------- writing


def _write_bench_trial(records: SweepRecords, parent: str, spec: TrialSpec, image: str,
                       outcome: object, spread: float, *, gpu: str = GPU,
                       host: str = HOST) -> WrittenTrial:
    cfg = spec.config_dict
    run_id = records.start_trial(parent, spec)
    written = WrittenTrial(run_id=run_id, name=spec.name, workload="rnn_bench", image=image,
                           repeat=spec.repeat, status="ok", decided=True, bench=cfg["bench"],
                           impl=cfg["impl"], config=cfg)
    digest_tags = {"versweep.image_digest": _digest(image),
                   "versweep.image_id": _digest(image + ":id"), "versweep.attempts": "1"}
    if image == OLD:
        # backend.check refused it: no worker ran, so there is no env event.
        written.status, written.message = "unsupported", OLD_REASON
        records.finish_trial(run_id, "unsupported", message=OLD_REASON,
                             log_text=f"not started: unsupported on this node: {OLD_REASON}\n",
                             extra_tags={"versweep.decided_by": "backend.check",
                                         "versweep.reason": OLD_REASON,
                                         "versweep.attempts": "0"})
        return written
    records.log_event(run_id, _env_event(image, "rnn_bench", cfg, gpu=gpu, host=host))
    if outcome == "unsupported":
        written.status, written.message = "unsupported", FUSED_REASON
        records.log_event(run_id, {"v": 1, "event": "unsupported", "reason": FUSED_REASON})
        records.finish_trial(run_id, "unsupported", message=FUSED_REASON,
                             log_text="unsupported\n", extra_tags=digest_tags)
        return written
    if outcome == "failed":
        written.status, written.message = "failed", FAILED_MESSAGE
        records.log_event(run_id, {"v": 1, "event": "metric", "step": 50,
                                   "metrics": {"chunk_ms_per_batch_median": 500.0}})
        records.finish_trial(run_id, "failed", message=FAILED_MESSAGE,
                             log_text=FAILED_MESSAGE + "\n",
                             extra_tags={**digest_tags, "versweep.attempts": "2"})
        return written
    if outcome == "diverged":
        written.status, written.message = "diverged", DIVERGED_MESSAGE
        records.log_event(run_id, {"v": 1, "event": "error", "kind": "diverged",
                                   "message": DIVERGED_MESSAGE})
        records.finish_trial(run_id, "diverged", message=DIVERGED_MESSAGE,
                             log_text=DIVERGED_MESSAGE + "\n", extra_tags=digest_tags)
        return written
    assert isinstance(outcome, float)
    samples_ms = repeat_samples_ms(outcome, spread, seed=int(spec.key[:8], 16))
    for step, chunk in ((50, samples_ms[:10]), (100, samples_ms[10:])):
        records.log_event(run_id, {"v": 1, "event": "metric", "step": step, "metrics": {
            "chunk_ms_per_batch_median": statistics.median(chunk), "loss": 2.0 - step / 1000}})
    result = _bench_result(samples_ms, cfg["batch_size"])
    records.log_event(run_id, {"v": 1, "event": "result", "metrics": result,
                               "samples": [ms / 1000.0 for ms in samples_ms]})
    records.finish_trial(run_id, "ok", log_text="ok\n", extra_tags=digest_tags)
    written.samples_ms, written.metrics = samples_ms, result
    return written


def _write_ptb_trial(records: SweepRecords, parent: str, spec: TrialSpec,
                     image: str) -> WrittenTrial:
    cfg = spec.config_dict
    run_id = records.start_trial(parent, spec)
    written = WrittenTrial(run_id=run_id, name=spec.name, workload="ptb_lm", image=image,
                           repeat=spec.repeat, status="ok", decided=True, config=cfg)
    if image == OLD:
        written.status, written.message = "unsupported", OLD_REASON
        records.finish_trial(run_id, "unsupported", message=OLD_REASON,
                             extra_tags={"versweep.decided_by": "backend.check",
                                         "versweep.reason": OLD_REASON})
        return written
    records.log_event(run_id, _env_event(image, "ptb_lm", cfg))
    test = PTB_TEST_PERPLEXITY[image][spec.repeat]
    speed = PTB_WORDS_PER_SECOND[image] + 100.0 * spec.repeat
    for epoch in range(1, PTB_EPOCHS + 1):
        valid = test * (1.0 + 0.8 / epoch) + 4.0
        records.log_event(run_id, {"v": 1, "event": "metric", "step": epoch, "metrics": {
            "train_perplexity": valid * 0.7, "valid_perplexity": valid,
            "words_per_second": speed, "learning_rate": 1.0, "epoch_seconds": 40.0}})
    best_valid = test * (1.0 + 0.8 / PTB_EPOCHS) + 4.0
    result = {"test_perplexity": test, "best_valid_perplexity": best_valid,
              "words_per_second": speed, "epochs_run": float(PTB_EPOCHS)}
    records.log_event(run_id, {"v": 1, "event": "result", "metrics": result})
    records.finish_trial(run_id, "ok", log_text="ok\n",
                         extra_tags={"versweep.image_digest": _digest(image)})
    written.metrics = result
    return written


def _summary(trials: list[WrittenTrial]) -> dict[str, int]:
    counts = dict.fromkeys(("ok", "unsupported", "failed", "diverged", "stopped"), 0)
    for trial in trials:
        if trial.decided:
            counts[trial.status] += 1
    return counts


def write_versions_sweep(records: SweepRecords) -> WrittenSweep:
    """The newest "versions" sweep of the table in the module docstring."""
    specs: list[tuple[TrialSpec, str, object, float]] = []
    for (bench, impl), per_image in SPEED.items():
        for image in IMAGES:
            planned = per_image.get(image, "unsupported")
            for repeat in range(REPEATS):
                spec = _spec("rnn_bench", image, _bench_config(bench, impl), repeat)
                if isinstance(planned, float):
                    outcome: object = planned * (0.998, 1.0, 1.002)[repeat]
                elif isinstance(planned, list):
                    outcome = planned[repeat]
                else:
                    outcome = planned
                spread = NOISY_SPREAD if isinstance(planned, list) and image == MID else SPREAD
                specs.append((spec, image, outcome, spread))
    ptb_specs = [(_spec("ptb_lm", image, PTB_CONFIG, repeat), image)
                 for image in IMAGES for repeat in range(REPEATS)]
    grid_text = (ROOT / "sweeps" / "grids" / "versions.toml").read_text()
    sweep = _sweep(VERSIONS, grid_text, tuple(s for s, *_ in specs) +
                   tuple(s for s, _ in ptb_specs))
    parent = records.open_sweep(sweep, resume=False)
    trials = []
    for spec, image, outcome, spread in specs:
        other_gpu = (image == MID and spec.repeat == 2
                     and spec.config_dict["bench"] == "4x320-ce-long")
        trials.append(_write_bench_trial(
            records, parent, spec, image, outcome, spread,
            gpu=OTHER_GPU if other_gpu else GPU, host=OTHER_HOST if other_gpu else HOST))
    for spec, image in ptb_specs:
        trials.append(_write_ptb_trial(records, parent, spec, image))

    # Interrupted by Ctrl-C: the run ends KILLED (not decided) and --resume would rerun it.
    spec = _spec("rnn_bench", MID, _bench_config("1x320-ce-long", "cudnn"), REPEATS)
    run_id = records.start_trial(parent, spec)
    records.log_event(run_id, _env_event(MID, "rnn_bench", spec.config_dict))
    records.finish_trial(run_id, "stopped", message="interrupted before it finished",
                         decided=False)
    trials.append(WrittenTrial(run_id=run_id, name=spec.name, workload="rnn_bench", image=MID,
                               repeat=REPEATS, status="stopped", decided=False,
                               bench="1x320-ce-long", impl="cudnn"))
    # Superseded: a resumed sweep started this trial again and marked the old run KILLED;
    # the old trial process then finished it (it is tagged versweep.superseded).
    spec = _spec("rnn_bench", BASE, _bench_config("1x320-ce-long", "cudnn"), REPEATS)
    run_id = records.start_trial(parent, spec)
    records.client.set_terminated(run_id, "KILLED")
    records.finish_trial(run_id, "ok", samples=[10.0] * 21)
    trials.append(WrittenTrial(run_id=run_id, name=spec.name, workload="rnn_bench", image=BASE,
                               repeat=REPEATS, status="ok", decided=False,
                               bench="1x320-ce-long", impl="cudnn"))

    records.close_sweep(parent, _summary(trials), None)
    return WrittenSweep(VERSIONS, parent, trials)


def write_older_versions_sweep(records: SweepRecords) -> WrittenSweep:
    """An earlier, one-trial sweep of "versions": not the newest, so not the default."""
    spec = _spec("rnn_bench", BASE, _bench_config("1x320-ce-long", "cudnn"), 0)
    sweep = _sweep(VERSIONS, (ROOT / "sweeps" / "grids" / "versions.toml").read_text(),
                   (spec,))
    parent = records.open_sweep(sweep, resume=False)
    trial = _write_bench_trial(records, parent, spec, BASE, 95.0, SPREAD)
    records.close_sweep(parent, _summary([trial]), None)
    return WrittenSweep(VERSIONS, parent, [trial])


def write_search_sweep(records: SweepRecords, directory: Path) -> WrittenSweep:
    """The hparams search (sweeps/grids/hparams.toml) with its Optuna study in optuna.db."""
    import optuna

    from analysis.load import study_name

    grid_path = ROOT / "sweeps" / "grids" / "hparams.toml"
    # The grid's own [search] (num_samples = 20, of which the store decides 8), as a sweep has it.
    sweep = dataclasses.replace(
        _sweep(HPARAMS, grid_path.read_text(), (), backend="local", path=str(grid_path)),
        search=load_sweep(str(grid_path)).search)
    parent = records.open_sweep(sweep, resume=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(HPARAMS, HPARAMS, parent),
        storage=f"sqlite:///{directory / 'optuna.db'}", direction="minimize")
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
        "keep_prob": optuna.distributions.FloatDistribution(0.3, 1.0),
        "hidden_size": optuna.distributions.CategoricalDistribution([200, 400, 650, 1000]),
        "clip_norm": optuna.distributions.FloatDistribution(0.25, 10.0, log=True),
    }
    rng = random.Random(7)
    trials = []
    for index, outcome in enumerate(SEARCH_OUTCOMES):
        sampled = {"learning_rate": round(10 ** rng.uniform(-1, 1), 4),
                   "keep_prob": round(rng.uniform(0.3, 1.0), 3),
                   "hidden_size": rng.choice([200, 400, 650, 1000]),
                   "clip_norm": round(10 ** rng.uniform(-0.6, 1), 3)}
        raw = {"preset": "medium", "max_epochs": SEARCH_EPOCHS, "synthetic_words": 60000,
               **sampled}
        config = resolve_workload_config("ptb_lm", raw)
        spec = TrialSpec(workload="ptb_lm", image="local", config=tuple(sorted(config.items())),
                         repeat=0, group=0)
        run_id = records.start_trial(parent, spec)
        records.log_event(run_id, _env_event("local", "ptb_lm", config))
        # Lower is better: a learning rate near 1 and little dropout fit fastest.
        quality = 90.0 + 40.0 * abs(rng.gauss(0, 0.1) + (sampled["learning_rate"] - 1.0) ** 2
                                    / 10.0) + 30.0 * (1.0 - sampled["keep_prob"])
        epochs = {"stopped": 1 + index % 2, "diverged": 1}.get(outcome, SEARCH_EPOCHS)
        curve = []
        for epoch in range(1, epochs + 1):
            valid = quality * (1.0 + 1.5 / epoch)
            curve.append(valid)
            records.log_event(run_id, {"v": 1, "event": "metric", "step": epoch, "metrics": {
                "train_perplexity": valid * 0.8, "valid_perplexity": valid,
                "words_per_second": 9000.0 + index, "learning_rate": sampled["learning_rate"],
                "epoch_seconds": 30.0}})
        written = WrittenTrial(run_id=run_id, name=spec.name, workload="ptb_lm", image="local",
                               repeat=0, status=outcome, decided=True, config=config)
        if outcome == "ok":
            result = {"test_perplexity": curve[-1] * 0.97, "best_valid_perplexity": min(curve),
                      "words_per_second": 9000.0 + index, "epochs_run": float(epochs)}
            records.log_event(run_id, {"v": 1, "event": "result", "metrics": result})
            records.finish_trial(run_id, "ok", log_text="ok\n")
            written.metrics = result
            state = optuna.trial.TrialState.COMPLETE
        elif outcome == "stopped":
            written.message = f"stopped early by ASHA at step {epochs}"
            records.finish_trial(run_id, "stopped", message=written.message)
            state = optuna.trial.TrialState.PRUNED
        else:
            written.message = "loss became nan in epoch 1"
            records.log_event(run_id, {"v": 1, "event": "error", "kind": "diverged",
                                       "message": written.message})
            records.finish_trial(run_id, "diverged", message=written.message)
            state = optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            params=sampled, distributions=distributions, state=state,
            value=curve[-1] if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=dict(enumerate(curve, start=1))))
        trials.append(written)
    ok = [t for t in trials if t.status == "ok"]
    best = min(ok, key=lambda t: t.metrics["best_valid_perplexity"])
    records.close_sweep(parent, _summary(trials), {
        "trial_key": "", "run_id": best.run_id, "name": best.name,
        "metric": "valid_perplexity", "value": best.metrics["best_valid_perplexity"],
        "config": best.config})
    return WrittenSweep(HPARAMS, parent, trials)


def write_unfinished_sweep(records: SweepRecords) -> str:
    """A sweep whose one trial is still running and another was interrupted."""
    specs = tuple(_spec("rnn_bench", BASE, _bench_config("1x320-ce-long", "cudnn"), r)
                  for r in range(2))
    parent = records.open_sweep(_sweep(UNFINISHED, 'name = "unfinished"\n', specs),
                                resume=False)
    records.start_trial(parent, specs[0])  # left RUNNING
    interrupted = records.start_trial(parent, specs[1])
    records.finish_trial(interrupted, "stopped", message="interrupted", decided=False)
    return parent


INTERRUPTED = "interrupted"
# The interrupted sweep's plan: 1x320-ce-long cudnn, two repeats on each of three images.
INTERRUPTED_IMAGES = (BASE, MID, NEW)
INTERRUPTED_REPEATS = 2


def write_interrupted_sweep(records: SweepRecords) -> WrittenSweep:
    """A grid sweep stopped by Ctrl-C part-way through its plan (experiment "interrupted").

    Of its 6 planned trials three are decided ok (BASE #0 #1, MID #0), MID #1 was
    running when Ctrl-C came (its run ends KILLED: no decision) and NEW #0 #1 never
    started. The parent run ends KILLED, as sweeps/run.py leaves it. ``trials`` holds
    every planned trial; the undecided ones have ``decided=False`` and no run id
    unless a run was started.
    """
    records.experiment = INTERRUPTED
    specs = [(_spec("rnn_bench", image, _bench_config("1x320-ce-long", "cudnn"), repeat), image)
             for image in INTERRUPTED_IMAGES for repeat in range(INTERRUPTED_REPEATS)]
    sweep = _sweep(INTERRUPTED, (ROOT / "sweeps" / "grids" / "versions.toml").read_text(),
                   tuple(spec for spec, _ in specs))
    parent = records.open_sweep(sweep, resume=False)
    trials = []
    for spec, image in specs:
        if image == BASE or (image == MID and spec.repeat == 0):
            trials.append(_write_bench_trial(records, parent, spec, image,
                                             80.0 if image == BASE else 60.0, SPREAD))
            continue
        run_id = ""
        if image == MID:  # running when Ctrl-C came
            run_id = records.start_trial(parent, spec)
            records.log_event(run_id, _env_event(image, "rnn_bench", spec.config_dict))
            records.finish_trial(run_id, "stopped", message="interrupted before it finished",
                                 decided=False)
        trials.append(WrittenTrial(run_id=run_id, name=spec.name, workload="rnn_bench",
                                   image=image, repeat=spec.repeat, status="stopped",
                                   decided=False, bench="1x320-ce-long", impl="cudnn",
                                   config=spec.config_dict))
    records.close_sweep(parent, _summary(trials), None, interrupted=True)
    return WrittenSweep(INTERRUPTED, parent, trials)


def fill_store(directory: Path, *, empty_db: Path | None = None) -> FilledStore:
    """Fill ``directory``/mlflow.db (and optuna.db) with every sweep above; say what was written.

    ``empty_db``: a fresh MLflow database to copy instead of creating one
    (creating the tables takes seconds).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mlflow.db"
    if empty_db is not None and not db.exists():
        shutil.copyfile(empty_db, db)
    uri = f"sqlite:///{db}"
    # One SweepRecords for every experiment: opening a store costs seconds, and the
    # object only uses its experiment name when it creates a sweep's parent run.
    records = SweepRecords(uri, VERSIONS)
    older = write_older_versions_sweep(records)
    newest = write_versions_sweep(records)
    records.experiment = HPARAMS
    search = write_search_sweep(records, directory)
    records.experiment = UNFINISHED
    unfinished = write_unfinished_sweep(records)
    # A run in an experiment of its own that versweep did not write (no versweep tags).
    records.experiment = NOT_A_SWEEP
    experiment_id = records.experiment_id(create=True)
    assert experiment_id is not None
    records.client.set_terminated(records.client.create_run(experiment_id).info.run_id)
    return FilledStore(directory=directory, tracking_uri=uri, versions=newest,
                       older_versions=older, search=search,
                       unfinished_parent_run_id=unfinished)


_SHARED: FilledStore | None = None


def shared_store(make_directory: Callable[[], Path]) -> FilledStore:
    """One filled store per test process, made on first use in ``make_directory()``.

    Filling takes seconds (every record goes through SweepRecords, as in a
    sweep), so test modules that only read it, or only add report artifacts
    to a parent run, share it: e.g.
    ``shared_store(lambda: tmp_path_factory.mktemp("analysis-store"))``.
    """
    global _SHARED
    if _SHARED is None or not (_SHARED.directory / "mlflow.db").exists():
        _SHARED = fill_store(make_directory())
    return _SHARED

"""Which image runs which trial on which GPU: decided on the host, before any container.

The verdicts are checked on the real entries of images/matrix.toml against GPUs of every
generation a user meets (V100 ... B200), with what the reference (pytorch-versions.md)
says should happen. nvidia-smi is a stand-in script put first on PATH, since this machine
has no GPU; everything else is the real code path, down to run_trial on the docker backend.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import textwrap
from pathlib import Path

import pytest
from dockerenv import engine_problem

from sweeps.execute.backends.docker import LABEL_TRIAL, DockerBackend
from sweeps.execute.trial import run_trial
from sweeps.grid.load import MATRIX_PATH
from sweeps.grid.matrix import load_matrix
from sweeps.grid.spec import TrialSpec
from sweeps.plan import compat
from sweeps.plan.compat import UNKNOWN_CAPABILITY, Gpu, kernel_source, node_gpus, unsupported_reason
from workers.workloads import resolve_workload_config

MATRIX = load_matrix(MATRIX_PATH)

# A driver new enough for every image of the matrix (CUDA 13.x needs >= 580), so that the
# tables below test kernels and cuDNN only; the driver rule has its own tests.
NEW_DRIVER = "580.95.05"

GPUS = {
    "GTX 1080": Gpu("0", "NVIDIA GeForce GTX 1080", (6, 1), NEW_DRIVER),
    "V100": Gpu("0", "Tesla V100-SXM2-16GB", (7, 0), NEW_DRIVER),
    "T4": Gpu("0", "Tesla T4", (7, 5), NEW_DRIVER),
    "A100": Gpu("0", "NVIDIA A100-SXM4-80GB", (8, 0), NEW_DRIVER),
    "A10": Gpu("0", "NVIDIA A10", (8, 6), NEW_DRIVER),
    "H100": Gpu("0", "NVIDIA H100 80GB HBM3", (9, 0), NEW_DRIVER),
    "B200": Gpu("0", "NVIDIA B200", (10, 0), NEW_DRIVER),
}


def bench(impl: str = "cudnn", check: bool = True, bench: str = "1x320-ce-short",
          **more) -> tuple[str, dict]:
    """An rnn_bench trial's workload and resolved config, as a grid would give it."""
    raw = {"bench": bench, "impl": impl, "check": check, **more}
    return "rnn_bench", resolve_workload_config("rnn_bench", raw)


def lm(**more) -> tuple[str, dict]:
    return "ptb_lm", resolve_workload_config("ptb_lm", {"preset": "small", **more})


TRIALS = {
    "cudnn": bench("cudnn"),
    "basic": bench("basic", check=False),  # the loop alone: no cuDNN anywhere
    "basic+gate": bench("basic", check=True),  # the gate also runs the cudnn implementation
    "compiled": bench("compiled", check=False),
    "ptb_lm": lm(),
}


def reason_for(image: str, gpu: str, trial: str) -> str | None:
    workload, config = TRIALS[trial]
    return unsupported_reason(MATRIX[image], workload, config, [GPUS[gpu]])


# (image, GPU, trial, None when it runs / words the reason must hold). From the reference:
# §0 and §2.2 (the oldest build per GPU), §2.3 (PTX JIT, cuDNN 7 has no Ampere/Hopper).
VERDICTS = [
    # A100: the PyPI-default cu102 builds of 1.8-1.12 have no sm_80 and a cuDNN 7.
    ("torch-1.8.1-cu102", "A100", "cudnn", ["cuDNN 7.6.5", "Ampere", "GPU 0", "sm_80",
                                            "cu11x"]),
    ("torch-1.8.1-cu102", "A100", "ptb_lm", ["cuDNN 7.6.5", "ptb_lm's nn.LSTM"]),
    ("torch-1.8.1-cu111", "A100", "cudnn", None),
    ("torch-1.8.1-cu111", "A100", "ptb_lm", None),
    ("torch-1.7.1-cu110", "A100", "cudnn", None),
    # An A10 (8.6) runs an sm_80 cubin: same major, higher minor.
    ("torch-1.7.1-cu110", "A10", "cudnn", None),
    ("torch-1.6.0-cu101", "A10", "cudnn", ["cuDNN 7.6.5", "Ampere"]),
    # H100: the default 2.0 build (cu117) has no sm_90 and cuDNN 8.5; cu118 has both.
    ("torch-2.0.1-cu117", "H100", "cudnn", ["cuDNN 8.5.0.96", "Hopper", "sm_90",
                                            "torch-2.0.1-cu118"]),
    ("torch-2.0.1-cu117", "H100", "ptb_lm", ["cuDNN 8.5.0.96", "Hopper"]),
    ("torch-2.0.1-cu118", "H100", "cudnn", None),
    ("torch-2.0.1-cu118", "H100", "ptb_lm", None),
    ("torch-1.13.1-cu116", "H100", "cudnn", ["cuDNN 8.3.2", "Hopper"]),
    # 0.4 on H100: its own kernels JIT from compute_70 PTX, but its cuDNN 7 cannot run.
    ("torch-0.4.0-cu90", "H100", "basic", None),
    ("torch-0.4.0-cu90", "H100", "cudnn", ["cuDNN 7.1.2", "Hopper", "impl 'cudnn'"]),
    ("torch-0.4.0-cu90", "H100", "ptb_lm", ["cuDNN 7.1.2", "ptb_lm"]),
    ("torch-0.4.0-cu90", "H100", "basic+gate", ["cuDNN 7.1.2", "correctness gate",
                                                "check = false"]),
    # V100 and T4 run everything from 0.4 (sm_70; T4 runs sm_70 cubins) to 2.11 cu128 ...
    ("torch-0.4.1-cu90", "V100", "cudnn", None),
    ("torch-0.4.1-cu90", "T4", "cudnn", None),
    ("torch-1.0.1-cu100", "T4", "ptb_lm", None),
    ("torch-2.8.0-cu128", "V100", "cudnn", None),
    ("torch-2.11.0-cu128", "V100", "cudnn", None),
    # ... but the cu128 builds of 2.7 and every cu13x build dropped sm_70.
    ("torch-2.7.1-cu128", "V100", "basic", ["torch-2.7.1-cu128 has kernels for sm_75",
                                            "no PTX", "Tesla V100-SXM2-16GB", "sm_70"]),
    ("torch-2.11.0-cu130", "V100", "basic", ["PTX compute_120", "sm_70"]),
    ("torch-2.11.0-cu130", "T4", "cudnn", None),
    # B200: native sm_100 from the cu128 builds (cuDNN 9.7+) ...
    ("torch-2.7.1-cu128", "B200", "cudnn", None),
    ("torch-2.13.0-cu130", "B200", "ptb_lm", None),
    # ... the cu126 build has neither sm_100 nor PTX ...
    ("torch-2.7.1-cu126", "B200", "basic", ["torch-2.7.1-cu126 has kernels for sm_50",
                                            "sm_90 and no PTX", "NVIDIA B200", "sm_100",
                                            "cu128"]),
    # ... and the cu124 builds reach it through compute_90 PTX, with a cuDNN too old for it.
    ("torch-2.6.0-cu124", "B200", "basic", None),
    ("torch-2.6.0-cu124", "B200", "cudnn", ["cuDNN 9.1.0.70", "Blackwell", "9.7"]),
    # torch.compile uses Triton, which needs capability 7.0 on the GPU.
    ("torch-2.0.1-cu118", "V100", "compiled", None),
    ("torch-2.0.1-cu118", "GTX 1080", "compiled", ["sm_61", "triton",
                                                   "CUDA Capability >= 7.0"]),
    ("torch-2.0.1-cu118", "GTX 1080", "basic", None),
]


@pytest.mark.parametrize("image, gpu, trial, expected", VERDICTS,
                         ids=[f"{i}-{g}-{t}" for i, g, t, _ in VERDICTS])
def test_what_the_reference_says_runs_where(image, gpu, trial, expected):
    reason = reason_for(image, gpu, trial)
    if expected is None:
        assert reason is None, f"{image} on {gpu} ({trial}) should run; got: {reason}"
        return
    assert reason is not None, f"{image} on {gpu} ({trial}) should be unsupported"
    assert "\n" not in reason
    assert reason.startswith(image), reason  # it names the image first ...
    for words in expected:  # ... and says why
        if words == image:
            continue
        assert words in reason, f"{words!r} not in: {reason}"


@pytest.mark.parametrize("image, gpu", [("torch-0.4.0-cu90", "H100"),
                                        ("torch-1.8.1-cu102", "A100"),
                                        ("torch-2.0.1-cu117", "H100"),
                                        ("torch-2.6.0-cu124", "B200")])
def test_old_kernels_reach_a_newer_gpu_only_through_ptx_and_the_report_can_say_so(image, gpu):
    assert kernel_source(MATRIX[image], GPUS[gpu]) == "ptx"
    workload, config = TRIALS["basic"]
    assert compat.ptx_jit_gpus(MATRIX[image], config, [GPUS[gpu]]) == [GPUS[gpu]]
    # Where the image has the GPU's own code, no JIT is involved.
    assert kernel_source(MATRIX["torch-2.7.1-cu128"], GPUS[gpu]) == "sass"


def test_the_message_names_the_image_its_kernels_and_the_gpu_the_way_a_person_reads_them():
    assert reason_for("torch-2.7.1-cu126", "B200", "basic") == (
        "torch-2.7.1-cu126 has kernels for sm_50, sm_60, sm_70, sm_75, sm_80, sm_86, sm_90 "
        "and no PTX; GPU 0 (NVIDIA B200) is sm_100: use a cu128 or newer image "
        "(torch >= 2.7 with CUDA 12.8+)")


def test_a_cpu_trial_meets_no_gpu_rule_on_any_image_of_the_matrix():
    for image in MATRIX.values():
        for gpu in GPUS.values():
            for make in (lambda: bench("cudnn", device="cpu"), lambda: lm(device="cpu")):
                workload, config = make()
                assert unsupported_reason(image, workload, config, [gpu]) is None, \
                    (image.name, gpu.name)


def test_a_trial_without_gpus_meets_no_gpu_rule_even_on_a_cpu_only_image():
    workload, config = TRIALS["cudnn"]
    assert unsupported_reason(MATRIX["torch-2.13.0-cpu"], workload, config, []) is None
    assert unsupported_reason(MATRIX["torch-0.4.0-cu90"], workload, config, []) is None


def test_a_cpu_only_image_cannot_use_the_gpus_the_trial_was_given():
    workload, config = TRIALS["basic"]
    on_cuda = dict(config, device="cuda")
    reason = unsupported_reason(MATRIX["torch-2.13.0-cpu"], workload, on_cuda, [GPUS["A100"]])
    assert reason is not None
    assert "torch-2.13.0-cpu is a CPU-only image" in reason
    assert "GPU 0 (NVIDIA A100-SXM4-80GB)" in reason and 'device = "cpu"' in reason
    # device "auto": the CPU-only image runs the trial on the CPU (smoke on a GPU node).
    assert unsupported_reason(MATRIX["torch-2.13.0-cpu"], workload,
                              dict(config, device="auto"), [GPUS["A100"]]) is None


def test_every_gpu_of_the_trial_must_be_able_to_run_it():
    workload, config = TRIALS["cudnn"]
    v100, h100 = GPUS["V100"], dataclasses.replace(GPUS["H100"], index="1")
    reason = unsupported_reason(MATRIX["torch-1.13.1-cu116"], workload, config, [v100, h100])
    assert reason is not None and "GPU 1 (NVIDIA H100 80GB HBM3)" in reason
    assert unsupported_reason(MATRIX["torch-1.13.1-cu116"], workload, config, [v100]) is None


# ---------------------------------------------------------------------------- torch rules

def test_ctc_needs_torch_1_0_as_the_worker_says_on_every_gpu_and_on_the_cpu():
    from workers.rnn_bench import NO_CTC_LOSS  # the worker's own words

    for device in ("auto", "cpu"):
        workload, config = bench("cudnn", bench="4x320-ctc-long", device=device)
        for name in ("torch-0.4.0-cu90", "torch-0.4.1-cu90"):
            reason = unsupported_reason(MATRIX[name], workload, config, [GPUS["V100"]])
            assert reason is not None and reason.startswith(NO_CTC_LOSS), reason
            assert "torch 0.4" in reason
        assert unsupported_reason(MATRIX["torch-1.0.1-cu100"], workload, config,
                                  [GPUS["V100"]]) is None


def test_compiled_needs_torch_2_0_as_the_worker_says_even_without_a_gpu():
    for name in ("torch-0.4.0-cu90", "torch-1.13.1-cu116"):
        for device, gpus in (("cpu", []), ("auto", [GPUS["A100"]])):
            workload, config = bench("compiled", device=device)
            reason = unsupported_reason(MATRIX[name], workload, config, gpus)
            assert reason is not None and reason.startswith("torch.compile needs torch>=2.0")
    workload, config = bench("compiled", device="cpu")
    assert unsupported_reason(MATRIX["torch-2.0.1-cu117"], workload, config, []) is None


def test_tf32_and_deterministic_on_an_old_torch_are_no_ops_in_the_worker_not_refusals():
    # workers/runtime.py sets these flags only where the torch has them.
    workload, config = bench("cudnn", tf32=True, deterministic=True)
    assert unsupported_reason(MATRIX["torch-0.4.0-cu90"], workload, config,
                              [GPUS["V100"]]) is None


# ---------------------------------------------------------------------------- arch-specific

def test_arch_specific_code_runs_on_exactly_its_own_gpu():
    # An image built only for sm_80 and sm_90a (as the conda 2.5 builds add sm_90a).
    image = dataclasses.replace(MATRIX["torch-2.5.1-cu124"], name="torch-2.5.1-sm90a",
                                archs=("sm_80", "sm_90a"), ptx=())
    workload, config = TRIALS["basic"]
    assert unsupported_reason(image, workload, config, [GPUS["H100"]]) is None
    assert unsupported_reason(image, workload, config, [GPUS["A10"]]) is None  # via sm_80
    reason = unsupported_reason(image, workload, config, [GPUS["B200"]])
    assert reason is not None and "sm_80, sm_90a and no PTX" in reason
    ptx_only = dataclasses.replace(image, archs=(), ptx=("compute_90a",))
    assert unsupported_reason(ptx_only, workload, config, [GPUS["H100"]]) is None
    assert unsupported_reason(ptx_only, workload, config, [GPUS["B200"]]) is not None
    # Family code (CUDA 12.9+) runs within its major only: B200 yes, an RTX 5090 (12.0) no.
    family = dataclasses.replace(image, archs=(), ptx=("compute_100f",))
    rtx_5090 = Gpu("0", "NVIDIA GeForce RTX 5090", (12, 0), NEW_DRIVER)
    assert unsupported_reason(family, workload, config, [GPUS["B200"]]) is None
    assert unsupported_reason(family, workload, config, [rtx_5090]) is not None


# ---------------------------------------------------------------------------- driver

@pytest.mark.parametrize("image, driver, minimum", [
    ("torch-2.13.0-cu130", "535.104.05", "580"),
    ("torch-2.1.0-cu121", "470.82.01", "525.60.13"),
    ("torch-2.0.1-cu118", "450.51.06", "450.80.02"),
    ("torch-1.8.1-cu102", "418.67", "440.33"),
    ("torch-0.4.0-cu90", "375.26", "384.81"),
])
def test_a_driver_older_than_the_images_cuda_needs_is_unsupported_with_both_versions(
        image, driver, minimum):
    gpu = dataclasses.replace(GPUS["T4"], driver=driver)  # T4 runs every CUDA image
    workload, config = TRIALS["basic"]
    reason = unsupported_reason(MATRIX[image], workload, config, [gpu])
    assert reason is not None
    assert f"CUDA {MATRIX[image].cuda}" in reason
    assert f"driver >= {minimum}" in reason and f"driver {driver}" in reason


@pytest.mark.parametrize("image, driver", [
    ("torch-2.13.0-cu130", "580.65.06"),
    ("torch-2.1.0-cu121", "525.60.13"),  # minor version compatibility: 12.1 on 12.0's driver
    ("torch-2.0.1-cu118", "450.80.02"),
    ("torch-1.7.1-cu110", "450.51.06"),
    ("torch-0.4.0-cu90", "535.104.05"),  # backward compatibility: old runtimes, new drivers
    ("torch-2.13.0-cu130", "[N/A]"),  # unreadable: left to the worker
])
def test_a_driver_new_enough_for_the_images_cuda_is_fine(image, driver):
    gpu = dataclasses.replace(GPUS["T4"], driver=driver)  # T4 runs every CUDA image
    workload, config = TRIALS["basic"]
    assert unsupported_reason(MATRIX[image], workload, config, [gpu]) is None


def test_a_gpu_of_unknown_capability_is_left_to_the_worker_but_a_cpu_image_still_refuses():
    gpu = Gpu("0", "Some Future GPU", UNKNOWN_CAPABILITY, NEW_DRIVER)
    workload, config = TRIALS["cudnn"]
    assert unsupported_reason(MATRIX["torch-0.4.0-cu90"], workload, config, [gpu]) is None
    assert unsupported_reason(MATRIX["torch-2.13.0-cpu"], workload, dict(config, device="cuda"),
                              [gpu]) is not None


# ---------------------------------------------------------------------------- node_gpus

def stand_in_nvidia_smi(directory: Path, script: str) -> None:
    """Write an executable ``nvidia-smi`` (a shell script) into ``directory``."""
    path = directory / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    path.chmod(0o755)


# Answers only the exact query node_gpus should ask; anything else is an error, as nvidia-smi
# reports an unknown option.
NEW_NVIDIA_SMI = """\
if [ "$1" = "--query-gpu=index,name,compute_cap,driver_version" ] \\
        && [ "$2" = "--format=csv,noheader" ] && [ $# -eq 2 ]; then
    printf '%s\\n' {lines}
    exit 0
fi
echo "Invalid combination of input arguments: $*" >&2
exit 2
"""


def on_path(monkeypatch, directory: Path) -> None:
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")


def test_node_gpus_reads_one_gpu(tmp_path, monkeypatch):
    stand_in_nvidia_smi(tmp_path, NEW_NVIDIA_SMI.format(
        lines="'0, NVIDIA H100 80GB HBM3, 9.0, 550.54.15'"))
    on_path(monkeypatch, tmp_path)
    assert node_gpus() == [Gpu("0", "NVIDIA H100 80GB HBM3", (9, 0), "550.54.15")]


def test_node_gpus_reads_two_gpus_of_different_generations(tmp_path, monkeypatch):
    stand_in_nvidia_smi(tmp_path, NEW_NVIDIA_SMI.format(
        lines="'0, NVIDIA A100-SXM4-80GB, 8.0, 580.95.05' "
              "'1, NVIDIA GeForce RTX 5090, 12.0, 580.95.05'"))
    on_path(monkeypatch, tmp_path)
    gpus = node_gpus()
    assert [(g.index, g.name, g.capability, g.sm) for g in gpus] == [
        ("0", "NVIDIA A100-SXM4-80GB", (8, 0), "sm_80"),
        ("1", "NVIDIA GeForce RTX 5090", (12, 0), "sm_120")]
    assert {g.driver for g in gpus} == {"580.95.05"}


def test_an_old_nvidia_smi_without_compute_cap_gives_the_capability_from_the_name(
        tmp_path, monkeypatch):
    stand_in_nvidia_smi(tmp_path, """\
        case "$1" in
        *compute_cap*)
            echo 'Field "compute_cap" is not a valid field to query.'
            exit 2 ;;
        --query-gpu=index,name,driver_version)
            echo '0, Tesla V100-SXM2-16GB, 470.82.01'
            echo '1, Tesla T4, 470.82.01'
            echo '2, Some Future GPU, 470.82.01'
            exit 0 ;;
        esac
        exit 2
        """)
    on_path(monkeypatch, tmp_path)
    assert node_gpus() == [Gpu("0", "Tesla V100-SXM2-16GB", (7, 0), "470.82.01"),
                           Gpu("1", "Tesla T4", (7, 5), "470.82.01"),
                           Gpu("2", "Some Future GPU", UNKNOWN_CAPABILITY, "470.82.01")]


def test_a_failing_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    stand_in_nvidia_smi(tmp_path, """\
        echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        exit 9
        """)
    on_path(monkeypatch, tmp_path)
    assert node_gpus() == []


def test_no_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to run
    assert node_gpus() == []


# ---------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("image, smi_line, words", [
    # H100 on 1.13.1: no sm_90 (its compute_37 PTX would JIT), and a cuDNN 8.3 without Hopper.
    ("torch-1.13.1-cu116", "0, NVIDIA H100 80GB HBM3, 9.0, 550.54.15",
     ["cuDNN 8.3.2", "Hopper", "GPU 0 (NVIDIA H100 80GB HBM3) is sm_90"]),
    # B200 on 2.7.1 cu126: no sm_100 and no PTX at all.
    ("torch-2.7.1-cu126", "0, NVIDIA B200, 10.0, 580.95.05",
     ["has kernels for sm_50", "no PTX", "GPU 0 (NVIDIA B200) is sm_100"]),
])
def test_run_trial_records_unsupported_before_any_container_starts(
        tmp_path, monkeypatch, image, smi_line, words):
    smi_dir = tmp_path / "bin"
    smi_dir.mkdir()
    stand_in_nvidia_smi(smi_dir, NEW_NVIDIA_SMI.format(lines=f"'{smi_line}'"))
    on_path(monkeypatch, smi_dir)
    config = resolve_workload_config("rnn_bench", {"bench": "1x320-ce-short"})
    spec = TrialSpec(workload="rnn_bench", image=image, config=tuple(sorted(config.items())),
                     repeat=0, group=0)
    backend = DockerBackend({image: MATRIX[image]})  # a new one: it keeps node_gpus()
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)

    outcome = run_trial(backend, spec, gpu_ids=["0"], log_dir=tmp_path / "logs")

    assert outcome.status == "unsupported"
    assert outcome.decided_before_start
    assert outcome.attempts == 0 and outcome.exit_code is None and outcome.env is None
    for text in words:
        assert text in outcome.message, outcome.message
    log = (tmp_path / "logs" / f"{spec.key}.log").read_text()
    assert f"not started: unsupported on this node: {outcome.message}" in log
    # The check never reached for the engine: the backend has not even made a client.
    assert backend._client is None
    if engine_problem() is None:
        # And the engine saw no container of this trial, not even one created and removed.
        import docker

        client = docker.from_env(timeout=30)
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
        events = list(client.events(since=since, until=until, decode=True,
                                    filters={"type": "container",
                                             "label": f"{LABEL_TRIAL}={spec.key}"}))
        assert events == []

"""Protocol v1 frame: env first, the right terminal event, the right exit code."""
import json

import pytest


def test_env_workload_reports_versions_and_flags(worker):
    run = worker("env", {"device": "cpu", "seed": 7})
    assert run.returncode == 0, run.stderr
    assert run.kinds == ["env", "result"]
    env = run.events[0]
    assert env["v"] == 1
    for key in ("python", "torch", "cuda", "cudnn", "device", "gpu", "capability", "driver",
                "flags", "workload", "config"):
        assert key in env, key
    assert env["device"] == "cpu"
    assert env["workload"] == "env"
    assert env["config"]["seed"] == 7
    flags = env["flags"]
    for key in ("tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "cudnn_deterministic",
                "deterministic_algorithms"):
        assert key in flags, key
    assert flags["tf32_matmul"] is False  # the worker turns TF32 off unless asked
    # What a CPU speed figure depends on besides torch: the CPU and the wheel's libraries.
    with open("/proc/cpuinfo") as handle:
        vendor = next((line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("vendor_id")), None)
    assert env["cpu"]["vendor"] == vendor and env["cpu"]["logical_cpus"] >= 1
    assert env["build"]["parallel_backend"] in ("OpenMP", "native thread pool", "TBB")
    assert set(env["build"]) == {"blas", "mkl", "onednn", "openmp", "cpu_capability",
                                 "parallel_backend"}
    # The GPU architectures this torch has code for, known without a GPU (CUDA builds).
    import torch

    if torch.version.cuda:
        assert env["compiled_archs"] and all(a.startswith(("sm_", "compute_"))
                                             for a in env["compiled_archs"])
    else:
        assert env["compiled_archs"] is None


OLD_CONFIG = """PyTorch built with:
  - GCC 7.3
  - Intel(R) Math Kernel Library Version 2019.0.4 Product Build 20190411 for Intel(R) 64 \
architecture applications
  - Intel(R) MKL-DNN v0.21.1 (Git Hash 7d2fd500bc78936d1d648ca713b901012f470dbc)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - NNPACK is enabled
  - CUDA Runtime 10.1
  - Build settings: BLAS=MKL, BUILD_NAMEDTENSOR=OFF, CXX_FLAGS= -Wno-deprecated, USE_CUDA=True,
"""


def test_the_build_report_of_an_old_torch_is_read_and_a_torch_without_one_reports_none(
        monkeypatch):
    import torch

    from workers import runtime

    monkeypatch.setattr(torch.__config__, "show", lambda: OLD_CONFIG)
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "")
    old = runtime.build_info()
    assert old["blas"] == "MKL"
    assert old["mkl"].startswith("Intel(R) Math Kernel Library Version 2019.0.4")
    assert old["onednn"].startswith("Intel(R) MKL-DNN v0.21.1")
    assert old["openmp"] == "OpenMP 201511 (a.k.a. OpenMP 4.5)"
    assert old["cpu_capability"] is None and old["parallel_backend"] is None
    monkeypatch.delattr(torch, "__config__")  # torch 0.4 has no build report
    assert set(runtime.build_info().values()) == {None}


def test_every_line_is_versioned_json(worker):
    run = worker("env", {})
    for line in run.stdout.splitlines():
        event = json.loads(line)
        assert event["v"] == 1 and "event" in event


@pytest.mark.parametrize(
    "workload, raw, needle",
    [
        ("nope", "{}", "workload 'nope' is unknown"),
        ("ptb_ml", "{}", "did you mean 'ptb_lm'"),
        ("env", "{not json", "not valid JSON"),
        ("env", "[1, 2]", "must be a JSON object"),
        ("env", '{"devise": "cpu"}', "did you mean 'device'"),
        ("env", '{"seed": "one"}', "'seed' is a string"),
        ("env", '{"seed": -1}', "at least 0"),
        ("env", '{"tf32": 1}', "must be true or false"),
        ("env", '{"device": "tpu"}', "choose auto, cpu, cuda"),
        ("env", "@/no/such/file.json", "cannot read config file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(worker, workload, raw, needle):
    run = worker(workload, raw_config=raw)
    assert run.returncode == 2
    assert run.kinds == ["env", "error"]
    error = run.events[-1]
    assert error["kind"] == "bad_config"
    assert needle in error["message"]
    assert "\n" not in error["message"]
    # A person reading stderr gets the same one line, never a traceback.
    assert "Traceback" not in run.stderr
    assert needle in run.stderr


def test_config_from_file(worker, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"device": "cpu", "seed": 3}))
    run = worker("env", raw_config=f"@{path}")
    assert run.returncode == 0
    assert run.events[0]["config"]["seed"] == 3


def test_help_of_a_workload_lists_its_config_keys(worker):
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "workers", "rnn_bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()
             if line.startswith("  ")}
    assert "one of: 1x320-ce-long, 1x320-ce-short, 4x320-ce-long, 4x320-ctc-long" in \
        lines["bench"]
    assert "default 500" in lines["batches"] and "default 100" in lines["warmup_batches"]
    assert {"device", "seed", "tf32"} <= set(lines)  # the common keys too

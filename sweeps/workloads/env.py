"""env, the host half: report the environment and exit (workers/envcheck.py).

Hardly any figures: the `env` event (torch, CUDA, cuDNN, Python, GPU, numeric flags) is the
whole result. images/build.py verify and the orchestration benchmarks run it.
"""

from __future__ import annotations

from sweeps.workloads.base import LOWER, NEITHER, Metric, Workload

WORKLOAD = Workload(
    name="env",
    description="the environment a worker sees (torch, CUDA, cuDNN, Python, GPU), nothing else",
    metrics=(
        Metric("device_check_seconds", "s", LOWER,
               description="a 4x4 matrix product on the device, synchronised"),
        Metric("device_check_value", "", NEITHER,
               description="its sum (64.0 where the device computes correctly)"),
    ),
    report_sections=(),
)

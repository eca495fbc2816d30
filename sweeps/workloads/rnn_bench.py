"""rnn_bench, the host half: seed 004's LSTM speed benchmarks (workers/rnn_bench.py).

stefbraun/rnn_benchmarks' four shapes (1x320 and 4x320 bidirectional, cross-entropy and
CTC losses) with a hand-written cell (basic), nn.LSTMCell (fused), cuDNN's nn.LSTM
(cudnn) and torch.compile of the hand-written cell (compiled). Judged by the median time
per training batch, within one benchmark and implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeps.versions import version_tuple
from sweeps.workloads.base import HIGHER, LOWER, NEITHER, Metric, Workload
from workers.rnn_bench_config import BENCHMARKS


def _impl(config: Mapping[str, Any]) -> str:
    return config.get("impl") or "cudnn"  # the worker's default where a raw config omits it


def _image_reason(torch: str | None, image: str, config: Mapping[str, Any]) -> str | None:
    """Mirrors the worker's own `unsupported` events (workers/rnn_bench.py, rnn_models.py),
    with the same wording, so a trial refused before it starts reads the same."""
    if torch is None:
        return None  # the host's own torch: the worker finds out itself
    version = version_tuple(torch)
    bench = BENCHMARKS.get(str(config.get("bench")))
    if bench is not None and bench["loss"] == "ctc" and version < (1, 0):
        # nn.CTCLoss is new in 1.0. The worker falls back to warpctc_pytorch where
        # installed; no matrix image installs it, so a torch < 1.0 image has no CTC loss.
        return (f"nn.CTCLoss needs torch>=1.0 and warpctc_pytorch is not installed "
                f"({image} has torch {torch})")
    if _impl(config) == "compiled" and version < (2, 0):
        return f"torch.compile needs torch>=2.0 ({image} has torch {torch})"
    return None


def _cudnn(config: Mapping[str, Any]) -> str | None:
    """impl 'cudnn' is nn.LSTM/GRU/RNN, cuDNN on a GPU; the correctness gate (check = true)
    runs cudnn next to every other implementation, so those call cuDNN too."""
    impl = _impl(config)
    if impl == "cudnn":
        return "impl 'cudnn' runs on cuDNN"
    check = config.get("check")
    if check is None or check:
        return (f"the correctness gate (check = true) runs the cudnn implementation next "
                f"to '{impl}' (set check = false to time '{impl}' alone)")
    return None


def _gpu_reason(config: Mapping[str, Any], capability: tuple[int, int], image: str,
                gpu: str) -> str | None:
    if _impl(config) == "compiled" and capability < (7, 0):
        # torch.compile's GPU backend is Triton: torch/_inductor raises "Found <GPU> which is
        # too old to be supported by the triton GPU compiler ... Triton only supports devices
        # of CUDA Capability >= 7.0" [V: torch/_inductor/scheduler.py].
        return (f"{image} runs torch.compile through the triton GPU compiler, which only "
                f"supports devices of CUDA Capability >= 7.0; {gpu}: time impl 'basic' on "
                "it, or 'compiled' on a newer GPU")
    return None


_TIMES = {"mean": "mean", "median": "median (the seed's figure)", "p10": "10th percentile",
          "p90": "90th percentile", "std": "standard deviation", "min": "fastest",
          "max": "slowest"}

WORKLOAD = Workload(
    name="rnn_bench",
    description="stefbraun/rnn_benchmarks' LSTM speed benchmarks (1x320 / 4x320, CE / CTC) "
                "with basic, fused, cudnn and compiled implementations",
    metrics=(
        Metric("chunk_ms_per_batch_median", "ms", LOWER, per_step=True, in_result=False,
               description="median time per batch over one chunk of timed batches"),
        Metric("loss", "", LOWER, per_step=True, in_result=False,
               description="training loss at the end of the chunk"),
        *(Metric(f"ms_per_batch_{stat}", "ms", LOWER if stat != "std" else NEITHER,
                 description=f"time per training batch, {what}, warm-up batches dropped")
          for stat, what in _TIMES.items()),
        Metric("sequences_per_second", "sequences/s", HIGHER,
               description="sequences trained per second over the timed batches"),
        Metric("batches_timed", "", NEITHER, description="timed batches (warm-up dropped)"),
        Metric("parameters", "", NEITHER, description="trainable parameters of the model"),
        Metric("check_max_abs_diff", "", LOWER,
               description="correctness gate: largest absolute difference between "
                           "implementations on shared weights"),
        Metric("check_max_scaled_diff", "", LOWER,
               description="correctness gate: the same, scaled by the output's magnitude"),
        Metric("check_steps", "", NEITHER, description="correctness gate: time steps compared"),
        Metric("check_sequences", "", NEITHER,
               description="correctness gate: sequences compared"),
        Metric("loss_first", "", NEITHER, description="loss of the first (warm-up) batch"),
        Metric("loss_last", "", LOWER, description="loss of the last batch"),
    ),
    label_keys=("bench", "impl", "cell"),
    label_defaults={"cell": "lstm"},
    key_columns=("bench", "impl", "cell", "batch_size", "seq_len", "hidden_size"),
    best_metric="ms_per_batch_median",
    best_per=("bench", "impl"),
    report_sections=("speed",),
    image_reason=_image_reason,
    cudnn_reason=_cudnn,
    gpu_reason=_gpu_reason,
)

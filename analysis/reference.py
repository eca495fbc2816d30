"""The seed's own measurements: stefbraun/rnn_benchmarks, PyTorch 0.1.12 to 0.4.0 on a GTX 1080.

A report shows these rows next to a sweep's speed tables, so a reader sees where
today's figures stand against the published ones. The raw per-batch times ship in
analysis/data/ (see its README.md for the source; the repository has no licence
file, so every row carries its source string and reports cite it).

Names are mapped to versweep's: the CSV's experiment ``1x320-LSTM_cross-entropy``
is our bench ``1x320-ce-long`` (all three of its experiments ran 1,000 time
steps), its bench ``pytorch_cudnnLSTM`` our impl ``cudnn``, its version
``0.1.12_2`` the PyTorch release ``0.1.12``.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from .stats import Interval, median_ci

REFERENCE_CSV = Path(__file__).resolve().parent / "data" / "rnn_benchmarks_pytorch_gtx1080.csv"

SOURCE = ("stefbraun/rnn_benchmarks results/10/pytorch_comparison/results.csv "
          "(S. Braun, arXiv:1806.01818, 2018; GTX 1080)")
GPU = "GTX 1080"

# The benchmark's own warm-up: its print_results drops the first 100 of 500 batches.
WARMUP_BATCHES = 100

# CSV experiment -> versweep bench (workers/ rnn_bench names).
BENCH_NAMES = {
    "1x320-LSTM_cross-entropy": "1x320-ce-long",
    "4x320-BIDIR-LSTM_cross-entropy": "4x320-ce-long",
    "4x320-BIDIR-LSTM_CTC": "4x320-ctc-long",
}
# CSV bench (the script's implementation) -> versweep impl.
IMPL_NAMES = {
    "pytorch_cudnnLSTM": "cudnn",
    "pytorch_LSTMCell-fused": "fused",
    "pytorch_LSTMCell-basic": "basic",
}
# CSV version label -> (PyTorch release, CUDA, cuDNN), from the benchmark's readme.
VERSIONS = {
    "0.1.12_2": ("0.1.12", "8.0", "6021"),
    "0.2.0_4": ("0.2.0", "8.0", "6021"),
    "0.3.1.post2": ("0.3.1", "8.0", "7005"),
    "0.4.0": ("0.4.0", "9.0", "7102"),
}


@dataclass(frozen=True)
class ReferenceRow:
    """One published measurement: median ms per batch of one bench/impl on one PyTorch."""

    bench: str  # versweep bench name, e.g. "1x320-ce-long"
    impl: str  # "cudnn", "fused" or "basic"
    version: str  # PyTorch release, e.g. "0.4.0"
    interval: Interval  # median ms per batch after warm-up, 95% bootstrap CI over batches
    mean_ms: float  # the mean the benchmark's own plots label (last 400 batches)
    version_label: str  # as the CSV writes it, e.g. "0.3.1.post2"
    cuda: str
    cudnn: str
    gpu: str = GPU
    source: str = SOURCE


@functools.lru_cache(maxsize=1)
def _rows(path: Path) -> tuple[ReferenceRow, ...]:
    batches: dict[tuple[str, str, str], list[float]] = {}
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            key = (record["experiment"], record["bench"], record["version"])
            batches.setdefault(key, []).append(float(record["runtime"]) * 1000.0)
    rows = []
    for (experiment, bench, label), seconds in batches.items():
        timed = seconds[WARMUP_BATCHES:]
        release, cuda, cudnn = VERSIONS[label]
        rows.append(ReferenceRow(
            bench=BENCH_NAMES[experiment], impl=IMPL_NAMES[bench], version=release,
            interval=median_ci([timed]), mean_ms=sum(timed) / len(timed),
            version_label=label, cuda=cuda, cudnn=cudnn))
    order = {name: i for i, name in enumerate(BENCH_NAMES.values())}
    impl_order = {name: i for i, name in enumerate(IMPL_NAMES.values())}
    rows.sort(key=lambda r: (order[r.bench], impl_order[r.impl],
                             tuple(int(p) for p in r.version.split("."))))
    return tuple(rows)


def reference_rows() -> list[ReferenceRow]:
    """Every (bench, impl, PyTorch version) of the GTX 1080 reference, in a stable order.

    Sorted by bench (1x320-ce-long, 4x320-ce-long, 4x320-ctc-long), then impl
    (cudnn, fused, basic), then version. Read once per process.
    """
    return list(_rows(REFERENCE_CSV))


__all__ = ["GPU", "REFERENCE_CSV", "SOURCE", "ReferenceRow", "reference_rows"]

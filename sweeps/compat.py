"""Can this image run this trial on these GPUs? Decided on the host, before any container.

(Being written: the rules land in the next commit.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import Image


@dataclass(frozen=True)
class Gpu:
    """One GPU of this node, as nvidia-smi reports it."""

    index: str
    name: str
    capability: tuple[int, int]
    driver: str


def node_gpus() -> list[Gpu]:
    return []


def unsupported_reason(image: Image, workload: str, config: Mapping[str, Any],
                       gpus: Sequence[Gpu]) -> str | None:
    return None

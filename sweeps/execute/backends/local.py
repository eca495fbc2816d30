"""The `local` backend: the worker runs on the host's own interpreter, in a child process.

The interpreter is this one (``sys.executable``), or the one $VERSWEEP_PYTHON names: a
Python that has torch when the host's own has not (a conda environment, a system Python
with a CUDA build), or a stand-in that speaks the worker protocol (the orchestration
benchmarks use one, so that what they time is versweep, not torch's import).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sweeps.errors import UserError
from sweeps.execute.backends._base import (
    Backend,
    ProcessHandle,
    WorkerHandle,
    worker_args,
    worker_env,
)
from sweeps.grid.spec import LOCAL_IMAGE, Sweep, TrialSpec

# Names the interpreter the local backend runs instead of this one.
PYTHON_VARIABLE = "VERSWEEP_PYTHON"

# The checkout whose `workers` package the child runs (python -m workers needs it on the path).
from sweeps.paths import REPO_ROOT  # noqa: E402


class LocalBackend(Backend):
    """Run ``python -m workers`` with this interpreter (the embedded default, no Docker)."""

    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or os.environ.get(PYTHON_VARIABLE) or sys.executable

    def preflight(self, sweep: Sweep, *, on_this_node: bool = True) -> None:
        """Check that every trial runs on the host image and that this interpreter has torch.

        torch is imported in a child process: the host itself never imports it.
        """
        images = sorted({t.image for t in sweep.trials}
                        | ({sweep.search.image} if sweep.search else set()))
        foreign = [name for name in images if name != LOCAL_IMAGE]
        if foreign:
            raise UserError(
                f"the local backend runs the host's own torch, but sweep '{sweep.name}' names "
                f"image(s) {', '.join(foreign)}; use --backend docker for images")
        if not on_this_node:
            return  # the cluster's nodes run the workers, with their own torch
        if shutil.which(self.python) is None:
            source = (f"${PYTHON_VARIABLE}" if os.environ.get(PYTHON_VARIABLE) == self.python
                      else "the local backend's interpreter")
            raise UserError(f"{source} is {self.python}, which is not an executable file; "
                            f"point it at a Python that has torch, or unset {PYTHON_VARIABLE}")
        try:
            probe = subprocess.run(
                [self.python, "-c", "import torch; print(torch.__version__)"],
                capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"the local backend cannot run {self.python}: {exc}") from None
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"the local backend needs torch in {self.python} ({last}); "
                "install it (pip install torch) or use --backend docker")

    def start(self, spec: TrialSpec, *, gpu_ids: Sequence[str], log_path: Path) -> WorkerHandle:
        env = worker_env(spec, gpu_ids)
        # The repo root on the path makes `-m workers` import this checkout's workers.
        env["PYTHONPATH"] = str(REPO_ROOT) + (
            ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return ProcessHandle(worker_args(self.python, spec), env=env, cwd=REPO_ROOT,
                            log_path=log_path)

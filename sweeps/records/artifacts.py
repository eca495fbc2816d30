"""Files logged as artifacts of a run, without importing mlflow where the artifacts are here.

Where a run's artifact store is a folder on this machine (a ``file:`` artifact URI, the
default beside a SQLite store: ``mlartifacts/<experiment>/<run id>/artifacts``), the files
are copied into it directly, as MLflow's own LocalArtifactRepository.log_artifacts does
(shutil.copy2 into ``<artifact dir>/<artifact path>/``): importing mlflow and opening its
store would cost a report seconds for a copy of twenty files. Every other artifact store
(a tracking server, S3, ...) goes through MlflowClient, opened by store.open_client.
analysis/load.py reads such local artifacts straight from disk in the same way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sweeps.records.read import local_artifact_dir


def log_files(tracking_uri: str, run_id: str, artifact_uri: str, root: Path,
              files: Sequence[Path], artifact_path: str) -> None:
    """Log ``files`` (paths under ``root``, kept relative to it) as artifacts of run
    ``run_id`` under ``artifact_path``; ``artifact_uri`` is the run's (RunView.artifact_uri,
    "" when not known: then MLflow looks it up)."""
    wanted = PurePosixPath(artifact_path)
    if wanted.is_absolute() or ".." in wanted.parts:  # as MLflow's verify_artifact_path
        raise ValueError(f"artifact path {artifact_path!r} must be relative, without '..'")
    local = local_artifact_dir(artifact_uri)
    if local is not None:
        for path in files:
            target = local / artifact_path / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        return
    from sweeps.records.store import open_client  # imports mlflow: seconds, only here

    client = open_client(tracking_uri)
    # Laid out in a scratch folder and logged in one call: a call per file looks the run
    # up again each time (seconds for twenty files), and logging ``root`` itself would
    # also take anything else a user keeps there.
    with tempfile.TemporaryDirectory(prefix="versweep-artifacts-") as scratch:
        for path in files:
            target = Path(scratch) / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        client.log_artifacts(run_id, scratch, artifact_path)

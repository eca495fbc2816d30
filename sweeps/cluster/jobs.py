"""Ray Jobs: submit a sweep to a running Ray cluster and follow it.

The scheduler (sweeps/schedule.py) talks to a cluster only through this module, over
the cluster's job API (the dashboard address, ``http://HEAD:8265``), with Ray's own
``JobSubmissionClient``: the same calls as ``ray job submit|status|logs|list``. It is
the second module of sweeps/ that imports Ray (sweeps/execute/tune.py runs the trials; this
one only submits and reads jobs, and never joins the cluster as a driver).

Every job this module submits carries the grid's name in its metadata
(``versweep_grid``), and its submission id starts with ``versweep-<grid>-``: that is
how "a sweep of this grid is still going" is answered from the cluster itself, so it
holds for every scheduler and every ``--once`` pointed at the same cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ray.job_submission import JobDetails, JobSubmissionClient

from sweeps import validate
from sweeps.errors import UserError

# The metadata key that names a job's grid, and the prefix of its submission id.
GRID_METADATA_KEY = "versweep_grid"
SUBMISSION_PREFIX = "versweep-"

# Ray's job states (ray.job_submission.JobStatus), as the text it shows.
ACTIVE_STATES = ("PENDING", "RUNNING")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

# The dashboard's default port, for an address given without one.
DEFAULT_DASHBOARD_PORT = 8265

# Ray's client logs every upload and log stream at INFO ("Uploading package ...",
# "WebSocket closed ..."), and warns at every upload that it leaves .git out (which we
# ask for anyway): a scheduler's output would be mostly that. Warnings and errors of
# the rest still show.
_QUIETER_RAY_LOGGERS = {
    "ray.dashboard.modules.dashboard_sdk": logging.WARNING,
    "ray.dashboard.modules.job.sdk": logging.WARNING,
    "ray._private.runtime_env.packaging": logging.WARNING,
    "ray._private.runtime_env.working_dir": logging.ERROR,
}


@dataclass(frozen=True)
class JobState:
    """What the cluster says about one job; times in seconds since the epoch."""

    job_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED
    message: str
    grid: str | None
    entrypoint: str
    start_time: float | None
    end_time: float | None
    exit_code: int | None  # the entrypoint's exit code, once it has ended

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES


def submission_id_prefix(grid: str) -> str:
    """``versweep-<grid>-``: the start of every submission id of this grid's jobs."""
    return f"{SUBMISSION_PREFIX}{slug(grid)}-"


def slug(text: str) -> str:
    """``text`` with anything but letters, digits, ``_`` and ``-`` replaced: safe in ids."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "grid"


def dashboard_url(address: str) -> str:
    """The job API's URL for ``address``: ``HEAD``, ``HEAD:PORT`` or ``http(s)://HEAD[:PORT]``."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    validate.url(address, "--address (the Ray dashboard's)",
                 example=f"http://HEAD:{DEFAULT_DASHBOARD_PORT}")
    parsed = urlparse(address)
    if parsed.port is None:
        address = address.replace(parsed.netloc, f"{parsed.netloc}:{DEFAULT_DASHBOARD_PORT}", 1)
    return address


def _auth_headers() -> dict[str, str]:
    """The cluster's token as an Authorization header, when this machine has one.

    ``ray start`` and ``ray.init`` turn token authentication on when a token exists
    (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) and
    ``RAY_AUTH_MODE`` is unset, but the job client only sends it with
    ``RAY_AUTH_MODE=token``. Sending it whenever it exists makes the scheduler reach
    every cluster ``ray job submit`` on this machine reaches, and the ones started here.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.expanduser().read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


class RayJobs:
    """The job API of one Ray cluster: submit, list, read and follow jobs."""

    def __init__(self, address: str):
        """Connect to the dashboard at ``address``; a UserError within seconds if none answers."""
        self.address = dashboard_url(address)
        for name, level in _QUIETER_RAY_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        parsed = urlparse(self.address)
        port = parsed.port or DEFAULT_DASHBOARD_PORT
        try:
            # The client itself waits long on an unroutable host; a TCP connect says at once.
            socket.create_connection((parsed.hostname, port), timeout=10).close()
        except OSError as exc:
            raise UserError(f"cannot reach the Ray cluster's job API at {self.address} "
                            f"({exc.strerror or exc}); is the cluster up, and is this its "
                            f"dashboard address (port {DEFAULT_DASHBOARD_PORT} unless "
                            "--dashboard-port said otherwise)?") from None
        try:
            self.client = JobSubmissionClient(self.address, headers=_auth_headers())
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, its own
            raise UserError(f"the Ray cluster at {self.address} refused the job client: "
                            f"{_first_line(exc)}") from None

    def grid_jobs(self, grid: str) -> list[JobState]:
        """Every job of ``grid`` the cluster knows (any state), oldest first."""
        prefix = submission_id_prefix(grid)
        found = []
        for details in self.client.list_jobs():
            metadata = details.metadata or {}
            if (metadata.get(GRID_METADATA_KEY) == grid
                    or (details.submission_id or "").startswith(prefix)):
                found.append(_state(details))
        found.sort(key=lambda job: (job.start_time or 0.0, job.job_id))
        return found

    def submit(self, *, submission_id: str, entrypoint: str, grid: str,
               runtime_env: dict, metadata: dict[str, str]) -> str:
        """Submit ``entrypoint`` as a job with this id; return the id.

        Raises JobExists when the cluster already has a job with this id (another
        scheduler submitted the same firing), UserError when the cluster refuses it.
        """
        try:
            return self.client.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                metadata={**metadata, GRID_METADATA_KEY: grid})
        except RuntimeError as exc:
            if "already exists" in str(exc):
                raise JobExists(submission_id) from None
            raise UserError(f"the Ray cluster at {self.address} did not accept job "
                            f"{submission_id}: {_last_line(exc)}") from None

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None when the cluster does not know the id."""
        try:
            return _state(self.client.get_job_info(job_id))
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise

    def logs(self, job_id: str) -> str:
        """The job's whole output so far (the sweep's stdout and stderr)."""
        return self.client.get_job_logs(job_id)

    def follow_logs(self, job_id: str, write: Callable[[str], object]) -> None:
        """Call ``write`` with each new piece of the job's output until the job ends."""
        async def tail() -> None:
            async for text in self.client.tail_job_logs(job_id):
                write(text)

        asyncio.run(tail())


class JobExists(Exception):
    """The cluster already has a job with this submission id."""


def _last_line(error: BaseException) -> str:
    # Ray's HTTP errors end with the server's exception line, the part that says why.
    lines = [line.strip() for line in str(error).strip().splitlines()
             if line.strip() and line.strip() != "."]
    return lines[-1] if lines else type(error).__name__


def _state(details: JobDetails) -> JobState:
    metadata = details.metadata or {}
    return JobState(
        job_id=details.submission_id or details.job_id or "",
        status=str(getattr(details.status, "value", details.status)),
        message=details.message or "",
        grid=metadata.get(GRID_METADATA_KEY),
        entrypoint=details.entrypoint or "",
        start_time=details.start_time / 1000 if details.start_time else None,
        end_time=details.end_time / 1000 if details.end_time else None,
        exit_code=getattr(details, "driver_exit_code", None))

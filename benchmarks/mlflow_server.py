"""A real ``mlflow server`` on loopback, for the tests and the benchmarks that need one.

    with MlflowServer(home, "sqlite:///home/mlflow.db") as server:   # or postgresql://...
        ... server.url ...

One port and one store for its whole life, so that it can be killed, frozen (SIGSTOP) and
started again as the same server (benchmarks/fault_mlflow_outage.py). It proxies the
artifacts (``--artifacts-destination home/artifacts``): a client anywhere logs them over
HTTP, and a run's artifact URI is ``mlflow-artifacts:/...``. Tracking only: MLflow's
background job runner is off, so it does not compete for the CPU. Its log is
``home/server.log`` (``server-2.log`` and so on after a restart). It runs in a process group
of its own (uvicorn's workers are its children) and is stopped as one.

Used by tests/sweeping.py (``running_mlflow_server``), benchmarks/fault_mlflow_outage.py
and benchmarks/records_write_rate.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` over ``backend_uri`` (a SQLite path is taken as ``sqlite:///PATH``)."""

    def __init__(self, home: Path, backend_uri: str | Path, *, port: int | None = None,
                 workers: int = 1, env: dict[str, str] | None = None,
                 start_limit_s: float = 120):
        self.home = Path(home)
        text = str(backend_uri)
        self.backend_uri = text if "://" in text else f"sqlite:///{text}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = env or {}
        self.start_limit_s = start_limit_s
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        """The log of the newest start."""
        return self.home / ("server.log" if self.starts <= 1 else f"server-{self.starts}.log")

    def start(self) -> MlflowServer:
        """Start it (again, on the same port and store) and wait until it answers."""
        self.starts += 1
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.home / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers)],
                cwd=self.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.env))
        deadline = time.monotonic() + self.start_limit_s
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mlflow server did not start:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server's whole process group."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        """End it (a frozen one is thawed first): SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

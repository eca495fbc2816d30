"""A private PostgreSQL for the tests: the database a team's tracking server runs on.

``running_postgres(home)`` makes a new cluster (``initdb``) in a fresh directory, starts it
on a free loopback port with its Unix socket in that directory, creates a database and a
password-protected role for MLflow, and yields the SQLAlchemy URI a tracking server is
given (``postgresql+psycopg2://mlflow:<password>@127.0.0.1:<port>/mlflow``: the driver is
named because SQLAlchemy 2.1 takes a bare ``postgresql://`` to mean psycopg 3, and the
driver installed with versweep's ``server`` extra, as MLflow's job runner supports, is
psycopg2). Afterwards the server
is stopped (``pg_ctl stop``; its postmaster by pid if that fails) and the directory removed.

PostgreSQL refuses to run as root: where the tests run as root (CI's .ci/run does), the
cluster is made and run as the ``postgres`` system user (Debian's package makes it) through
``runuser``; otherwise as the user running the tests. Debian's binaries live in
/usr/lib/postgresql/<major>/bin, off PATH; the newest there is used, else ``initdb`` on PATH.

Connections over TCP need the password (scram-sha-256), as on a team's server; the tests'
own set-up goes through the socket directory, which only the cluster's owner can enter.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from needs import need
from sweeping import free_port

RUN_AS = "postgres"  # the system user Debian's postgresql package makes


def bin_dir() -> Path | None:
    """Where initdb, pg_ctl and psql are: Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def problem() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None (tests/needs.py)."""
    where = bin_dir()
    if where is None or not (where / "pg_ctl").exists():
        return ("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin "
                "or on PATH")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no '{RUN_AS}' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is not on PATH"
    try:
        import psycopg2  # noqa: F401  (mlflow server's driver for postgresql:// URIs)
    except ImportError:
        return "the PostgreSQL driver psycopg2 is not installed (the test extra brings it)"
    return None


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def running_postgres(*, database: str = "mlflow", user: str = "mlflow") -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1; yields the URI of ``database`` for ``user``."""
    where = bin_dir()
    assert where is not None, problem()
    home = Path(tempfile.mkdtemp(prefix="vspg-", dir="/tmp"))  # short: the socket path
    if os.geteuid() == 0:
        owner = pwd.getpwnam(RUN_AS)
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data, log = home / "data", home / "server.log"
    port = free_port()
    password = secrets.token_hex(16)

    def owner_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(_as_owner(list(args)), cwd=home, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n{tail}")
        return done

    started = False
    try:
        owner_run(str(where / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256")
        options = (f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=100 -c shared_buffers=32MB")
        owner_run(str(where / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                  "-w", "-t", "120", "start")
        started = True
        psql = [str(where / "psql"), "-h", str(home), "-p", str(port), "-U", "postgres",
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"]
        owner_run(*psql, f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        owner_run(*psql, f"CREATE DATABASE {database} OWNER {user}")
        yield f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            _stop(where, data)
        shutil.rmtree(home, ignore_errors=True)


def _stop(where: Path, data: Path) -> None:
    """``pg_ctl stop -m fast``; if it does not stop, SIGKILL its postmaster by pid."""
    try:
        subprocess.run(_as_owner([str(where / "pg_ctl"), "-D", str(data), "-m", "fast",
                                  "-w", "-t", "30", "stop"]),
                       capture_output=True, timeout=40)
    except subprocess.TimeoutExpired:
        pass
    pid_file = data / "postmaster.pid"
    if pid_file.exists():  # still running: end it (and its children, its process group)
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGKILL)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            pass
        time.sleep(0.5)


def migrate(uri: str) -> None:
    """Create MLflow's tables in the database (``mlflow db upgrade``), as a team does once
    before the first ``mlflow server`` (a server on an empty database does it itself, but
    slowly: about 45 s of migrations on a loaded 2-core machine)."""
    import sys

    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"mlflow db upgrade failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """One private PostgreSQL for the test run, its MLflow database migrated; tests that
    share it keep apart by experiment name."""
    need("postgresql")
    with running_postgres() as uri:
        migrate(uri)
        yield uri


def password_file(uri: str, path: Path) -> str:
    """Move the password of ``uri`` into a libpq password file at ``path`` (mode 0600, as
    README's deployment keeps it: off the server's command line); returns the URI
    without it, for a process given ``PGPASSFILE=path``."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    path.write_text(f"{parts.hostname}:{parts.port}:{parts.path.lstrip('/')}:"
                    f"{parts.username}:{parts.password}\n")
    path.chmod(0o600)
    return uri.replace(f":{parts.password}@", "@", 1)

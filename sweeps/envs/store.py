"""The environments on disk: which one a matrix entry gets, building it, using it, evicting it.

    store = EnvStore()                          # $VERSWEEP_ENVS_DIR, $VERSWEEP_ENVS_BUDGET
    plan = store.plan(image)                    # an EnvPlan, or why none can be made here
    with store.acquire(plan, progress=print) as env:   # built (once) and held while used
        subprocess.run([env.python, "-m", "workers", "env", ...])
    store.prune()                               # evict to the budget

One environment per (torch version, Python minor version): matrix entries that differ only
in their CUDA build share it (``torch-2.13.0-py3.11``). It holds ``torch==<version>`` from
the package index uv uses (PyPI unless ``UV_DEFAULT_INDEX`` / ``UV_INDEX_URL`` say otherwise;
uv does not read pip's configuration) and what torch itself depends on, plus NumPy 1.x for
torch < 2.3 (``requirements``), nothing else: the workers are the standard library plus
torch. On Linux x86_64 PyPI's torch is a CUDA build that also runs on the CPU.

Which Python: the entry's own ``python`` if an interpreter of that minor version is here
(sweeps/envs/pythons.py), else the newest local interpreter for which the index has a torch
wheel. Whether it has one is asked of uv (``uv pip install --dry-run``, no download) and
remembered in ``.wheels.json``, the negative answers too. Where nothing fits (no interpreter,
no such torch on the index, no wheel for this platform and these Pythons), ``plan`` returns
the reason as one line, which the venv backend turns into an ``unsupported`` trial before
any worker starts.

Layout of ``$VERSWEEP_ENVS_DIR`` (default ``~/.cache/versweep/envs``)::

    torch-2.13.0-py3.11/              an environment; versweep-env.json is its marker
    .building-torch-2.13.0-py3.11-<random>/   a build in progress (or a crashed one)
    .trash-<key>-<random>/            an environment being deleted
    .locks/<key>.build  .locks/<key>.use      its locks (flock)
    .wheels.json  .sizes.json         what the index has; how big each environment was

Builds are:

- built aside: ``uv venv --relocatable --python <interpreter>`` then ``uv pip install
  torch==<version>`` from uv's shared cache (hard links on one filesystem: thirty
  environments do not hold thirty copies of one library); where uv cannot serve the
  interpreter, ``<interpreter> -m venv`` and that environment's pip (from the index uv would
  use, never pip's own configuration). The bytecode is compiled at the build (uv's
  environments by their interpreter's compileall, pip's by pip): a trial never compiles
  torch's sources, also where PYTHONDONTWRITEBYTECODE forbids caching them;
- verified: ``<env>/bin/python -m workers env`` (PYTHONPATH = this checkout) must report
  the torch that was asked for;
- recorded: a marker (torch, Python, interpreter, builder, built_at, last_used, size,
  ``pip freeze``), written last, then the directory is renamed into place. An environment
  without a marker, or whose marker or files disagree with its name, is never used: it is
  deleted and built again;
- locked: an exclusive ``flock`` on ``.locks/<key>.build`` while an environment is checked,
  built or deleted, so two processes that need it build it once (the second waits, then
  finds it built). A crashed build leaves only its ``.building-*`` directory, which nothing
  reads and the next build of that key (or ``prune``) deletes. A running trial holds a
  shared ``flock`` on ``.locks/<key>.use``: an environment in use is never evicted;
- bounded: before a build, the least recently used environments that no trial uses are
  evicted until the new one fits ``$VERSWEEP_ENVS_BUDGET`` (default 100g; sizes like "40g",
  "512m"). Sizes count every file of an environment, also those hard-linked with uv's cache
  or other environments (as ``du -s`` of that environment alone does), so the budget is
  conservative: ``versweep envs list`` also prints what they take on disk together. A
  budget too small for one environment is one clear error.

Host side: never imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweeps.envs.pythons import Interpreter, find_interpreters, minor_of
from sweeps.errors import UserError
from sweeps.grid.spec import Image
from sweeps.paths import REPO_ROOT
from sweeps.progress import format_bytes

ENVS_DIR_VAR = "VERSWEEP_ENVS_DIR"
BUDGET_VAR = "VERSWEEP_ENVS_BUDGET"
UV_VAR = "VERSWEEP_UV"
DEFAULT_BUDGET = "100g"
MARKER = "versweep-env.json"
# 2: the marker also holds the wheel's own CUDA version and GPU architectures (what the GPU
# rules judge); an environment with a format-1 marker is rebuilt on use (seconds, from
# uv's cache) rather than judged by its matrix entry's lists.
MARKER_FORMAT = 2
# No environment with a torch in it is smaller than this (the smallest CPU wheels unpack to
# more): a budget below it is refused before anything is built.
MIN_ENV_BYTES = 256 * 2**20
# What a build is assumed to need before one of its kind was measured here: a PyPI CUDA
# build of torch 2.x unpacks to about 4.5 GB on Linux x86_64.
GUESS_ENV_BYTES = 5 * 2**30
# How long an answer of the index (a wheel exists or not) is trusted.
WHEEL_ANSWER_TTL_S = 30 * 24 * 3600
BUILD_TIMEOUT_S = 3 * 3600
# Seconds another process may hold an environment's build lock before this one says it
# waits (a check of a built environment takes well under it; a build takes longer).
WAIT_SAY_S = 2.0
VERIFY_TIMEOUT_S = 600
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_TORCH_VERSION = re.compile(r"^\d+(\.\d+){0,3}([a-z0-9.]*)$")
# Words of uv's messages that say the index could not be reached (not that it said no).
_UNREACHABLE = ("failed to fetch", "error sending request", "dns error", "could not connect",
                "connection refused", "network is unreachable", "timed out", "tcp connect",
                "failed to download", "connection reset", "name or service not known")
# ... that the interpreter is one uv cannot use (then the standard library's venv and pip).
_UV_CANNOT_USE = ("failed to inspect python interpreter", "can't use python",
                  "does not support", "unsupported python", "failed to query python")

Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


# ---------------------------------------------------------------- settings


def envs_dir() -> Path:
    """``$VERSWEEP_ENVS_DIR``, else ``~/.cache/versweep/envs`` (``$XDG_CACHE_HOME`` if set)."""
    given = os.environ.get(ENVS_DIR_VAR)
    if given:
        return Path(given).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "versweep" / "envs"


def parse_size(text: str, what: str = BUDGET_VAR) -> int:
    """Bytes of a size like "40g", "512m", "1.5t" or "1000000" (binary units), or a UserError."""
    match = _SIZE.match(str(text))
    if not match:
        raise UserError(f"{what}='{text}' is not a size like '40g' or '512m'")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit])


def format_size(size: int | float | None) -> str:
    """1.5 GB, 230 MB, 12 kB (binary units, one decimal where it helps), as every
    progress line says sizes (sweeps/progress.py)."""
    return format_bytes(size)


def find_uv() -> str | None:
    """The uv binary: ``$VERSWEEP_UV``, the uv Python package's, beside this Python, on PATH."""
    given = os.environ.get(UV_VAR)
    if given:
        return given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    try:
        import uv  # the pip-installable uv ships its binary

        found = uv.find_uv_bin()
        if found and os.path.isfile(found):
            return str(found)
    except (ImportError, FileNotFoundError, AttributeError, TypeError):
        # TypeError: uv's finder reads sysconfig's EXE, which is None while another
        # thread is still filling sysconfig's variables (seen with several threads at once).
        pass
    beside = Path(sys.executable).with_name("uv")
    if beside.is_file():
        return str(beside)
    return shutil.which("uv")


def index_name() -> str:
    """The package index uv installs from, as a person reads it in a message."""
    return os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or "PyPI"


def host_platform() -> str:
    """"linux x86_64": the platform wheels must be built for (environments are built here)."""
    return f"{sys.platform} {platform.machine()}"


def env_key(torch: str, python_minor: str) -> str:
    """The directory name of an environment: ``torch-2.13.0-py3.11``."""
    return f"torch-{torch}-py{python_minor}"


def requirements(torch: str) -> list[str]:
    """What an environment of ``torch`` installs: torch, and what its import needs undeclared.

    - NumPy 1.x: torch 1.0-1.2 import NumPy at start-up without declaring it (``import
      torch`` fails with "numpy.core.multiarray failed to import" without it), and every
      torch before 2.3 was compiled against NumPy 1.x and breaks under NumPy 2; the images
      of those lines ship NumPy 1.x too.
    - setuptools < 70: torch 1.10 to 2.1 reach ``pkg_resources.packaging`` from
      torch/torch_version.py without declaring it; pip's venvs bring setuptools, uv's do
      not, and setuptools 70 dropped that module. 1.10 and 1.11 import it at start-up
      (found by versions-cpu: torch 1.10.0 failed to build without it); 1.12 to 2.1 only
      when a TorchVersion is compared with something that is not a version, which 2.1's
      ``torch.optim.Adam`` does through torch._dynamo (found by the second part of
      versions-cpu: every rnn_bench trial on 2.1.0 failed with "No module named
      'pkg_resources'"). 2.2 and later do not use it.
    Nothing else: the workers are the standard library plus torch.
    """
    wanted = [f"torch=={torch}"]
    numbers = tuple(int(part) for part in re.findall(r"\d+", torch)[:2])
    if len(numbers) == 2 and numbers < (2, 3):
        wanted.append("numpy<2")
    if len(numbers) == 2 and (1, 10) <= numbers < (2, 2):
        wanted.append("setuptools<70")
    return wanted


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base_version(version: str) -> str:
    """"2.13.0" of "2.13.0+cu130" (the local label names the build, not the release)."""
    return str(version).split("+", 1)[0]


# ---------------------------------------------------------------- what a plan and an env are


@dataclass(frozen=True)
class EnvPlan:
    """The environment a matrix entry gets here (built or not yet)."""

    image: str  # the matrix entry's name
    torch: str
    interpreter: Interpreter
    key: str
    path: Path
    note: str = ""  # why this Python, where it is not the entry's own

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass
class Env:
    """A built, verified environment: its path, its marker, and whether this call built it."""

    key: str
    path: Path
    marker: dict[str, Any]
    built: bool = False  # True where this call built it (False: it was there)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass
class EnvLease:
    """An environment held for a running trial: a shared flock that keeps it from eviction."""

    env: Env
    _lock: _Flock | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Env:
        return self.env

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class EnvState:
    """What ``list`` shows of one environment directory."""

    key: str
    path: Path
    marker: dict[str, Any] | None
    problem: str | None  # None: valid
    in_use: bool


class _Flock:
    """One flock on one lock file; released on release() or when the process ends."""

    def __init__(self, path: Path, *, shared: bool = False):
        self.path = path
        self.shared = shared
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _held(path: Path, *, shared: bool = False) -> Iterator[None]:
    lock = _Flock(path, shared=shared)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class BuildError(UserError):
    """An environment could not be built (the index said no, a step failed): one line."""


class BudgetError(UserError):
    """The disk budget cannot hold the environment: one line, what to raise it to."""


# ---------------------------------------------------------------- the store


class EnvStore:
    """The environments under one directory, with one disk budget."""

    def __init__(self, root: Path | str | None = None, *, budget: str | int | None = None,
                 uv: str | None = None, builder: str = "auto"):
        """``builder``: "auto" (uv, else the interpreter's venv and pip where uv cannot
        serve it) or "pip" (always the standard library's venv and pip)."""
        if builder not in ("auto", "pip"):
            raise ValueError(f"builder must be 'auto' or 'pip', not {builder!r}")
        self.builder = builder
        self.root = Path(root).absolute() if root is not None else envs_dir()
        # The folder, or the nearest of its parents that exists, must be a folder.
        there = next((path for path in (self.root, *self.root.parents) if path.exists()),
                     None)
        if there is not None and not there.is_dir():
            where = "is a file" if there == self.root else f"is below the file {there}"
            raise UserError(f"the environments folder {self.root} {where}, not a folder; "
                            f"set {ENVS_DIR_VAR} to a folder (or unset it for "
                            "~/.cache/versweep/envs)")
        if budget is None:
            budget = os.environ.get(BUDGET_VAR) or DEFAULT_BUDGET
        self.budget_text = str(budget)
        self.budget = budget if isinstance(budget, int) else parse_size(budget)
        self._uv = uv
        self._state_lock = threading.Lock()

    # ------------------------------------------------------------ paths and small files

    @property
    def uv(self) -> str:
        found = self._uv or find_uv()
        if found is None:
            raise UserError("the venv backend builds environments with uv, which is not "
                            "installed here: pip install uv (or set VERSWEEP_UV to its path)")
        self._uv = found
        return found

    def path_of(self, key: str) -> Path:
        return self.root / key

    def _lock_path(self, key: str, kind: str) -> Path:
        return self.root / ".locks" / f"{key}.{kind}"

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _update_json(self, name: str, key: str, value: Any) -> None:
        """Set one key of a small state file, atomically, under the state lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._state_lock, _held(self.root / ".locks" / "state"):
            data = self._read_json(name)
            data[key] = value
            _write_json_atomic(self.root / name, data)

    def check_writable(self) -> None:
        """A UserError (one line) if environments cannot be kept in the directory."""
        try:
            (self.root / ".locks").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot keep environments in {self.root} ({exc.strerror}); set "
                            f"{ENVS_DIR_VAR} to a writable directory") from None

    # ------------------------------------------------------------ is an env usable?

    def read_marker(self, key: str) -> dict[str, Any] | None:
        try:
            marker = json.loads((self.path_of(key) / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def problem(self, key: str) -> str | None:
        """Why the environment ``key`` must not be used (None: it is whole and as named)."""
        path = self.path_of(key)
        if not path.is_dir():
            return "not built"
        if not (path / MARKER).is_file():
            return "it has no marker (a half-built or foreign directory)"
        marker = self.read_marker(key)
        if marker is None:
            return "its marker is unreadable"
        parts = _key_parts(key)
        if parts is None:
            return f"'{key}' is not the name of an environment"
        torch, minor = parts
        expected: dict[str, Any] = {"format": MARKER_FORMAT, "key": key, "torch": torch,
                                    "python_minor": minor}
        for name, value in expected.items():
            if marker.get(name) != value:
                return f"its marker says {name} {marker.get(name)!r}, not {value!r}"
        wanted = requirements(torch)
        if marker.get("requirements") != wanted:  # built by a versweep that installed less
            return (f"it was built with {marker.get('requirements')}, and this versweep "
                    f"installs {wanted}")
        if marker.get("bytecode") is not True:  # built by a versweep that compiled nothing
            return ("it was built without compiled bytecode (every trial would compile "
                    "torch's sources again)")
        if not (path / "bin" / "python").exists():  # a link to an interpreter now gone
            return f"its interpreter {marker.get('interpreter')} is gone"
        site = path / str(marker.get("site_packages", ""))
        if not (site / "torch" / "__init__.py").is_file():
            return "torch is missing from it"
        if not any(_base_version(p.name[len("torch-"):-len(".dist-info")]) == torch
                   for p in site.glob("torch-*.dist-info")):
            return f"its installed torch is not {torch}"
        return None

    def _valid_marker(self, key: str) -> dict[str, Any] | None:
        return self.read_marker(key) if self.problem(key) is None else None

    def in_use(self, key: str) -> bool:
        """Whether a running trial holds the environment (its shared use lock)."""
        lock = _Flock(self._lock_path(key, "use"))
        if not lock.acquire(blocking=False):
            return True
        lock.release()
        return False

    # ------------------------------------------------------------ which env for an entry

    def plan(self, image: Image) -> EnvPlan | str:
        """The environment ``image`` gets here, or why none can be made (one line).

        Asks the index (uv, a dry run) only where no environment of that torch and Python
        is built and no earlier answer is remembered.
        """
        torch = image.torch
        if not _TORCH_VERSION.match(torch):
            return f"'{torch}' is not a torch version that can be installed"
        wanted = minor_of(image.python)
        marker = self._valid_marker(env_key(torch, wanted))
        if marker is not None:  # built: no interpreter search, no index
            return self._plan_of(image, torch, _marker_interpreter(marker), "")
        interpreters = find_interpreters()
        if not interpreters:
            return ("no Python >= 3.6 found here (PATH, pyenv, uv, conda); install one or "
                    "name interpreters in VERSWEEP_ENVS_PYTHONS")
        own = [i for i in interpreters if i.minor == wanted]
        order = own + [i for i in interpreters if i.minor != wanted]
        refused: list[str] = []
        tags = ""
        for interpreter in order:
            note = "" if interpreter.minor == wanted else (
                f"Python {wanted} (the matrix's) is not here" if not own else
                f"the index has no torch {torch} for Python {wanted}")
            if self._valid_marker(env_key(torch, interpreter.minor)) is not None:
                return self._plan_of(image, torch, interpreter, note)
            kind, text = self.wheel_answer(torch, interpreter)
            if kind == "missing":
                return f"torch {torch} is on no package index reachable here ({index_name()} " \
                       f"has no torch=={torch})"
            if kind == "none":
                refused.append(interpreter.minor)
                tags = text or tags
                continue
            return self._plan_of(image, torch, interpreter, note)  # "ok" or "unknown"
        missing = "" if own else f"Python {wanted} (the matrix's) is not here; "
        having = f" (it has wheels for {tags})" if tags else ""
        return (f"no Python here has a torch {torch} wheel for {host_platform()} on "
                f"{index_name()}{having}: {missing}tried {', '.join(refused)}")

    def _plan_of(self, image: Image, torch: str, interpreter: Interpreter,
                 note: str) -> EnvPlan:
        key = env_key(torch, interpreter.minor)
        return EnvPlan(image=image.name, torch=torch, interpreter=interpreter, key=key,
                       path=self.path_of(key), note=note)

    def wheel_answer(self, torch: str, interpreter: Interpreter) -> tuple[str, str]:
        """Whether the index has ``torch==<torch>`` for this interpreter and platform.

        ("ok", ""), ("none", the ABI tags it has wheels for), ("missing", "") when no such
        version exists at all, or ("unknown", why) when uv cannot tell (unreachable index,
        an interpreter uv cannot inspect): the build then tries. Definite answers are
        remembered in .wheels.json.
        """
        cache_key = _wheel_key(torch, interpreter)
        remembered = self._read_json(".wheels.json").get(cache_key)
        if isinstance(remembered, dict) and \
                time.time() - float(remembered.get("at", 0)) < WHEEL_ANSWER_TTL_S:
            return str(remembered.get("kind")), str(remembered.get("text", ""))
        kind, text = self._ask_index(torch, interpreter, offline=False)
        if kind == "unknown" and _says(text, _UNREACHABLE):
            offline_kind, _ = self._ask_index(torch, interpreter, offline=True)
            if offline_kind == "ok":  # uv's cache has it: installable without the index
                return "ok", ""
            return "unknown", f"the package index cannot be reached: {text}"
        if kind in ("ok", "none", "missing"):
            self._remember(cache_key, kind, text)
        return kind, text

    def _remember(self, cache_key: str, kind: str, text: str) -> None:
        try:
            self._update_json(".wheels.json", cache_key,
                              {"kind": kind, "text": text, "at": time.time()})
        except OSError:
            pass  # an unwritable directory only costs asking again

    def _ask_index(self, torch: str, interpreter: Interpreter, *,
                   offline: bool) -> tuple[str, str]:
        args = [self.uv, "pip", "install", "--dry-run", "--no-deps", "--break-system-packages",
                "--python", interpreter.path, f"torch=={torch}"]
        if offline:
            args.append("--offline")
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                                  env=_uv_env(), cwd=_neutral_cwd(self.root))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "unknown", f"uv did not answer: {exc}"
        if proc.returncode == 0:
            return "ok", ""
        return _classify(proc.stderr + proc.stdout, torch)

    # ------------------------------------------------------------ building

    def ensure(self, plan: EnvPlan, progress: Progress = _quiet) -> Env:
        """The environment of ``plan``, built first if it is missing or not whole."""
        lock = _Flock(self._lock_path(plan.key, "build"))
        self._acquire_build_lock(lock, plan.key, progress)
        try:
            return self._ensure_locked(plan, progress)
        finally:
            lock.release()

    def acquire(self, plan: EnvPlan, progress: Progress = _quiet) -> EnvLease:
        """``ensure``, then hold the environment for a trial until the lease is released.

        The use lock is taken before the build lock is let go, so nothing can evict or
        rebuild the environment between the check and the use.
        """
        build = _Flock(self._lock_path(plan.key, "build"))
        self._acquire_build_lock(build, plan.key, progress)
        try:
            env = self._ensure_locked(plan, progress)
            use = _Flock(self._lock_path(plan.key, "use"), shared=True)
            use.acquire()
            env.marker["last_used"] = _now()
            with contextlib.suppress(OSError):
                _write_json_atomic(env.path / MARKER, env.marker)
            return EnvLease(env, use)
        finally:
            build.release()

    @staticmethod
    def _acquire_build_lock(lock: _Flock, key: str, progress: Progress) -> None:
        """Take the key's build lock; say so when another process holds it for long (its
        build of the same environment: this one then finds it built)."""
        if lock.acquire(blocking=False):
            return
        said = threading.Timer(WAIT_SAY_S, progress, [
            f"{key}: waiting for another process that is building or checking it"])
        said.daemon = True
        said.start()
        try:
            lock.acquire()
        finally:
            said.cancel()

    def _ensure_locked(self, plan: EnvPlan, progress: Progress) -> Env:
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers(plan.key, progress)  # we hold the key's lock: nobody builds it
        problem = self.problem(plan.key)
        if problem is None:
            marker = self.read_marker(plan.key)
            assert marker is not None
            return Env(plan.key, plan.path, marker, built=False)
        if plan.path.exists() or plan.path.is_symlink():
            if self.in_use(plan.key):
                raise BuildError(f"environment {plan.path} is not whole ({problem}) but a "
                                 "running trial holds it; rebuild it once that trial ends")
            progress(f"{plan.key}: {problem}; deleting it and building it again")
            self._delete(plan.path, plan.key)
        return self._build(plan, progress)

    def _clean_leftovers(self, key: str, progress: Progress) -> None:
        """Delete the directories crashed builds and deletions of ``key`` left (we hold its
        build lock: nothing else builds it now)."""
        for pattern in (f".building-{key}-*", f".trash-{key}-*"):
            for stale in self.root.glob(pattern):
                progress(f"{key}: deleting {stale.name}, left by a build or deletion that "
                         "did not finish")
                if stale.name.startswith(".building-"):
                    trash = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
                    try:
                        os.rename(stale, trash)  # gone from its name at once, whatever follows
                    except OSError:
                        continue
                    stale = trash
                shutil.rmtree(stale, ignore_errors=True)

    def _delete(self, path: Path, key: str) -> None:
        """Move the environment out of its name at once (atomic), then delete it."""
        trash = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def known_size(self, key: str) -> int | None:
        value = self._read_json(".sizes.json").get(key)
        return int(value) if isinstance(value, (int, float)) else None

    def check_budget(self) -> None:
        """A budget below any environment's size is a mistake, refused before a build
        (nothing would fit) or a prune (it would evict every environment not in use)."""
        if self.budget < MIN_ENV_BYTES:
            raise BudgetError(f"the environments budget {BUDGET_VAR}={self.budget_text} is too "
                              f"small for one environment (each takes at least "
                              f"{format_size(MIN_ENV_BYTES)}); raise it, e.g. to 40g")

    def _check_budget_fits(self, plan: EnvPlan, size: int | None, measured: bool) -> None:
        self.check_budget()
        if size is not None and size > self.budget:
            how = "measured" if measured else "measured at its last build"
            raise BudgetError(f"the environments budget {BUDGET_VAR}={self.budget_text} is too "
                              f"small for one environment: {plan.key} takes "
                            f"{format_size(size)} ({how}); raise it to at least "
                            f"{_round_up_g(size)}")

    def _build(self, plan: EnvPlan, progress: Progress) -> Env:
        known = self.known_size(plan.key)
        self._check_budget_fits(plan, known, measured=False)
        guess = known if known is not None else min(GUESS_ENV_BYTES, self.budget)
        self.make_room(guess, keep=plan.key, progress=progress)

        started = time.monotonic()
        tmp = self.root / f".building-{plan.key}-{uuid.uuid4().hex[:8]}"
        interpreter = plan.interpreter
        progress(f"{plan.key}: building torch {plan.torch} with Python {interpreter.full} "
                 f"({interpreter.path}) in {tmp.name}")
        try:
            builder = self._install(plan, tmp, progress)
            progress(f"{plan.key}: verifying (python -m workers env)")
            event = self._verify(plan, tmp)
            reported = str(event.get("torch"))
            freeze = self._freeze(tmp, builder)
            size, own = disk_usage(tmp)
            sites = sorted(tmp.glob("lib/python*/site-packages"))
            if not sites:
                raise BuildError(f"cannot build {plan.key}: it has no site-packages")
            marker = {
                "format": MARKER_FORMAT, "key": plan.key, "torch": plan.torch,
                "torch_reported": reported, "python": interpreter.full,
                # What the wheel really is (PyPI's default CUDA build, not the entry's):
                # the venv backend's GPU rules read these (sweeps/execute/backends/venv.py).
                "cuda_reported": event.get("cuda"), "cudnn_reported": event.get("cudnn"),
                "archs_reported": event.get("compiled_archs"),
                "python_minor": interpreter.minor, "interpreter": interpreter.path,
                "builder": builder, "requirements": requirements(plan.torch),
                "bytecode": True,  # compiled at install (both builders)
                "site_packages": str(sites[0].relative_to(tmp)),
                "built_at": _now(), "last_used": _now(),
                "build_seconds": round(time.monotonic() - started, 1),
                "size_bytes": size, "own_bytes": own, "platform": host_platform(),
                "index": index_name(), "freeze": freeze,
            }
            self._update_json(".sizes.json", plan.key, size)
            self._check_budget_fits(plan, size, measured=True)
            self.make_room(size, keep=plan.key, progress=progress)
            _write_json_atomic(tmp / MARKER, marker)  # the marker last: then it is whole
            os.rename(tmp, plan.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"{plan.key}: built in {marker['build_seconds']:.1f} s, {format_size(size)} "
                 f"({format_size(own)} not shared with uv's cache), torch {reported}")
        return Env(plan.key, plan.path, marker, built=True)

    def _install(self, plan: EnvPlan, tmp: Path, progress: Progress) -> str:
        """Make the environment at ``tmp`` with torch in it; return how ("uv 0.x", "venv+pip")."""
        if self.builder == "pip":
            return self._install_with_pip(plan, tmp, progress)
        uv = self.uv
        code, out = _stream([uv, "venv", "--no-project", "--relocatable", "--python",
                             plan.interpreter.path, str(tmp)], progress, plan.key,
                            cwd=_neutral_cwd(self.root))
        if code == 0:
            args = [uv, "pip", "install", "--python", str(tmp / "bin" / "python"),
                    *requirements(plan.torch)]
            code, out = _stream(args, progress, plan.key, cwd=_neutral_cwd(self.root))
            if code != 0 and _says(out, _UNREACHABLE):
                progress(f"{plan.key}: the index cannot be reached; trying uv's cache only")
                code, _ = _stream(args + ["--offline"], progress, plan.key,
                                  cwd=_neutral_cwd(self.root))
                if code != 0:
                    raise BuildError(f"cannot build {plan.key}: the package index "
                                    f"{index_name()} cannot be reached "
                                    f"({_first_error(out)}) and uv's cache does not hold "
                                    f"torch=={plan.torch} and its dependencies")
            if code == 0:
                self._compile_bytecode(plan, tmp, progress)
                return _uv_version(uv)
        if not _says(out, _UV_CANNOT_USE):
            self._refuse(plan, out)
        progress(f"{plan.key}: uv cannot use Python {plan.interpreter.full}; building with "
                 "its own venv module and pip")
        shutil.rmtree(tmp, ignore_errors=True)
        return self._install_with_pip(plan, tmp, progress)

    def _compile_bytecode(self, plan: EnvPlan, tmp: Path, progress: Progress) -> None:
        """Compile the environment's packages now, once, with its own interpreter.

        Where PYTHONDONTWRITEBYTECODE is set (many CI runners and shared machines) a trial
        would otherwise compile torch's sources again in every worker: seconds of CPU
        before its first event (docs/performance.md). Not uv's --compile-bytecode: it
        fails on Python 3.6. A file that does not compile (a template, a test for another
        Python) is left as it is, as pip and uv leave it; its import would fail anyway.
        """
        progress(f"{plan.key}: compiling its bytecode")
        sites = sorted(tmp.glob("lib/python*/site-packages"))
        try:
            proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "compileall", "-q",
                                   "-j", "0", *map(str, sites)], capture_output=True,
                                  text=True, cwd=_neutral_cwd(self.root),
                                  preexec_fn=_die_with_builder(), timeout=VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BuildError(f"cannot build {plan.key}: compiling its bytecode took more "
                             f"than {VERIFY_TIMEOUT_S} s") from None
        if proc.returncode not in (0, 1):  # 1: some file did not compile
            raise BuildError(f"cannot build {plan.key}: compiling its bytecode failed: "
                             f"{_first_error(proc.stdout + proc.stderr)}")

    def _install_with_pip(self, plan: EnvPlan, tmp: Path, progress: Progress) -> str:
        code, out = _stream([plan.interpreter.path, "-m", "venv", str(tmp)], progress, plan.key,
                            cwd=_neutral_cwd(self.root))
        if code != 0:
            raise BuildError(f"cannot build {plan.key}: '{plan.interpreter.path} -m venv' "
                            f"failed: {_first_error(out)}")
        index = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") \
            or "https://pypi.org/simple"
        code, out = _stream([str(tmp / "bin" / "python"), "-m", "pip", "install",
                             "--no-input", "--compile", "--index-url", index,
                             *requirements(plan.torch)],
                            progress, plan.key, cwd=_neutral_cwd(self.root), env=_pip_env())
        if code != 0:
            if _says(out, ("no matching distribution", "could not find a version")):
                self._remember(_wheel_key(plan.torch, plan.interpreter), "none", "")
            raise BuildError(f"cannot build {plan.key}: pip could not install "
                            f"torch=={plan.torch}: {_first_error(out)}")
        return "venv+pip"

    def _refuse(self, plan: EnvPlan, out: str) -> None:
        """Raise the one-line reason uv gave; remember it where the index said no."""
        kind, text = _classify(out, plan.torch)
        if kind in ("none", "missing"):
            self._remember(_wheel_key(plan.torch, plan.interpreter), kind, text)
            raise BuildError(f"cannot build {plan.key}: {index_name()} has no torch "
                            f"{plan.torch} for Python {plan.interpreter.minor} on "
                            f"{host_platform()}" + (f" (it has wheels for {text})" if text
                                                    else ""))
        raise BuildError(f"cannot build {plan.key}: {_first_error(out)}")

    def _verify(self, plan: EnvPlan, tmp: Path) -> dict:
        """Run the env workload in the new environment; return its env event."""
        args = [str(tmp / "bin" / "python"), "-m", "workers", "env", "--config",
                '{"device":"cpu"}']
        env = worker_environment({"CUDA_VISIBLE_DEVICES": ""})
        try:
            proc = subprocess.run(args, capture_output=True, text=True, env=env,
                                  cwd=REPO_ROOT, timeout=VERIFY_TIMEOUT_S,
                                  preexec_fn=_die_with_builder())
        except subprocess.TimeoutExpired:
            raise BuildError(f"cannot build {plan.key}: the env workload did not finish in "
                            f"{VERIFY_TIMEOUT_S} s in it") from None
        events = [_json_line(line) for line in proc.stdout.splitlines()]
        found = [e for e in events if e and e.get("event") == "env"]
        if proc.returncode != 0 or not found:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"cannot build {plan.key}: the env workload failed in it "
                            f"(exit {proc.returncode}): {tail}")
        reported = str(found[0].get("torch"))
        if _base_version(reported) != plan.torch:
            raise BuildError(f"cannot build {plan.key}: it was to hold torch {plan.torch} but "
                            f"the env workload reports torch {reported}")
        return found[0]

    def _freeze(self, tmp: Path, builder: str) -> str:
        python = str(tmp / "bin" / "python")
        args = ([self.uv, "pip", "freeze", "--python", python] if builder.startswith("uv")
                else [python, "-m", "pip", "freeze", "--all"])
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                              env=_pip_env() if builder == "venv+pip" else _uv_env(),
                              cwd=_neutral_cwd(self.root), preexec_fn=_die_with_builder())
        return proc.stdout if proc.returncode == 0 else f"(freeze failed: {proc.stderr[-300:]})"

    # ------------------------------------------------------------ the budget

    def states(self) -> list[EnvState]:
        """Every environment directory here (whole or not), by name."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir() or _key_parts(path.name) is None:
                continue
            problem = self.problem(path.name)
            marker = self.read_marker(path.name)
            found.append(EnvState(path.name, path, marker, problem, self.in_use(path.name)))
        return found

    def leftovers(self) -> list[Path]:
        """Temporary directories of builds and deletions (in progress, or crashed)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.name.startswith((".building-", ".trash-")))

    def make_room(self, need: int, *, keep: str | None = None,
                  progress: Progress = _quiet) -> list[str]:
        """Evict least recently used environments no trial uses until ``need`` more bytes fit.

        Returns the keys evicted; raises a UserError when the environments in use leave
        too little room.
        """
        with _held(self.root / ".locks" / "budget"):
            whole = [s for s in self.states() if s.problem is None and s.key != keep]
            total = sum(int((s.marker or {}).get("size_bytes", 0)) for s in whole)
            evicted: list[str] = []
            for state in eviction_order(whole):
                if total + need <= self.budget:
                    break
                size = int((state.marker or {}).get("size_bytes", 0))
                if self.evict(state.key):
                    total -= size
                    evicted.append(state.key)
                    progress(f"evicted {state.key} ({format_size(size)}, last used "
                             f"{(state.marker or {}).get('last_used')}) to stay within "
                             f"{BUDGET_VAR}={self.budget_text}")
            if total + need > self.budget:
                busy = [s.key for s in whole if s.key not in evicted]
                raise BudgetError(f"the environments budget {BUDGET_VAR}={self.budget_text} is "
                                  f"full: {format_size(total)} of environments in use "
                                f"({', '.join(busy)}) leave no room for "
                                f"{format_size(need)} more; raise it or let those trials end")
            return evicted

    def evict(self, key: str) -> bool:
        """Delete the environment ``key`` unless it is being built or used; True if deleted."""
        build = _Flock(self._lock_path(key, "build"))
        if not build.acquire(blocking=False):
            return False
        try:
            use = _Flock(self._lock_path(key, "use"))
            if not use.acquire(blocking=False):
                return False
            try:
                if self.path_of(key).exists():
                    self._delete(self.path_of(key), key)
                return True
            finally:
                use.release()
        finally:
            build.release()

    def prune(self, *, everything: bool = False,
              progress: Progress = _quiet) -> list[tuple[str, int, str]]:
        """Delete leftovers and broken environments, then evict to the budget (or all).

        Returns (name, bytes, why) of everything deleted; environments in use stay.
        """
        removed: list[tuple[str, int, str]] = []
        for leftover in self.leftovers():
            key = _leftover_key(leftover.name)
            build = _Flock(self._lock_path(key, "build"))
            if not build.acquire(blocking=False):
                continue  # a build in progress
            try:
                size, _ = disk_usage(leftover)
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append((leftover.name, size, "left by a build that did not finish"))
            finally:
                build.release()
        for state in self.states():
            if state.problem is not None and not state.in_use:
                size, _ = disk_usage(state.path)
                if self.evict(state.key):
                    removed.append((state.key, size, f"not whole: {state.problem}"))
        if everything:
            for state in self.states():
                size = int((state.marker or {}).get("size_bytes", 0))
                if self.evict(state.key):
                    removed.append((state.key, size, "--all"))
        else:
            sizes = {s.key: int((s.marker or {}).get("size_bytes", 0)) for s in self.states()}
            for key in self.make_room(0, progress=progress):
                removed.append((key, sizes.get(key, 0),
                                f"least recently used beyond {BUDGET_VAR}={self.budget_text}"))
        for name, size, why in removed:
            progress(f"deleted {name} ({format_size(size)}): {why}")
        return removed


# ---------------------------------------------------------------- helpers


def eviction_order(states: list[EnvState]) -> list[EnvState]:
    """Least recently used first (a missing time counts as oldest); in-use ones never."""
    free = [s for s in states if not s.in_use]
    return sorted(free, key=lambda s: (str((s.marker or {}).get("last_used") or ""), s.key))


def disk_usage(*paths: Path) -> tuple[int, int]:
    """(bytes on disk of everything under ``paths``, each file once, as ``du -s`` counts;
    of those, the bytes of files with a single link: what deleting them frees even while
    uv's cache, which shares the rest, stays)."""
    seen: set[tuple[int, int]] = set()
    total = own = 0
    for directory, dirs, files in (entry for path in paths for entry in os.walk(path)):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            size = st.st_blocks * 512
            total += size
            if st.st_nlink == 1:
                own += size
    return total, own


def worker_environment(extra: dict[str, str] | None = None,
                       base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a worker runs with inside an env: this checkout's workers on the
    path and nothing of the host's Python (no PYTHONPATH, PYTHONHOME, user site-packages)."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX",
                 "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _wheel_key(torch: str, interpreter: Interpreter) -> str:
    """What an answer of the index is remembered by in .wheels.json."""
    return f"torch=={torch} {interpreter.cp_tag} {host_platform()} {index_name()}"


def _key_parts(key: str) -> tuple[str, str] | None:
    match = re.match(r"^torch-(.+)-py(\d+\.\d+)$", key)
    return (match.group(1), match.group(2)) if match else None


def _leftover_key(name: str) -> str:
    """The key in ``.building-<key>-<random>`` / ``.trash-<key>-<random>``."""
    rest = name.split("-", 1)[1] if "-" in name else name
    return rest.rsplit("-", 1)[0]


def _marker_interpreter(marker: dict[str, Any]) -> Interpreter:
    parts = [int(p) for p in str(marker.get("python", "0.0.0")).split(".")[:3] if p.isdigit()]
    version = (parts + [0, 0, 0])[:3]
    return Interpreter(str(marker.get("interpreter", "")), (version[0], version[1], version[2]),
                       "env")


def _round_up_g(size: int) -> str:
    return f"{int(size / 2**30) + 1}g"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _json_line(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _says(text: str, words: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in words)


def _first_error(text: str) -> str:
    """The line of a tool's output that says what went wrong, shortened to one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith(("error", "cause:", "× ", "caused by")):
            return line[:300]
    return (lines[-1] if lines else "no output")[:300]


def _classify(text: str, torch: str) -> tuple[str, str]:
    """uv's refusal as ("missing" | "none" | "unknown", detail)."""
    lowered = text.lower()
    if f"no version of torch=={torch}" in lowered or "there is no version of torch" in lowered:
        return "missing", ""
    if "has no wheels with a matching" in lowered or "no wheels with a matching" in lowered \
            or "no matching distribution" in lowered:
        found = re.search(r"following python abi tags: ([^\n]*)", text, re.IGNORECASE)
        tags = found.group(1).replace("`", "").strip().rstrip(".") if found else ""
        if not found:
            platforms = re.search(r"following platforms?: ([^\n]*)", text, re.IGNORECASE)
            tags = ("platforms " + platforms.group(1).replace("`", "").strip().rstrip(".")
                    if platforms else "")
        return "none", tags
    return "unknown", _first_error(text)


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["UV_PYTHON_DOWNLOADS"] = "never"  # the interpreters are this machine's
    env["UV_NO_PROGRESS"] = "1"
    return env


def _pip_env() -> dict[str, str]:
    """pip as uv sees the index: none of the machine's pip configuration or PIP_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _neutral_cwd(root: Path) -> Path:
    """A directory with no pyproject.toml above it that uv could take for a project."""
    return root if root.is_dir() else Path("/")


def _uv_version(uv: str) -> str:
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "uv"
    words = out.stdout.split()
    return f"uv {words[1]}" if len(words) >= 2 else "uv"


def _die_with_builder():
    """A preexec_fn: the build step gets SIGKILL when the thread that started it dies, so a
    killed build leaves no uv or pip writing into its directory (Linux; elsewhere None)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    builder = os.getpid()

    def hook():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != builder:  # the builder died before the line above: die too
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _stream(args: list[str], progress: Progress, key: str, *, cwd: Path,
            env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a build step, passing each output line to ``progress``; (exit code, output)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", cwd=cwd, env=env or _uv_env(),
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_builder())
    timer = threading.Timer(BUILD_TIMEOUT_S, proc.kill)
    timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip():
                progress(f"{key}:   {line.rstrip()}")
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, "".join(lines)

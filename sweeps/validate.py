"""Every input a user gives versweep, checked in one place, before anything is created.

The promise (README): bad input is one line, ``<command>: error: ...``, exit 2, and nothing
is started, lost or half-written. Every command (run, report, envs, images, schedule,
datasets, resources) and the grid loader check what they are given here, by kind:

    paths      input_file, input_dir, read_text (grids, matrices, data and workload
               directories), output_dir (report --out), output_file (a SQLite store):
               too long, a symbolic-link loop, a file where a directory is needed (or the
               other way round), unreadable or unwritable, not UTF-8 text, too large
    names      name: empty, too long for MLflow (and for the artifact folder named after it),
               control characters
    sizes      integer, number, and the argparse types whole_number / positive_seconds:
               not a number, negative, zero, beyond a bound; the memory a worker config
               needs is estimated by the workers' own code (workers/memory.py, called from
               sweeps/workloads) against this machine's memory (machine_memory)
    addresses  ray_address (HOST:PORT, auto, ray://HOST[:PORT]), host_port, reachable:
               malformed, no port, a port out of range, nothing listening

Nothing here creates, opens for writing or connects to anything but a TCP probe that is
closed at once, so a command may check all of its inputs before it does any work. Each
function raises ``UserError`` with one line that names the input, shows its value (escaped
and shortened: ``shown``) and says what to do.
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

from sweeps.errors import CONTROL_CHARACTERS, UserError

# ------------------------------------------------------------------------------ text

# A value in a message is cut to this many characters (its length is said instead).
SHOWN_CHARS = 60


_USERINFO_PASSWORD = re.compile(r"//([^:/@\s]*):[^@/\s]*@")
# A secret in a URL's query string or fragment (``?token=...``, ``&password=...``,
# ``#access_token=...``, a presigned URL's ``X-Amz-Signature=...``): the name says it is one.
_QUERY_SECRET = re.compile(
    r"([?&#;][A-Za-z0-9_.-]*(?:token|passw(?:or)?d|pwd|secret|signature|sig|credential|"
    r"api[_-]?key|apikey|access[_-]?key|auth)[A-Za-z0-9_.-]*=)[^&#;\s'\"]*",
    re.IGNORECASE)


def without_password(text: str) -> str:
    """``text`` with the password of every URL in it starred: ``//user:***@host``, and
    every secret its query string names: ``?token=***``.

    Every URL versweep prints or writes goes through here (a tracking server's
    credentials or token must never reach a console, a log or a record).
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"//\1:***@", text))


def shown(value: Any) -> str:
    """``value`` quoted for a one-line message: control characters escaped, a long one cut,
    a URL's password starred."""
    text = without_password(str(value))
    escaped = CONTROL_CHARACTERS.sub(
        lambda found: found.group(0).encode("unicode_escape").decode("ascii"), text)
    if len(escaped) > SHOWN_CHARS:
        escaped = f"{escaped[:SHOWN_CHARS - 20]}...{escaped[-12:]} ({len(text)} characters)"
    return f"'{escaped}'"


def has_control(text: str) -> bool:
    """Whether ``text`` holds a line break, a tab, NUL or another control character."""
    return bool(CONTROL_CHARACTERS.search(text))


# ------------------------------------------------------------------------------ paths


def _limit(name: str, default: int) -> int:
    try:
        value = os.pathconf("/", name)
    except (AttributeError, ValueError, OSError):
        return default
    return value if value and value > 0 else default


# What the file system takes: a whole path, and one name in it (bytes, not characters).
PATH_MAX = _limit("PC_PATH_MAX", 4096)
NAME_MAX = _limit("PC_NAME_MAX", 255)
# A grid or a matrix is a few kilobytes; beyond this it is not one (a log, a data file).
MAX_TEXT_BYTES = 10 << 20


class InputError(UserError):
    """One input that is wrong: ``<what> '<value>': <problem>``; the parts stay readable, so
    a caller can say the problem with its own label (a grid's file, a key path)."""

    def __init__(self, what: str, value: Any, problem: str):
        label = f"{what} {shown(value)}" if what else shown(value)
        super().__init__(f"{label}: {problem}")
        self.what, self.value, self.problem = what, value, problem


def _fail(what: str, value: Any, problem: str) -> InputError:
    return InputError(what, value, problem)


def path_text(value: Any, what: str) -> str:
    """The problems of a path's text alone: empty, NUL or control characters, too long."""
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(what, value, "is not a path")
    text = os.fspath(value)
    if not str(text).strip():
        raise _fail(what, value, "is empty; give a path")
    if "\x00" in text or has_control(text):
        raise _fail(what, value, "holds control characters (a line break, a tab, NUL); "
                                 "give the path on one line")
    encoded = os.fsencode(os.path.expanduser(text))
    if len(encoded) >= PATH_MAX:
        raise _fail(what, value, f"is too long for the file system ({len(encoded)} bytes; "
                                 f"a path has at most {PATH_MAX - 1})")
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise _fail(what, value, f"holds a name too long for the file system ({len(longest)} "
                                 f"bytes; a file or directory name has at most {NAME_MAX})")
    return text


def _stat(path: Path, what: str, value: Any) -> os.stat_result | None:
    """``os.stat`` of ``path`` (links followed); None when nothing is there; UserError for
    a loop, a file where a directory should be, no permission, and the like."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail(what, value, _os_problem(exc, path)) from None
    except (RuntimeError, ValueError) as exc:  # a loop seen by pathlib, an embedded NUL
        raise _fail(what, value, str(exc)) from None


def _os_problem(exc: OSError, path: Path) -> str:
    code = exc.errno
    if code == errno.ELOOP:
        return "is a loop of symbolic links; point it at a real file or directory"
    if code == errno.ENOTDIR:
        below = _file_above(path)
        where = f"'{below}' is a file, not a directory" if below else "a part of it is a file"
        return f"{where}, so nothing can be below it"
    if code == errno.ENAMETOOLONG:
        return "is too long for the file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; check the permissions of the path and its directories"
    return exc.strerror or str(exc)


def _file_above(path: Path) -> Path | None:
    """The first part of ``path`` (as written: relative stays relative) that exists and is
    not a directory."""
    for parent in reversed(Path(path).parents):
        if str(parent) in (".", "/"):
            continue
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return None
        if not stat.S_ISDIR(mode):
            return parent
    return None


def exists(value: str | os.PathLike) -> bool:
    """Whether anything is at ``value`` (a dangling link counts); never raises."""
    try:
        os.lstat(os.path.expanduser(os.fspath(value)))
        return True
    except (OSError, ValueError):
        return False


def input_file(value: str | os.PathLike, what: str = "") -> Path:
    """A file that exists and can be read; its path (``~`` expanded, not resolved)."""
    path = Path(os.path.expanduser(path_text(value, what)))
    found = _stat(path, what, value)
    if found is None:
        raise _fail(what, value, "no such file" + _dangling(path))
    if stat.S_ISDIR(found.st_mode):
        raise _fail(what, value, "is a directory; give a file")
    if not stat.S_ISREG(found.st_mode):
        raise _fail(what, value, "is not a regular file (a device, a pipe or a socket)")
    if not os.access(path, os.R_OK):
        raise _fail(what, value, "cannot be read (permission denied)")
    return path


def input_dir(value: str | os.PathLike, what: str = "") -> Path:
    """A directory that exists and can be listed; its path (``~`` expanded, not resolved)."""
    path = Path(os.path.expanduser(path_text(value, what)))
    found = _stat(path, what, value)
    if found is None:
        raise _fail(what, value, "no such directory" + _dangling(path))
    if not stat.S_ISDIR(found.st_mode):
        raise _fail(what, value, "is a file, not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise _fail(what, value, "cannot be read (permission denied)")
    return path


def _dangling(path: Path) -> str:
    return " (a symbolic link to nothing)" if path.is_symlink() else ""


def read_text(value: str | os.PathLike, what: str = "",
              max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a file (a byte-order mark is dropped); UserError for a file that is
    missing, unreadable, binary or larger than ``max_bytes``."""
    path = input_file(value, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _fail(what, value, f"cannot be read: {_os_problem(exc, path)}") from None
    if len(data) > max_bytes:
        raise _fail(what, value, f"is larger than {max_bytes >> 20} MiB; it is not a text "
                                 "file versweep reads")
    if b"\x00" in data:
        raise _fail(what, value, "is a binary file, not UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _fail(what, value, f"is not UTF-8 text (an invalid byte on line {line}); "
                                 "save it as UTF-8") from None
    return text


def output_dir(value: str | os.PathLike, what: str = "") -> Path:
    """A directory that exists or can be made, and that can be written; nothing is created.

    Refused: a path that is a file, one below a file, one in a directory that cannot be
    written, a path too long for the file system, a loop of symbolic links.
    """
    path = Path(os.path.expanduser(path_text(value, what)))
    found = _stat(path, what, value)
    if found is not None:
        if not stat.S_ISDIR(found.st_mode):
            raise _fail(what, value, "is an existing file; give a directory (it is created "
                                     "when missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise _fail(what, value, "cannot be written (permission denied); choose a "
                                     "directory of your own")
        return path
    _creatable(path, what, value)
    return path


def output_file(value: str | os.PathLike, what: str = "") -> Path:
    """A file that exists and can be written, or can be created; nothing is created."""
    path = Path(os.path.expanduser(path_text(value, what)))
    found = _stat(path, what, value)
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise _fail(what, value, "is a directory; give a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise _fail(what, value, "cannot be written (permission denied)")
        return path
    _creatable(path, what, value)
    return path


def store_path(value: str | os.PathLike, what: str, *, file: bool) -> Path:
    """A store's path (a SQLite file with ``file``, else a folder): its text, no loop, nothing
    below a file, not the other kind where it exists; whether it may be written is the
    business of output_file / output_dir, where something is to be written."""
    path = Path(os.path.expanduser(path_text(value, what)))
    found = _stat(path, what, value)
    if found is not None and file and stat.S_ISDIR(found.st_mode):
        raise _fail(what, value, "is a directory; name the SQLite file, e.g. sqlite:///mlflow.db")
    if found is not None and not file and not stat.S_ISDIR(found.st_mode):
        raise _fail(what, value, "is a file; a path without .db names MLflow's file store (a "
                                 "directory); write sqlite:///PATH for a SQLite file")
    if found is None:
        _stat(path.parent, what, value)  # a loop or a file above it
    return path


def _creatable(path: Path, what: str, value: Any) -> None:
    """``path`` does not exist: the nearest directory above it that does must be writable."""
    if os.path.islink(path):
        raise _fail(what, value, "is a symbolic link to nothing; remove it or give "
                                 "another path")
    above = path.parent
    while True:
        found = _stat(above, what, value)
        if found is not None:
            break
        if above.parent == above:
            break
        above = above.parent
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise _fail(what, value, f"'{above}' is a file, not a directory, so nothing can be "
                                 "below it")
    if not os.access(above, os.W_OK | os.X_OK):
        raise _fail(what, value, f"cannot be created: directory '{above}' cannot be written "
                                 "(permission denied or a read-only file system)")


# ------------------------------------------------------------------------------ names

# MLflow takes experiment names of up to 500 characters and run names of up to 250; an
# experiment's artifacts go to a folder named after it (a file name: at most 255 bytes) and
# a sweep's parent run is named "<sweep> <UTC time>". 200 keeps every one of those.
MAX_NAME = 200


def name(value: Any, what: str, *, limit: int = MAX_NAME) -> str:
    """A name (an experiment, a sweep): not empty, one line, at most ``limit`` characters."""
    if not isinstance(value, str):
        raise _fail(what, value, "must be a string")
    if not value.strip():
        raise _fail(what, value, "is empty; give a name")
    if has_control(value):
        raise _fail(what, value, "holds control characters (a line break, a tab); give the "
                                 "name on one line")
    if value != value.strip():
        raise _fail(what, value, "starts or ends with white space; drop it")
    if len(value) > limit:
        raise _fail(what, value, f"is {len(value)} characters long; a name has at most "
                                 f"{limit} (MLflow's limits, and the folder named after it)")
    return value


# ------------------------------------------------------------------------------ sizes


def integer(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(what, value, "must be a whole number")
    if not low <= value <= high:
        raise _fail(what, value, f"must be from {low} to {high}")
    return value


def number(value: Any, what: str, *, above: float = 0.0, high: float = math.inf) -> float:
    """A finite number greater than ``above`` and at most ``high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(what, value, "must be a number")
    if not math.isfinite(value):
        raise _fail(what, value, "must be a finite number")
    if not above < value <= high:
        limit = f" and at most {high:g}" if math.isfinite(high) else ""
        raise _fail(what, value, f"must be greater than {above:g}{limit}")
    return float(value)


def whole_number(low: int, high: int):
    """An argparse type: a whole number in ``low..high`` (--limit, --max-concurrent ...)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} must be from {low} to {high}")
        return value

    parse.__name__ = "whole number"
    return parse


def positive_seconds(high: float):
    """An argparse type: seconds, greater than 0 and at most ``high`` (--timeout)."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds"
                                             ) from None
        if not math.isfinite(value) or not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be more than 0 and at most "
                                             f"{high:g} seconds")
        return value

    parse.__name__ = "seconds"
    return parse


def machine_memory() -> int | None:
    """This machine's memory in bytes (os.sysconf; a cgroup's limit when lower), or None."""
    from workers.memory import machine_memory as memory

    return memory()


# ------------------------------------------------------------------------------ addresses

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
                   r"|\[[0-9A-Fa-f:.]+\])$")


def host_port(value: Any, what: str, *, default_port: int | None = None,
              example: str = "HOST:6379", whole: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) -> (host, port); ``default_port`` when none is given.

    ``whole``: the address as the user wrote it, shown in the message (``value`` is a part).
    """
    if whole is not None:
        try:
            return host_port(value, what, default_port=default_port, example=example)
        except InputError as exc:
            raise _fail(what, whole, exc.problem) from None
    if not isinstance(value, str) or not value.strip():
        raise _fail(what, value, f"is empty; give an address like {example}")
    text = value.strip()
    if has_control(text) or " " in text:
        raise _fail(what, value, f"holds spaces or control characters; give an address like "
                                 f"{example}")
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _fail(what, value, f"has an unclosed '['; write [IPv6]:PORT, e.g. {example}")
        host, rest = text[:close + 1], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise _fail(what, value, f"is not HOST:PORT; e.g. {example}")
        port_text = rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise _fail(what, value, f"has more than one ':'; give HOST:PORT (an IPv6 host in "
                                     f"brackets), e.g. {example}")
    if not host or not _HOST.match(host):
        raise _fail(what, value, f"'{host}' is not a host name or IP address; e.g. {example}")
    if not port_text:
        if default_port is None:
            raise _fail(what, value, f"has no port; e.g. {example}")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _fail(what, value, f"port '{port_text}' must be a number from 1 to 65535; "
                                 f"e.g. {example}")
    return host.strip("[]"), int(port_text)


# Ray Client's default port (ray://HOST without one).
RAY_CLIENT_PORT = 10001


def ray_address(value: Any, what: str = "--address") -> str:
    """A Ray cluster address as ``ray.init`` takes it: ``auto``, ``HOST:PORT`` (the head's
    GCS, 6379 by default) or ``ray://HOST[:PORT]`` (Ray Client); returned stripped."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(what, value, "is empty; give the head's address, e.g. HEAD:6379, or auto")
    text = value.strip()
    if text == "auto":
        return text
    if text.startswith(("http://", "https://")):
        raise _fail(what, value, "is a web address (the dashboard's, for Ray Jobs); give the "
                                 "head's GCS address, e.g. HEAD:6379, or ray://HEAD:10001")
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "ray":
            raise _fail(what, value, f"unknown scheme '{scheme}'; give HEAD:6379, "
                                     "ray://HEAD:10001 or auto")
        host_port(rest.rstrip("/"), what, default_port=RAY_CLIENT_PORT,
                  example="ray://HEAD:10001", whole=text)
        return text
    host_port(text, what, example="HEAD:6379")
    return text


def reachable(host: str, port: int, prefix: str, hint: str, timeout: float = 10.0) -> None:
    """A TCP connection to ``host:port`` opens (and is closed at once), else one line,
    ``<prefix>: nothing answers there (<why>); <hint>``.

    Ray and MLflow retry a refused connection for minutes; a plain connect tells a user at
    once that the address is wrong or that nothing runs there.
    """
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UserError(f"{prefix}: nothing answers there ({reason}); {hint}") from None


def ray_address_reachable(value: str, what: str = "--address") -> None:
    """Something listens at a ``HOST:PORT`` or ``ray://`` address (``auto`` is Ray's to find)."""
    text = ray_address(value, what)
    if text == "auto":
        return
    rest = text.partition("://")[2] if "://" in text else text
    host, port = host_port(rest.rstrip("/"), what, whole=text,
                           default_port=RAY_CLIENT_PORT if "://" in text else None)
    reachable(host, port, f"cannot join the Ray cluster at {text}",
              f"start it with `ray start --head` or fix {what}")


def url(value: Any, what: str, *, schemes: tuple[str, ...] = ("http", "https"),
        example: str = "http://HOST:PORT/") -> str:
    """A URL of one of ``schemes`` whose host and port are well formed; returned stripped."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value.strip():
        raise _fail(what, value, f"is empty; give a URL like {example}")
    text = value.strip()
    if has_control(text) or " " in text or any(c in text for c in "\"'<>"):
        raise _fail(what, value, f"holds spaces, quotes or control characters; e.g. {example}")
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise _fail(what, value, f"is not a URL ({exc}); e.g. {example}") from None
    if parts.scheme not in schemes:
        starts = [f"{scheme}://" for scheme in schemes]
        listed = (", ".join(starts[:-1]) + " or " + starts[-1]) if len(starts) > 1 else starts[0]
        raise _fail(what, value, f"must start with {listed}; e.g. {example}")
    if parts.scheme == "file":
        if not parts.path:
            raise _fail(what, value, f"names no directory; e.g. {example}")
        return text
    if not parts.hostname or not _HOST.match(parts.hostname if ":" not in parts.hostname
                                             else f"[{parts.hostname}]"):
        raise _fail(what, value, f"has no valid host; e.g. {example}")
    if port is not None and port == 0:
        raise _fail(what, value, f"port must be from 1 to 65535; e.g. {example}")
    return text

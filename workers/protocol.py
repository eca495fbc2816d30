"""Worker protocol v1: one JSON object per line on stdout.

Every object carries ``"v": 1`` and ``"event"``. The host reads only these
lines; anything else a library prints to stdout is kept in the log and ignored.

    env          first line, always
    metric       per epoch (LM) / per measured chunk (bench)
    result       once, at the end               -> exit 0
    unsupported  this combination cannot run     -> exit 3
    error        a handled failure               -> exit 2 (bad_config, data), 4 (diverged)
                                                    or 5 (mismatch: the correctness gate)

Anything else (a crash, a kill) exits with another code and the host keeps the
stderr tail. This module is stdlib-only and Python 3.6-compatible.
"""
import json
import math
import sys

PROTOCOL_VERSION = 1

EXIT_OK = 0
EXIT_BAD_CONFIG = 2
EXIT_UNSUPPORTED = 3
EXIT_DIVERGED = 4
EXIT_MISMATCH = 5


class WorkerError(Exception):
    """A handled failure: becomes an ``error`` event and a known exit code."""

    kind = "error"
    exit_code = 1

    def __init__(self, message):
        super(WorkerError, self).__init__(message)
        self.message = message


class BadConfig(WorkerError):
    """The config names an unknown key, has a wrong type or an impossible value."""

    kind = "bad_config"
    exit_code = EXIT_BAD_CONFIG


class DataError(WorkerError):
    """The data directory is missing, unreadable, or its corpus is inconsistent."""

    kind = "data"
    exit_code = EXIT_BAD_CONFIG


class Diverged(WorkerError):
    """A loss became NaN or infinite."""

    kind = "diverged"
    exit_code = EXIT_DIVERGED


class Mismatch(WorkerError):
    """Implementations that claim to compute the same function disagree."""

    kind = "mismatch"
    exit_code = EXIT_MISMATCH


class Unsupported(Exception):
    """This combination of workload, implementation and torch cannot run here."""

    exit_code = EXIT_UNSUPPORTED

    def __init__(self, reason):
        super(Unsupported, self).__init__(reason)
        self.reason = reason


def _clean(value):
    """Make a value JSON-safe: non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return dict((str(k), _clean(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Emitter(object):
    """Writes protocol events, one flushed JSON line each."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.count = 0

    def emit(self, event, **fields):
        record = {"v": PROTOCOL_VERSION, "event": event}
        record.update(fields)
        line = json.dumps(_clean(record), sort_keys=True, allow_nan=False)
        self.stream.write(line + "\n")
        self.stream.flush()
        self.count += 1

    def env(self, info):
        self.emit("env", **info)

    def metric(self, step, metrics):
        self.emit("metric", step=int(step), metrics=dict(metrics))

    def result(self, metrics, samples=None):
        fields = {"metrics": dict(metrics)}
        if samples is not None:
            fields["samples"] = list(samples)
        self.emit("result", **fields)

    def unsupported(self, reason):
        self.emit("unsupported", reason=reason)

    def error(self, kind, message):
        self.emit("error", kind=kind, message=message)

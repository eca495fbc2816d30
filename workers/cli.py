"""``python -m workers <workload> --config '<json>'``: run one workload, speak protocol v1.

A workload is a module with a small written contract:

    SCHEMA                    dict of config.Field: the keys it accepts besides COMMON_SCHEMA
    expand(raw) -> raw        optional: fill in a preset before validation (raw keys win)
    env_extras(config) -> {}  optional: what the env event should add (e.g. the data source)
    run(config, device, emitter)
                              emits metric events and exactly one result, or raises
                              Unsupported / WorkerError

The CLI owns the protocol's frame: env first, always; then the workload's
events; then the exit code that says how it ended.
"""
import argparse
import difflib
import importlib
import json
import sys

from . import protocol
from .config import resolve
from .protocol import BadConfig, Emitter, Unsupported, WorkerError

# Explicit registry: name -> module (imported only when asked for).
WORKLOADS = {
    "env": ".envcheck",
    "ptb_lm": ".ptb_lm",
    "rnn_bench": ".rnn_bench",
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises BadConfig instead of printing usage and exiting."""

    def error(self, message):
        raise BadConfig("command line: %s (usage: python -m workers <workload> "
                        "--config '<json>' | --config @file.json)" % message)


def _parser():
    parser = _ArgumentParser(prog="python -m workers", add_help=True,
                             description="Run one versweep workload and print protocol v1 "
                                         "events (JSON lines) on stdout.")
    parser.add_argument("workload", help="one of: %s" % ", ".join(sorted(WORKLOADS)))
    parser.add_argument("--config", default="{}",
                        help="the config as a JSON object, or @path to a JSON file")
    return parser


def load_config_text(text):
    """Parse the --config value: inline JSON or @file.json."""
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path) as handle:
                text = handle.read()
        except (IOError, OSError) as exc:
            reason = exc.strerror or exc
            raise BadConfig("cannot read config file '%s': %s" % (path, reason)) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadConfig("the config is not valid JSON: %s" % exc) from None


def load_workload(name):
    """Import a workload module by its registered name, or raise BadConfig."""
    if name not in WORKLOADS:
        near = difflib.get_close_matches(name, list(WORKLOADS), n=1, cutoff=0.6)
        hint = "did you mean '%s'? " % near[0] if near else ""
        raise BadConfig("workload '%s' is unknown; %svalid workloads: %s"
                        % (name, hint, ", ".join(sorted(WORKLOADS))))
    return importlib.import_module(WORKLOADS[name], package=__package__)


def resolve_config(module, raw):
    """Validate the raw config against the workload's schema plus the common keys."""
    from .runtime import COMMON_SCHEMA

    schema = dict(COMMON_SCHEMA)
    schema.update(module.SCHEMA)
    if isinstance(raw, dict) and hasattr(module, "expand"):
        raw = module.expand(raw)
    return resolve(schema, raw)


def main(argv=None, stdout=None, stderr=None):
    """Run the worker; return the exit code (0, 2, 3, 4, or 1 for a handled crash)."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    emitter = Emitter(stdout)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        _parser().print_help(stdout)
        return protocol.EXIT_OK

    # torch is imported here, not at module level, so that `--help` and the
    # protocol module work without it.
    from . import runtime

    workload = argv[0] if argv else None
    env_sent = [False]

    def send_env(device, config, extras=None):
        info = runtime.environment(device)
        info["workload"] = workload
        info["config"] = config
        info.update(extras or {})
        emitter.env(info)
        env_sent[0] = True

    try:
        args = _parser().parse_args(argv)
        module = load_workload(args.workload)
        config = resolve_config(module, load_config_text(args.config))
        device = runtime.resolve_device(config["device"])
        runtime.apply_numerics(config, device)
        extras = module.env_extras(config) if hasattr(module, "env_extras") else {}
        send_env(device, config, extras)
        module.run(config, device, emitter)
        return protocol.EXIT_OK
    except Unsupported as exc:
        if not env_sent[0]:
            send_env(None, None)
        emitter.unsupported(exc.reason)
        stderr.write("worker: unsupported: %s\n" % exc.reason)
        return exc.exit_code
    except WorkerError as exc:
        if not env_sent[0]:
            send_env(None, None)
        emitter.error(exc.kind, exc.message)
        stderr.write("worker: %s: %s\n" % (exc.kind.replace("_", " "), exc.message))
        return exc.exit_code

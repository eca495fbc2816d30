"""``python -m workers <workload> --config '<json>'``: run one workload, speak protocol v1.

The workloads and their contract are in workers/workloads.py.

The CLI owns the protocol's frame: env first, always; then the workload's
events; then the exit code that says how it ended.
"""
import argparse
import importlib
import json
import sys

from . import memory, protocol
from .config import describe
from .protocol import BadConfig, Emitter, Unsupported, WorkerError
from .workloads import (
    WORKLOADS,
    check_workload,
    config_module,
    import_path,
    register_external,
    resolve_workload_config,
    schema_for,
)


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
    parser.add_argument("--workload-dir", default=None,
                        help="the directory of a workload of your own (config.py, worker.py), "
                             "named like the workload")
    return parser


# A config is a few hundred bytes; a file far beyond this is not one (a data file, a device).
MAX_CONFIG_BYTES = 1 << 20


def load_config_text(text):
    """Parse the --config value: inline JSON or @file.json (UTF-8, a byte-order mark allowed)."""
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except (IOError, OSError) as exc:
            reason = exc.strerror or exc
            raise BadConfig("cannot read config file '%s': %s" % (path, reason)) from None
        if len(data) > MAX_CONFIG_BYTES:
            raise BadConfig("config file '%s' is larger than %s; a config is one JSON object"
                            % (path, memory.format_bytes(MAX_CONFIG_BYTES)))
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadConfig("config file '%s' is not UTF-8 text (byte %d); give a JSON file"
                            % (path, exc.start)) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadConfig("the config is not valid JSON: %s" % exc) from None
    except RecursionError:
        raise BadConfig("the config is not valid JSON: nested too deeply") from None


def load_runner(name):
    """Import the runner module of a registered workload (this imports torch)."""
    check_workload(name)
    runner = WORKLOADS[name][1]
    if runner.endswith(".py"):  # a user's own workload: its worker.py
        return import_path(runner, "versweep_workload_%s_worker" % name)
    return importlib.import_module(runner, package=__package__)


def main(argv=None, stdout=None, stderr=None):
    """Run the worker; return the exit code (0, 2, 3, 4, or 1 for a handled crash)."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    emitter = Emitter(stdout)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        _parser().print_help(stdout)
        return protocol.EXIT_OK
    if len(argv) >= 2 and argv[0] in WORKLOADS and ("-h" in argv or "--help" in argv):
        stdout.write("usage: python -m workers %s --config '<json>' | --config @file.json\n\n"
                     "config keys of %s (the common ones included):\n%s\n"
                     % (argv[0], argv[0], describe(schema_for(argv[0]))))
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
        if args.workload_dir is not None:
            if register_external(args.workload_dir) != args.workload:
                raise BadConfig("--workload-dir %s is not the directory of workload '%s' "
                                "(a workload's directory is named like it)"
                                % (args.workload_dir, args.workload))
        config = resolve_workload_config(args.workload, load_config_text(args.config))
        module = load_runner(args.workload)
        device = runtime.resolve_device(config["device"])
        # Before anything is built: a config this device cannot hold is refused with the
        # estimate, instead of the worker dying in an allocation (or the kernel's OOM killer).
        available, whose = runtime.device_memory(device)
        too_big = memory.problem(config_module(args.workload), config, available, whose)
        if too_big is not None:
            send_env(device, config)
            raise Unsupported(too_big)
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

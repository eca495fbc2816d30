"""Grid files: a TOML grid (plus ``--set`` overrides) validated into a ``spec.Sweep``.

A grid is either a list of ``[[group]]`` tables, each expanded into the cartesian
product of its ``axes`` times its images times its repeats, or one ``[search]``
table that Optuna samples. The format is documented in the shipped grids
(sweeps/grids/*.toml); every key there carries a comment.

Everything a grid says is checked here, before any trial starts: unknown keys
(naming the nearest valid one), wrong types, empty axes, unknown images, and
every trial's worker config, through the worker's own schema (torch-free; the
workload's plug-in in sweeps/workloads says where it is). A mistake is one
``GridError`` line: ``<file>: <key path>: <what is wrong and what to do>``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps import validate, workloads
from sweeps.errors import GridError, UserError
from sweeps.grid.matrix import SELECTORS, display_path, load_matrix, nearest, read_toml
from sweeps.grid.spec import (
    LOCAL_IMAGE,
    Image,
    Param,
    Scheduler,
    Search,
    Sweep,
    TrialSpec,
    memory_size_problem,
)
from sweeps.paths import GRIDS_DIR, MATRIX_PATH
from sweeps.workloads import Workload
from workers.protocol import BadConfig
from workers.workloads import MAX_SEED as WORKER_MAX_SEED

# Backends a grid may name (sweeps/execute/backends/: the host's interpreter, a container
# of each matrix image, or an isolated environment per matrix entry). Every one but
# "local" runs the matrix images the grid selects.
KNOWN_BACKENDS = ("local", "docker", "venv")
# What a trial asks Ray for: a GPU ("cuda"), a CPU ("cpu"), or a GPU when the cluster has one.
DEVICES = ("auto", "cpu", "cuda")
# Words that select images from the matrix instead of a list of names.
IMAGE_SELECTORS = SELECTORS
SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe",)
SCHEDULERS = ("asha",)
MODES = ("min", "max")

# The keys of each table, with a note on what each is for (shown when a key is unknown).
TOP_KEYS = ("sweep", "group", "search")
SWEEP_KEYS = ("name", "description", "backend", "device", "repeats", "seed", "trial_timeout_s",
              "retries", "max_concurrent", "images", "data_dir", "container_memory",
              "workload_dirs")
GROUP_KEYS = ("workload", "images", "repeats", "config", "axes")
SEARCH_KEYS = ("workload", "image", "config", "metric", "mode", "num_samples", "sampler", "seed",
               "space", "scheduler")
PARAM_KEYS = {"uniform": ("type", "low", "high"), "loguniform": ("type", "low", "high"),
              "int": ("type", "low", "high"), "choice": ("type", "values")}
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")

# Defaults of the [sweep] table (the shipped grids repeat them in comments).
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_RETRIES = 1
DEFAULT_NUM_SAMPLES = 20
DEFAULT_REDUCTION_FACTOR = 4  # Ray Tune's ASHA default
DEFAULT_GRACE_PERIOD = 1

# Bounds of the [sweep], [[group]] and [search] numbers: far beyond any real sweep, so they
# only stop a typo (an extra 0, a seed pasted into a count) before it hangs the dry run or a
# trial. The worker configs carry their own (workers/*_config.py), and what a config needs in
# memory is checked against this machine's (workers/memory.py).
MAX_REPEATS = 10_000
MAX_TRIALS = 100_000  # trials a grid expands to, over all its groups
MAX_SAMPLES = 100_000  # a search's num_samples
MAX_TIMEOUT_S = 30 * 86400.0  # a trial's timeout: 30 days
MAX_RETRIES = 100
MAX_CONCURRENT = 1_000_000
MAX_SEED = WORKER_MAX_SEED  # numpy's and old torch's limit (workers/workloads.py)
MAX_STEPS = 1_000_000  # ASHA's max_t and grace_period: steps (epochs) of a trial
MAX_REDUCTION = 1_000
MAX_INTEGER = 2 ** 62  # anything else (an int range of a search space)

# Keys the sweep sets in every trial config; a group may not set them itself.
SWEEP_OWNED_KEYS = {"device": "sweep.device"}

# How a sweep's grid text (logged on its parent run) lists the --set overrides applied to it:
# the note, then one OVERRIDE_LINE + "key.path=value" per override, at the end of the text.
OVERRIDES_NOTE = "# versweep --set overrides applied to this grid:"
OVERRIDE_LINE = "#   "

# Quoted words in a worker's BadConfig message; those that are config keys locate it.
_KEY_IN_MESSAGE = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)'")
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


class _Checker:
    """Reads one grid document, raising GridError with the file and the key path."""

    def __init__(self, shown: str):
        self.shown = shown

    def fail(self, path: str, message: str) -> GridError:
        return GridError(f"{self.shown}: {path}: {message}")

    def keys(self, path: str, table: Any, valid: Sequence[str]) -> dict[str, Any]:
        """The table itself, after checking that it is a table with only ``valid`` keys."""
        if not isinstance(table, dict):
            raise self.fail(path, f"must be a table, not {_describe(table)}")
        for key in table:
            if key not in valid:
                where = f"{path}.{key}" if path else key
                raise self.fail(where, f"unknown key{nearest(key, valid)}; valid keys here: "
                                       f"{', '.join(valid)}")
        return table

    def table(self, path: str, value: Any) -> dict[str, Any]:
        """A table of free keys (worker config, axes, search space)."""
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {_describe(value)}")
        return value

    def string(self, path: str, value: Any, choices: Sequence[str] | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, not {_describe(value)}")
        if choices is not None and value not in choices:
            raise self.fail(path, f"'{value}' is not one of {', '.join(choices)}"
                                  f"{nearest(value, choices)}")
        return value

    def integer(self, path: str, value: Any, minimum: int, maximum: int = MAX_INTEGER) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, not {_describe(value)}")
        if value < minimum:
            raise self.fail(path, f"is {value}; it must be at least {minimum}")
        if value > maximum:
            raise self.fail(path, f"is {value}; it must be at most {maximum:,}")
        return value

    def number(self, path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"must be a number, not {_describe(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(path, "must be a finite number")
        return float(value)

    def positive(self, path: str, value: Any, maximum: float = float("inf")) -> float:
        number = self.number(path, value)
        if number <= 0:
            raise self.fail(path, f"is {value}; it must be greater than 0")
        if number > maximum:
            raise self.fail(path, f"is {value}; it must be at most {maximum:,.0f}")
        return number


def _describe(value: Any) -> str:
    """A value as a user reads it in an error: its TOML type and the value."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    if isinstance(value, dict):
        return kind
    return f"{kind} ({value!r})"


# ---------------------------------------------------------------- finding and overriding


def grid_path(name_or_path: str) -> Path:
    """The file of a grid: a shipped grid's name ("smoke") or a path to a .toml file."""
    validate.path_text(name_or_path, "--grid")  # too long, several lines, empty: one line
    candidate = Path(name_or_path).expanduser()
    looks_like_path = (name_or_path.endswith(".toml") or "/" in name_or_path
                       or os.path.isfile(candidate))
    if looks_like_path:
        return candidate
    shipped = GRIDS_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    names = shipped_grids()
    raise GridError(f"grid '{name_or_path}': no such grid{nearest(name_or_path, names)}; "
                    f"shipped grids: {', '.join(names)} (or give a path to a .toml file)")


def parse_override_value(text: str) -> Any:
    """A --set value: a TOML value (1, 2.5, true, "x", ["a", "b"]) or else the text itself.

    A shell often eats the quotes inside brackets (--set group.0.axes.impl=[cudnn,fused]
    arrives without them), so a bracketed list of bare words is read as a list too.
    """
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]") and text[1:-1].strip():
        return [parse_override_value(item.strip()) for item in text[1:-1].split(",")]
    return text


def _one_toml_value(text: str) -> bool:
    """Whether ``text`` is exactly one TOML value (a multi-line string may span lines)."""
    try:
        return set(tomllib.loads(f"value = {text}")) == {"value"}
    except tomllib.TOMLDecodeError:
        return False


def apply_overrides(document: dict[str, Any], overrides: Sequence[str], shown: str,
                    grid_dir: Path | None = None) -> None:
    """Apply ``--set key.path=value`` strings to the parsed grid, in place, in order.

    A path walks tables by key and arrays by index (``group.0``) or by ``*`` (every
    element: ``group.*.config.batches=20``). Missing tables at the end of a path are
    created, so a new config key can be added; validation then checks it.
    """
    for raw in overrides:
        path_text, sep, value_text = raw.partition("=")
        path_text = path_text.strip()
        if not sep or not path_text:
            raise GridError(f"{shown}: --set {raw!r}: expected key.path=value, "
                            "e.g. sweep.repeats=1 or group.*.config.batches=20")
        parts = path_text.split(".")
        if any(not part for part in parts):
            raise GridError(f"{shown}: --set {path_text}: empty part in the key path")
        value_text = value_text.strip()
        if validate.has_control(value_text) and not _one_toml_value(value_text):
            # TOML would read "2\nfoo=3" as 2 and drop the rest without a word.
            raise GridError(f"{shown}: --set {path_text}: the value {validate.shown(value_text)} "
                            "runs over several lines or holds control characters; give it on "
                            "one line (a text of several lines as a TOML \"\"\"string\"\"\")")
        value = parse_override_value(value_text)
        if isinstance(value, str) and value == value_text and value_text[:1] in "[{\"'":
            # Broken TOML (an unclosed list or string) must not pass as a plain word.
            raise GridError(f"{shown}: --set {path_text}: the value {validate.shown(value_text)} "
                            "is not a TOML value (an unclosed list, table or string?); e.g. "
                            "sweep.images='[\"torch-2.13.0-cpu\"]' or a plain word")
        if parts[:2] == ["group", "*"] and len(parts) >= 4 and parts[2] in ("config", "axes"):
            _set_worker_key_in_groups(document, parts, value, shown, path_text, grid_dir)
        else:
            _set_path(document, parts, value, shown, path_text, [])


def _set_worker_key_in_groups(document: dict[str, Any], parts: list[str], value: Any,
                              shown: str, full: str, grid_dir: Path | None) -> None:
    """group.*.config.KEY=V sets KEY in every group whose workload has such a key.

    So ``group.*.config.batches=20`` shortens every benchmark group of a grid that
    also holds a ptb_lm group. A key no group's workload knows is an error.
    """
    groups = document.get("group")
    if not isinstance(groups, list) or not groups:
        raise GridError(f"{shown}: --set {full}: the grid has no [[group]] tables")
    key = parts[3]
    plugins = {**workloads.SHIPPED, **_named_workloads(document, grid_dir)}
    known: set[str] = set()
    chosen = []
    for index, group in enumerate(groups):
        workload = group.get("workload") if isinstance(group, dict) else None
        if isinstance(workload, str) and workload in plugins:
            schema = workloads.schema(plugins[workload])
            known.update(schema)
            if key in schema:
                chosen.append(index)
    if not chosen:
        raise GridError(f"{shown}: --set {full}: no group's workload has a config key "
                        f"'{key}'{nearest(key, sorted(known))}")
    for index in chosen:
        _set_path(groups[index], parts[2:], value, shown, full, ["group", str(index)])


def _named_workloads(document: dict[str, Any], grid_dir: Path | None) -> dict[str, Workload]:
    """The users' workloads a grid document names, those that load (validation says the rest)."""
    sweep = document.get("sweep")
    entries = sweep.get("workload_dirs") if isinstance(sweep, dict) else None
    found: dict[str, Workload] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, str):
            continue
        directory = Path(entry).expanduser()
        if not directory.is_absolute() and grid_dir is not None:
            directory = grid_dir / directory
        try:
            plugin = workloads.load_dir(directory)
        except UserError:
            continue
        found[plugin.name] = plugin
    return found


def _set_path(node: Any, parts: list[str], value: Any, shown: str, full: str,
              walked: list[str]) -> None:
    """Set ``value`` at ``parts`` below ``node``; ``walked`` is the path so far, for messages."""
    here = ".".join(walked) or "the grid"
    part, rest = parts[0], parts[1:]
    if isinstance(node, list):
        indices: range | list[int]
        if part == "*":
            if not node:
                raise GridError(f"{shown}: --set {full}: {here} is empty")
            indices = range(len(node))
        elif part.isdigit() and int(part) < len(node):
            indices = [int(part)]
        else:
            raise GridError(f"{shown}: --set {full}: {here} has {len(node)} entries; use an "
                            f"index 0..{len(node) - 1} or * for all, not '{part}'")
        for index in indices:
            if not rest:
                node[index] = value
            else:
                _set_path(node[index], rest, value, shown, full, walked + [str(index)])
        return
    if not isinstance(node, dict):
        raise GridError(f"{shown}: --set {full}: {here} is a value, not a table, so it has "
                        f"no key '{part}'")
    if part == "*":
        raise GridError(f"{shown}: --set {full}: {here} is a table; * selects array entries")
    if not rest:
        node[part] = value
        return
    if part not in node:
        if rest[0] == "*" or rest[0].isdigit():
            raise GridError(f"{shown}: --set {full}: the grid has no '{'.'.join(walked + [part])}'"
                            " entries to index")
        node[part] = {}
    _set_path(node[part], rest, value, shown, full, walked + [part])


# ---------------------------------------------------------------- images


def _one_image(check: _Checker, path: str, name: Any, matrix: dict[str, Image],
               device: str) -> Image:
    """One image of the matrix, by name."""
    check.string(path, name)
    if name not in matrix:
        raise check.fail(path, f"image '{name}' is not in images/matrix.toml"
                               f"{nearest(name, matrix)}")
    image = matrix[name]
    if device == "cuda" and image.cuda is None:
        raise check.fail(path, f"image '{name}' has no CUDA but sweep.device is 'cuda'")
    return image


def _select_images(check: _Checker, path: str, value: Any, matrix: dict[str, Image],
                   device: str) -> tuple[Image, ...]:
    """Images named by a selector word ("all", "cuda", "cpu") or a list of matrix names."""
    if isinstance(value, str):
        check.string(path, value, IMAGE_SELECTORS)
        if value == "all":
            chosen = list(matrix.values())
        else:
            chosen = [i for i in matrix.values() if (i.cuda is not None) == (value == "cuda")]
        if not chosen:
            raise check.fail(path, f"the matrix has no '{value}' images")
    elif isinstance(value, list):
        if not value:
            raise check.fail(path, "is empty; name at least one image of images/matrix.toml, "
                                   f"or one of {', '.join(repr(s) for s in IMAGE_SELECTORS)}")
        chosen = []
        for index, name in enumerate(value):
            image = _one_image(check, f"{path}[{index}]", name, matrix, "any")
            if image in chosen:
                raise check.fail(f"{path}[{index}]", f"image '{name}' is listed twice")
            chosen.append(image)
    else:
        raise check.fail(path, f"must be a list of image names or one of "
                               f"{', '.join(IMAGE_SELECTORS)}, not {_describe(value)}")
    if device == "cuda":
        for image in chosen:
            if image.cuda is None:
                raise check.fail(path, f"image '{image.name}' has no CUDA but sweep.device is "
                                       "'cuda'; use images = \"cuda\" or drop it")
    return tuple(chosen)


# ---------------------------------------------------------------- worker configs


# Where a key the sweep put into a trial config comes from, for error messages.
SWEEP_SOURCES = {"seed": "sweep.seed", "device": "sweep.device", "data_dir": "sweep.data_dir"}


def _paths(prefix: str, table: dict[str, Any]) -> dict[str, str]:
    """{key: "prefix.key"} for each key of a grid table."""
    return {key: f"{prefix}.{key}" for key in table}


def _bad_config_path(message: str, sources: list[dict[str, str]], fallback: str) -> str:
    """The key path a worker BadConfig message is about.

    Sources are searched in order (axes before fixed config), so when a cross-key
    check names two keys, the path points at the axis that made the combination.
    """
    mentioned = _KEY_IN_MESSAGE.findall(message)
    for paths in sources:
        for key in mentioned:
            if key in paths:
                return paths[key]
    return fallback


def _resolve(check: _Checker, workload: Workload, raw: dict[str, Any],
             sources: list[dict[str, str]], fallback: str) -> dict[str, Any]:
    """The worker's own resolution of a config; BadConfig becomes a GridError at the key path,
    and so does a config that cannot fit in this machine's memory (the worker's estimate)."""
    try:
        resolved = workloads.resolve_config(workload, raw)
    except BadConfig as exc:
        raise check.fail(_bad_config_path(exc.message, sources, fallback), exc.message) from None
    too_big = workloads.memory_problem(workload, resolved)
    if too_big is not None:
        raise check.fail(fallback, too_big)
    return resolved


def _workload(check: _Checker, settings: _SweepSettings, path: str, value: Any) -> Workload:
    """The plug-in of the workload a group or search names: shipped, or from workload_dirs."""
    name = check.string(path, value)
    known = {**workloads.SHIPPED, **settings.workloads}
    if name not in known:
        raise check.fail(path, f"workload '{name}' is unknown{nearest(name, known)}; "
                               f"valid workloads: {', '.join(sorted(known))} (a workload of "
                               "your own: its directory in sweep.workload_dirs)")
    return known[name]


def _workload_dirs(check: _Checker, table: dict[str, Any], grid_dir: Path) -> dict[str, Workload]:
    """sweep.workload_dirs: directories of users' own workloads, relative to the grid file."""
    value = table.get("workload_dirs", [])
    if not isinstance(value, list):
        raise check.fail("sweep.workload_dirs", "must be an array of directories, like "
                                                "workload_dirs = [\"my_workloads/seq_copy\"]")
    found: dict[str, Workload] = {}
    for index, entry in enumerate(value):
        where = f"sweep.workload_dirs[{index}]"
        directory = Path(check.string(where, entry)).expanduser()
        if not directory.is_absolute():
            directory = grid_dir / directory
        try:
            plugin = workloads.load_dir(directory)
        except UserError as exc:
            raise check.fail(where, str(exc)) from None
        if plugin.name in found:
            raise check.fail(where, f"workload '{plugin.name}' is already named")
        found[plugin.name] = plugin
    return found


def _source(workload: Workload) -> str | None:
    return str(workload.source) if workload.source is not None else None


def _config_table(check: _Checker, path: str, value: Any) -> dict[str, Any]:
    table = check.table(path, value if value is not None else {})
    for key, owner in SWEEP_OWNED_KEYS.items():
        if key in table:
            raise check.fail(f"{path}.{key}", f"the sweep sets '{key}' for every trial; set "
                                              f"{owner} (auto, cpu or cuda) instead")
    return dict(table)


def _absolute_data_dir(check: _Checker, path: str, value: Any) -> Any:
    """A data directory as an absolute path (relative to where the user runs versweep)."""
    if not isinstance(value, str) or not value.strip():
        return value  # the worker's schema reports null / wrong types / empty strings
    directory = Path(value).expanduser()
    if not directory.is_absolute():
        directory = Path.cwd() / directory
    try:
        validate.input_dir(directory)
    except validate.InputError as exc:
        said = ("does not exist" if exc.problem.startswith("no such directory")
                else exc.problem.split(";")[0])
        raise check.fail(path, f"directory '{value}' {said}; give the directory "
                               "holding ptb.train.txt, ptb.valid.txt and ptb.test.txt, or leave "
                               "it out for the synthetic corpus") from None
    return str(directory.resolve())


# ---------------------------------------------------------------- the [sweep] table


@dataclass
class _SweepSettings:
    """The checked [sweep] table, plus the image matrix, read only when a grid names images."""

    name: str
    description: str
    backend: str
    device: str
    repeats: int
    seed: int | None  # base seed of the repeats; None: the workload's default seed
    trial_timeout_s: float
    retries: int
    max_concurrent: int | None
    data_dir: str | None  # absolute
    container_memory: str | None  # the docker backend's memory limit per container
    images: Any  # the raw `images` value (a selector word or a list of names), or None
    written: frozenset[str]  # the keys the grid wrote, to refuse those a search ignores
    matrix_path: Path
    workloads: dict[str, Workload]  # users' own, from sweep.workload_dirs, by name
    _matrix: dict[str, Image] | None = None

    def matrix(self) -> dict[str, Image]:
        if self._matrix is None:
            self._matrix = load_matrix(self.matrix_path)
        return self._matrix

    def matrix_if_read(self) -> dict[str, Image]:
        return self._matrix or {}


def _sweep_settings(check: _Checker, document: dict[str, Any], default_name: str,
                    matrix_path: Path, grid_dir: Path) -> _SweepSettings:
    table = check.keys("sweep", document.get("sweep", {}), SWEEP_KEYS)
    name = check.string("sweep.name", table.get("name", default_name))
    try:
        validate.name(name, "")
    except validate.InputError as exc:
        raise check.fail("sweep.name", f"{validate.shown(name)} {exc.problem}") from None
    if not _SWEEP_NAME.match(name):
        raise check.fail("sweep.name", f"{validate.shown(name)} must start with a letter or "
                                       "digit and hold only ASCII letters, digits, spaces, "
                                       "dots, dashes and underscores (it names runs, folders "
                                       "and jobs); e.g. 'versions-2024'")
    data_dir = None
    if "data_dir" in table:
        check.string("sweep.data_dir", table["data_dir"])
        data_dir = _absolute_data_dir(check, "sweep.data_dir", table["data_dir"])
    return _SweepSettings(
        name=name,
        description=check.string("sweep.description", table.get("description", "")),
        backend=check.string("sweep.backend", table.get("backend", "local"), KNOWN_BACKENDS),
        device=check.string("sweep.device", table.get("device", "auto"), DEVICES),
        repeats=check.integer("sweep.repeats", table.get("repeats", 1), 1, MAX_REPEATS),
        seed=(check.integer("sweep.seed", table["seed"], 0, MAX_SEED) if "seed" in table
              else None),
        trial_timeout_s=check.positive("sweep.trial_timeout_s",
                                       table.get("trial_timeout_s", DEFAULT_TIMEOUT_S),
                                       MAX_TIMEOUT_S),
        retries=check.integer("sweep.retries", table.get("retries", DEFAULT_RETRIES), 0,
                              MAX_RETRIES),
        max_concurrent=(check.integer("sweep.max_concurrent", table["max_concurrent"], 1,
                                      MAX_CONCURRENT)
                        if "max_concurrent" in table else None),
        data_dir=data_dir,
        container_memory=_memory(check, table),
        images=table.get("images"),
        written=frozenset(table),
        matrix_path=matrix_path,
        workloads=_workload_dirs(check, table, grid_dir),
    )


def _memory(check: _Checker, table: dict[str, Any]) -> str | None:
    if "container_memory" not in table:
        return None
    value = check.string("sweep.container_memory", table["container_memory"])
    problem = memory_size_problem(value)
    if problem is not None:
        raise check.fail("sweep.container_memory", problem)
    return value


# ---------------------------------------------------------------- [[group]] tables


def _injected(settings: _SweepSettings, workload: Workload, config: dict[str, Any],
              axes: dict[str, list[Any]]) -> dict[str, Any]:
    """What the sweep adds to a group's config: the device, and the data directory."""
    schema = workloads.schema(workload)
    extra = {"device": settings.device}
    if settings.data_dir is not None and "data_dir" in schema and "data_dir" not in config \
            and "data_dir" not in axes:
        extra["data_dir"] = settings.data_dir
    return extra


def _group_trials(check: _Checker, settings: _SweepSettings, index: int,
                  table: Any) -> tuple[list[str], list[tuple[int, Workload, dict[str, Any]]]]:
    """Validate one [[group]]: its image names and its (repeat, workload, resolved config)s."""
    path = f"group[{index}]"
    table = check.keys(path, table, GROUP_KEYS)
    if "workload" not in table:
        known = {**workloads.SHIPPED, **settings.workloads}
        raise check.fail(f"{path}.workload", f"missing; name one of "
                                             f"{', '.join(sorted(known))}")
    workload = _workload(check, settings, f"{path}.workload", table["workload"])
    repeats = check.integer(f"{path}.repeats", table.get("repeats", settings.repeats), 1,
                            MAX_REPEATS)
    config = _config_table(check, f"{path}.config", table.get("config"))
    axes: dict[str, list[Any]] = {}
    for key, values in check.table(f"{path}.axes", table.get("axes", {})).items():
        where = f"{path}.axes.{key}"
        if not isinstance(values, list) or not values:
            raise check.fail(where, f"must be a non-empty array of values, like "
                                    f"{key} = [\"a\", \"b\"]; a fixed value goes in "
                                    f"{path}.config")
        if key in SWEEP_OWNED_KEYS:
            raise check.fail(where, f"the sweep sets '{key}' for every trial; set "
                                    f"{SWEEP_OWNED_KEYS[key]} instead")
        if key in config:
            raise check.fail(where, f"'{key}' is also set in {path}.config; keep one")
        for position, value in enumerate(values):
            if value in values[:position]:
                raise check.fail(where, f"lists {value!r} twice")
        axes[key] = list(values)
    if "data_dir" in config:
        config["data_dir"] = _absolute_data_dir(check, f"{path}.config.data_dir",
                                                config["data_dir"])
    if "data_dir" in axes:
        axes["data_dir"] = [_absolute_data_dir(check, f"{path}.axes.data_dir", value)
                            for value in axes["data_dir"]]

    if settings.backend == "local":
        if "images" in table:  # checked, so a typo fails the same way on every backend
            _select_images(check, f"{path}.images", table["images"], settings.matrix(),
                           settings.device)
        images = [LOCAL_IMAGE]
    else:
        value = table.get("images", settings.images)
        if value is None:
            raise check.fail(f"{path}.images", f"the {settings.backend} backend runs each "
                                               "trial in an image; set sweep.images or this "
                                               "group's images "
                                               f"({', '.join(IMAGE_SELECTORS)} or a list of "
                                               "names from images/matrix.toml)")
        where = f"{path}.images" if "images" in table else "sweep.images"
        images = [image.name for image in _select_images(check, where, value, settings.matrix(),
                                                        settings.device)]

    injected = _injected(settings, workload, config, axes)
    sources = [_paths(f"{path}.axes", axes), _paths(f"{path}.config", config), SWEEP_SOURCES]
    # A seed the group sets itself is used by every repeat (identical inputs, so the
    # repeats measure timing noise only); otherwise repeat r runs with base seed + r.
    seed_fixed = "seed" in config or "seed" in axes
    base_seed = settings.seed
    if base_seed is None:
        base_seed = workloads.schema(workload)["seed"].default

    keys = list(axes)
    count = math.prod(len(values) for values in axes.values()) * repeats * len(images)
    if count > MAX_TRIALS:  # said before the expansion, which would take minutes or memory
        raise check.fail(path, f"expands to {count:,} trials (axes x repeats x images); a "
                               f"grid runs at most {MAX_TRIALS:,}: split it or shorten axes")
    templates = []
    for combo in itertools.product(*(axes[key] for key in keys)):
        raw = dict(config)
        raw.update(zip(keys, combo, strict=True))
        raw.update(injected)
        for repeat in range(repeats):
            trial_raw = dict(raw)
            if not seed_fixed:
                trial_raw["seed"] = base_seed + repeat
            resolved = _resolve(check, workload, trial_raw, sources, f"{path}.config")
            templates.append((repeat, workload, resolved))
    return images, templates


def _group_sweep(check: _Checker, settings: _SweepSettings,
                 groups: Any) -> tuple[tuple[TrialSpec, ...], tuple[Image, ...]]:
    if not isinstance(groups, list):
        raise check.fail("group", "must be an array of tables: write [[group]], not [group]")
    if not groups:
        raise check.fail("group", "the grid has no [[group]] tables; add one, or a [search]")
    if settings.images is not None:  # checked even where every group names its own
        _select_images(check, "sweep.images", settings.images, settings.matrix(),
                       settings.device)
    per_group = [_group_trials(check, settings, i, t) for i, t in enumerate(groups)]
    count = sum(len(images) * len(templates) for images, templates in per_group)
    if count > MAX_TRIALS:
        raise check.fail("group", f"the groups expand to {count:,} trials; a grid runs at most "
                                  f"{MAX_TRIALS:,}: split it into several grids")

    # Interleaved order (spec.TRIAL_ORDER): repeat-major, so every variant's repeat 0 is queued
    # before any repeat 1; within a repeat, variant by variant with every image of the
    # variant back to back, the images in matrix order on even repeats and reversed on odd
    # ones. Slow drift on a node (thermals, other load) then spreads over all versions
    # alike instead of passing for a version effect.
    trials: list[TrialSpec] = []
    seen: dict[str, int] = {}
    most = max(repeat for _, templates in per_group for repeat, _, _ in templates)
    for repeat in range(most + 1):
        for group_index, (images, templates) in enumerate(per_group):
            for rep, workload, resolved in templates:
                if rep != repeat:
                    continue
                for image in (images if repeat % 2 == 0 else images[::-1]):
                    spec = TrialSpec(workload=workload.name, image=image,
                                     config=tuple(sorted(resolved.items())), repeat=repeat,
                                     group=group_index, workload_dir=_source(workload))
                    if spec.key in seen:
                        raise check.fail(f"group[{group_index}]",
                                         f"trial '{spec.name}' is also produced by "
                                         f"group[{seen[spec.key]}]; each trial must appear once")
                    seen[spec.key] = group_index
                    trials.append(spec)
    used = {trial.image for trial in trials}
    used_images = tuple(i for i in settings.matrix_if_read().values() if i.name in used)
    return _named(trials), used_images


def _named(trials: list[TrialSpec]) -> tuple[TrialSpec, ...]:
    """The trials with the config keys their names must show to tell them apart.

    Trials whose workload label and repeat agree ('ptb_lm medium', repeat 0) are named by
    the keys whose values differ among them (a grid's axes over learning_rate and
    keep_prob: both), the workload's key columns first; with the image and the repeat,
    that makes every name in the sweep unique.
    """
    group_of = [(t.workload, t.workload_dir, t.plugin.label(t.config_dict), t.repeat)
                for t in trials]
    groups: dict[tuple, list[TrialSpec]] = {}
    for trial, group in zip(trials, group_of, strict=True):
        groups.setdefault(group, []).append(trial)
    keys_of: dict[tuple, tuple[str, ...]] = {}
    for group, members in groups.items():
        configs = [m.config_dict for m in members]
        every = sorted(set().union(*configs))
        varying = [k for k in every
                   if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        first = [k for k in members[0].plugin.key_columns if k in varying]
        keys_of[group] = tuple(first + [k for k in varying if k not in first])
    return tuple(dataclasses.replace(t, name_keys=keys_of[group]) if keys_of[group] else t
                 for t, group in zip(trials, group_of, strict=True))


# ---------------------------------------------------------------- [search]


def _param(check: _Checker, workload: Workload | None, name: str, table: Any) -> Param:
    """One [search.space.<name>] table; ``workload`` None (a user's own workload that is not
    here to ask) skips the checks against its config schema."""
    path = f"search.space.{name}"
    schema = workloads.schema(workload) if workload is not None else {}
    if workload is not None and name not in schema:
        raise check.fail(path, f"config key '{name}' is unknown for {workload.name}"
                               f"{nearest(name, schema)}; the space samples worker config keys")
    if name in SWEEP_OWNED_KEYS:
        raise check.fail(path, f"the sweep sets '{name}'; it cannot be searched")
    if not isinstance(table, dict):
        raise check.fail(path, "must be a table like {type = \"loguniform\", low = 0.1, "
                               "high = 10}")
    if "type" not in table:
        raise check.fail(f"{path}.type", f"missing; one of {', '.join(SPACE_TYPES)}")
    kind = check.string(f"{path}.type", table["type"], SPACE_TYPES)
    check.keys(path, table, PARAM_KEYS[kind])
    field = schema.get(name)
    if kind == "choice":
        values = table.get("values")
        if not isinstance(values, list) or not values:
            raise check.fail(f"{path}.values", "a choice needs a non-empty array of values")
        for position, value in enumerate(values):
            if value in values[:position]:
                raise check.fail(f"{path}.values", f"lists {value!r} twice")
        return Param(name=name, kind=kind, values=tuple(values))
    for bound in ("low", "high"):
        if bound not in table:
            raise check.fail(f"{path}.{bound}", f"missing; a {kind} range needs low and high")
    low: float
    high: float
    if kind == "int":
        low = check.integer(f"{path}.low", table["low"], -MAX_INTEGER)
        high = check.integer(f"{path}.high", table["high"], -MAX_INTEGER)
    else:
        if field is not None and field.kind == "int":
            raise check.fail(f"{path}.type", f"'{kind}' samples fractional numbers but '{name}' "
                                             "takes integers; use type = \"int\" or \"choice\"")
        low = check.number(f"{path}.low", table["low"])
        high = check.number(f"{path}.high", table["high"])
    if low >= high:
        raise check.fail(path, f"low ({low}) must be less than high ({high})")
    if kind == "loguniform" and low <= 0:
        raise check.fail(f"{path}.low", f"is {low}; a loguniform range needs low > 0")
    return Param(name=name, kind=kind, low=low, high=high)


def _probe_values(param: Param) -> list[tuple[str, Any]]:
    """The values of a parameter that bound what the sampler can produce."""
    if param.kind == "choice":
        return [(f"values[{i}]", v) for i, v in enumerate(param.values)]
    low, high = param.low, param.high
    assert low is not None and high is not None, f"range parameter {param.name} without bounds"
    if param.kind == "int":
        return [("low", int(low)), ("high", int(high))]
    return [("low", float(low)), ("high", float(high))]


def _search_sweep(check: _Checker, settings: _SweepSettings,
                  table: Any) -> tuple[Search, tuple[Image, ...]]:
    table = check.keys("search", table, SEARCH_KEYS)
    for key in ("repeats", "images"):
        if key in settings.written:
            what = ("each sampled config runs once; raise search.num_samples instead"
                    if key == "repeats" else "a search runs on one image; set search.image")
            raise check.fail(f"sweep.{key}", f"not used by a [search] grid: {what}")
    shipped_or_own = sorted({**workloads.SHIPPED, **settings.workloads})
    needs = {"workload": f"one of {', '.join(shipped_or_own)}",
             "metric": "the metric to optimise, e.g. valid_perplexity",
             "mode": "min or max"}
    for key, what in needs.items():
        if key not in table:
            raise check.fail(f"search.{key}", f"missing; {what}")
    workload = _workload(check, settings, "search.workload", table["workload"])
    config = _config_table(check, "search.config", table.get("config"))
    if "data_dir" in config:
        config["data_dir"] = _absolute_data_dir(check, "search.config.data_dir",
                                                config["data_dir"])

    if "image" in table:  # checked on every backend, so a typo fails the same way
        image = _one_image(check, "search.image", table["image"], settings.matrix(),
                           settings.device)
    elif settings.backend != "local":
        raise check.fail("search.image", f"the {settings.backend} backend runs the search "
                                         "in one image; name one from images/matrix.toml")
    images: tuple[Image, ...]
    if settings.backend == "local":
        image_name, images = LOCAL_IMAGE, ()
    else:
        image_name, images = image.name, (image,)

    space_table = check.table("search.space", table.get("space", {}))
    if not space_table:
        raise check.fail("search.space", "is empty; add at least one [search.space.<key>] table")
    space = tuple(_param(check, workload, name, spec) for name, spec in space_table.items())
    for param in space:
        if param.name in config:
            raise check.fail(f"search.space.{param.name}", f"'{param.name}' is also fixed in "
                                                           "search.config; keep one")

    raw = dict(config)
    raw.update(_injected(settings, workload, config, {}))
    if settings.seed is not None and "seed" not in raw:
        raw["seed"] = settings.seed
    sources = [_paths("search.config", config), SWEEP_SOURCES]
    base = _resolve(check, workload, raw, sources, "search.config")
    # Every bound of every dimension must be a config the worker accepts.
    for param in space:
        for label, value in _probe_values(param):
            probe = dict(raw)
            probe[param.name] = value
            _resolve(check, workload, probe,
                     [{param.name: f"search.space.{param.name}.{label}"}] + sources,
                     f"search.space.{param.name}.{label}")

    metric = check.string("search.metric", table["metric"])
    mode = check.string("search.mode", table["mode"], MODES)
    scheduler = None
    if "scheduler" in table:
        scheduler = _scheduler(check, table["scheduler"], base)
        valid = workload.step_metrics
        why = "ASHA stops trials on a metric reported every step"
    else:
        valid = tuple(dict.fromkeys(workload.step_metrics + workload.result_metrics))
        why = "the search ranks trials by it"
    if metric not in valid:
        listed = ", ".join(valid) if valid else "none"
        if metric in workload.result_metrics:
            said = f"{workload.name} reports '{metric}' only at the end, but {why}"
        else:
            said = (f"{workload.name} does not report '{metric}'{nearest(metric, valid)}, "
                    f"and {why}")
        raise check.fail("search.metric", f"{said}; choose one of: {listed}")
    return Search(
        workload=workload.name,
        image=image_name,
        base_config=tuple(sorted(base.items())),
        space=space,
        metric=metric,
        mode=mode,
        num_samples=check.integer("search.num_samples",
                                  table.get("num_samples", DEFAULT_NUM_SAMPLES), 1, MAX_SAMPLES),
        sampler=check.string("search.sampler", table.get("sampler", "tpe"), SAMPLERS),
        seed=check.integer("search.seed", table.get("seed", 0), 0, MAX_SEED),
        scheduler=scheduler,
        workload_dir=_source(workload),
    ), images


def _scheduler(check: _Checker, table: Any, base: dict[str, Any]) -> Scheduler:
    table = check.keys("search.scheduler", table, SCHEDULER_KEYS)
    if "type" not in table:
        raise check.fail("search.scheduler.type", f"missing; one of {', '.join(SCHEDULERS)}")
    kind = check.string("search.scheduler.type", table["type"], SCHEDULERS)
    grace = check.integer("search.scheduler.grace_period",
                          table.get("grace_period", DEFAULT_GRACE_PERIOD), 1, MAX_STEPS)
    factor = check.integer("search.scheduler.reduction_factor",
                           table.get("reduction_factor", DEFAULT_REDUCTION_FACTOR), 2,
                           MAX_REDUCTION)
    # A trial reports one step per epoch; it cannot run more than its epochs.
    epochs = base.get("max_epochs") or base.get("epochs")
    if "max_t" in table:
        max_t = check.integer("search.scheduler.max_t", table["max_t"], 1, MAX_STEPS)
        if epochs is not None and max_t > epochs:
            raise check.fail("search.scheduler.max_t", f"is {max_t} but each trial runs "
                                                       f"{epochs} epochs; use at most {epochs}")
    elif epochs is not None:
        max_t = epochs
    else:
        raise check.fail("search.scheduler.max_t", "missing; the most steps a trial runs")
    if grace > max_t:
        raise check.fail("search.scheduler.grace_period", f"is {grace} but max_t is {max_t}; "
                                                          "a trial cannot be stopped after it ends")
    return Scheduler(kind=kind, grace_period=grace, reduction_factor=factor, max_t=max_t)


# ---------------------------------------------------------------- the whole grid


def load_sweep(name_or_path: str, overrides: Sequence[str] = (), *,
               matrix_path: Path = MATRIX_PATH) -> Sweep:
    """Load a grid by name (a file of sweeps/grids) or path, apply ``--set`` overrides, validate.

    Returns the frozen Sweep: every trial's worker config resolved by the worker's
    own schema (all defaults filled in), so trial keys are stable and the records
    show everything. Raises GridError, one line naming the file and key path.
    """
    path = grid_path(name_or_path)
    shown = display_path(path)
    text, document = read_toml(path)
    apply_overrides(document, list(overrides), shown, path.resolve().parent)
    if overrides:
        # The parent run logs this text: keep what was really run next to the file.
        text = text.rstrip("\n") + f"\n\n{OVERRIDES_NOTE}\n" + \
            "".join(f"{OVERRIDE_LINE}{item}\n" for item in overrides)

    check = _Checker(shown)
    check.keys("", document, TOP_KEYS)
    settings = _sweep_settings(check, document, path.stem, Path(matrix_path),
                               path.resolve().parent)
    has_groups, has_search = "group" in document, "search" in document
    if has_groups and has_search:
        raise check.fail("search", "a grid is either [[group]] tables or one [search]; put the "
                                   "search in its own grid file")
    if not has_groups and not has_search:
        raise check.fail("group", "the grid has no [[group]] tables and no [search]; add one")

    trials: tuple[TrialSpec, ...] = ()
    search = None
    if has_search:
        search, images = _search_sweep(check, settings, document["search"])
    else:
        trials, images = _group_sweep(check, settings, document["group"])
    return Sweep(
        name=settings.name,
        path=path.resolve(),
        text=text,
        description=settings.description,
        backend=settings.backend,
        device=settings.device,
        trial_timeout_s=settings.trial_timeout_s,
        retries=settings.retries,
        max_concurrent=settings.max_concurrent,
        trials=trials,
        search=search,
        data_dir=settings.data_dir,
        images=tuple(images),
        container_memory=settings.container_memory,
    )


def recorded_overrides(text: str) -> list[str]:
    """The --set overrides a sweep's grid text lists at its end (load_sweep writes them)."""
    lines = text.splitlines()
    if OVERRIDES_NOTE not in lines:
        return []
    note = len(lines) - 1 - lines[::-1].index(OVERRIDES_NOTE)  # the last note
    return [line[len(OVERRIDE_LINE):] for line in lines[note + 1:]
            if line.startswith(OVERRIDE_LINE)]


def search_space_of(text: str, shown: str = "the sweep's grid file") -> tuple[Param, ...]:
    """The [search] space of a sweep's grid text, as its parent run keeps it.

    The text is parsed with the --set overrides it lists re-applied, and each dimension
    is read by the same code load_sweep reads it with (so a report draws the space the
    search sampled). Only the space is read: the images, data and the rest of the grid
    may belong to another machine. A shipped workload's config schema checks the keys; a
    user's own workload is not loaded (its code is not run to read a record), so its
    keys are taken as they are. GridError when the text has no [search] space or a
    dimension is wrong.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{shown}: not valid TOML: {exc}") from None
    apply_overrides(document, recorded_overrides(text), shown)
    check = _Checker(shown)
    search = document.get("search")
    if not isinstance(search, dict):
        raise check.fail("search", "missing; the grid is not a search")
    name = search.get("workload")
    workload = workloads.SHIPPED.get(name) if isinstance(name, str) else None
    space = check.table("search.space", search.get("space", {}))
    if not space:
        raise check.fail("search.space", "is empty")
    return tuple(_param(check, workload, key, spec) for key, spec in space.items())


def shipped_grids() -> list[str]:
    """The names of the grids in sweeps/grids."""
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))

"""The image matrix: images/matrix.toml loaded and checked into ``spec.Image`` entries.

images/matrix.toml is data: one ``[[image]]`` table per Docker image that pins a
PyTorch build. Grids name these images; the docker backend builds and runs them.
A mistake in the matrix is a user error with the file and the key path, like a
mistake in a grid, because a sweep over a misdescribed image records wrong facts.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweeps.errors import GridError, UserError
from sweeps.grid.spec import LOCAL_IMAGE, Image
from sweeps.validate import InputError, path_text, read_text

# The keys of one [[image]] table; True marks the required ones.
IMAGE_KEYS = {
    "name": True,
    "base": True,
    "torch": True,
    "python": True,
    "cuda": True,
    "cudnn": True,
    "archs": True,
    "ptx": False,
    "torch_index_url": False,
    "notes": False,
}

# Top-level keys of the matrix file.
TOP_KEYS = ("schema", "image")
SCHEMA_VERSION = 1

# "0.4.1", "1.13.1", "2.15.0" (a local suffix like "+cu117" belongs in the name, not here).
TORCH_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
PYTHON_VERSION = re.compile(r"^3\.\d+(\.\d+)?$")
# The oldest Python the workers run on (workers/ stays Python 3.6-compatible).
OLDEST_PYTHON = (3, 6)
CUDA_VERSION = re.compile(r"^\d+\.\d+$")
CUDNN_VERSION = re.compile(r"^\d+(\.\d+){1,3}$")
# SASS for a real architecture ("sm_90", "sm_90a", "sm_120") and PTX for a virtual one.
SASS_ARCH = re.compile(r"^sm_\d{2,3}a?$")
PTX_ARCH = re.compile(r"^compute_\d{2,3}a?$")
# A Docker reference with an explicit tag: "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime".
DOCKER_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9._-]+$")
# A pip index ("https://download.pytorch.org/whl/cpu"): images/Dockerfile installs
# torch==<torch> from it when the base image has no torch.
INDEX_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~%/-]*)?$")


def display_path(path: Path) -> str:
    """The path as a user would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # outside it; too long; a loop of links
        return str(path)


def nearest(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or '' when nothing is close."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """Read a TOML file (UTF-8, a byte-order mark allowed); a file that is missing, not a
    file, unreadable, binary or too large, or a syntax error, is one GridError line."""
    try:
        path_text(path, "")
    except InputError as exc:
        raise GridError(str(exc)) from None
    shown = display_path(path)
    try:
        text = read_text(path, "")
    except InputError as exc:
        raise GridError(f"{shown}: {exc.problem}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise GridError(f"{shown}: not valid TOML: {exc}") from None


def _check_name(shown: str, where: str, entry: dict[str, Any]) -> None:
    """An image name says what it holds: torch-<torch>-cu<cuda digits> or torch-<torch>-cpu."""
    cuda = entry["cuda"] or None
    variant = "cpu" if cuda is None else "cu" + cuda.replace(".", "")
    expected = f"torch-{entry['torch']}-{variant}"
    name = entry["name"]
    if name != expected and not name.startswith(expected + "-"):
        raise GridError(f"{shown}: {where}.name: '{name}' does not match its torch and cuda "
                        f"fields; name it '{expected}' (optionally with a '-suffix')")


def _image_from_table(shown: str, index: int, table: Any) -> Image:
    where = f"image[{index}]"
    if not isinstance(table, dict):
        raise GridError(f"{shown}: {where}: must be a table ([[image]]), not {table!r}")
    for key in table:
        if key not in IMAGE_KEYS:
            raise GridError(f"{shown}: {where}.{key}: unknown key{nearest(key, IMAGE_KEYS)}; "
                            f"valid keys: {', '.join(IMAGE_KEYS)}")
    for key, required in IMAGE_KEYS.items():
        if required and key not in table:
            raise GridError(f"{shown}: {where}.{key}: missing; every image needs "
                            f"{', '.join(k for k, r in IMAGE_KEYS.items() if r)}")
    for key in ("name", "base", "torch", "python", "cuda", "cudnn", "torch_index_url", "notes"):
        if key in table and not isinstance(table[key], str):
            raise GridError(f"{shown}: {where}.{key}: must be a string, not {table[key]!r}")
    for key in ("archs", "ptx"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GridError(f"{shown}: {where}.{key}: must be a list of strings, not {value!r}")

    name = table["name"]
    if not re.match(r"^[a-z0-9][a-z0-9.-]*$", name):
        raise GridError(f"{shown}: {where}.name: '{name}' must be lower-case letters, digits, "
                        "dots and dashes, like 'torch-1.13.1-cu116'")
    where = f"image[{index}] ({name})"
    if name == LOCAL_IMAGE:
        raise GridError(f"{shown}: {where}.name: '{LOCAL_IMAGE}' is reserved for the host's "
                        "own torch (the local backend); pick another name")
    checks = (
        ("base", DOCKER_REFERENCE, "a Docker image with a tag, like "
                                   "'pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime'"),
        ("torch", TORCH_VERSION, "a release like '1.13.1'"),
        ("python", PYTHON_VERSION, "a Python 3 version like '3.10'"),
    )
    for key, pattern, what in checks:
        if not pattern.match(table[key]):
            raise GridError(f"{shown}: {where}.{key}: '{table[key]}' is not {what}")
    if tuple(int(p) for p in table["python"].split(".")[:2]) < OLDEST_PYTHON:
        raise GridError(f"{shown}: {where}.python: '{table['python']}' is older than the "
                        "workers support (Python 3.6 and newer)")
    index_url = table.get("torch_index_url", "")
    if index_url and not INDEX_URL.match(index_url):
        raise GridError(f"{shown}: {where}.torch_index_url: '{index_url}' is not a pip index "
                        "URL like 'https://download.pytorch.org/whl/cpu'")
    cuda, cudnn = table["cuda"], table["cudnn"]
    if cuda and not CUDA_VERSION.match(cuda):
        raise GridError(f"{shown}: {where}.cuda: '{cuda}' is not a CUDA version like '11.8' "
                        "(use \"\" for a CPU-only image)")
    if cudnn and not CUDNN_VERSION.match(cudnn):
        raise GridError(f"{shown}: {where}.cudnn: '{cudnn}' is not a cuDNN version like "
                        "'8.7.0.84' (use \"\" for a CPU-only image)")
    if bool(cuda) != bool(cudnn):
        raise GridError(f"{shown}: {where}: cuda and cudnn must both be set (a CUDA image) or "
                        "both be \"\" (a CPU-only image)")
    archs, ptx = table["archs"], table.get("ptx", [])
    if cuda and not archs:
        raise GridError(f"{shown}: {where}.archs: a CUDA image needs the GPU architectures "
                        "compiled in, like [\"sm_80\", \"sm_90\"]")
    if not cuda and (archs or ptx):
        raise GridError(f"{shown}: {where}.archs: a CPU-only image has no GPU architectures; "
                        "use []")
    for key, values, pattern, example in (("archs", archs, SASS_ARCH, "sm_90"),
                                          ("ptx", ptx, PTX_ARCH, "compute_90")):
        for value in values:
            if not pattern.match(value):
                raise GridError(f"{shown}: {where}.{key}: '{value}' is not an architecture "
                                f"like '{example}'")
        if len(set(values)) != len(values):
            raise GridError(f"{shown}: {where}.{key}: lists an architecture twice")
    _check_name(shown, where, table)
    return Image(
        name=name,
        base=table["base"],
        torch=table["torch"],
        python=table["python"],
        cuda=cuda or None,
        cudnn=cudnn or None,
        # Sorted by architecture number so equal sets compare equal.
        archs=tuple(sorted(archs, key=lambda a: int(re.sub(r"\D", "", a)))),
        ptx=tuple(sorted(ptx, key=lambda a: int(re.sub(r"\D", "", a)))),
        torch_index_url=index_url,
        notes=table.get("notes", ""),
    )


def load_matrix(path: Path) -> dict[str, Image]:
    """Load images/matrix.toml into {name: Image}, in file order.

    Raises GridError (one line: file, key path, what to do) for a missing file,
    a TOML syntax error, an unknown or missing key, a malformed version or
    architecture, a name that contradicts its fields, or a duplicate name.
    """
    shown = display_path(path)
    _, document = read_toml(path)
    for key in document:
        if key not in TOP_KEYS:
            raise GridError(f"{shown}: {key}: unknown key{nearest(key, TOP_KEYS)}; the matrix "
                            "holds schema = 1 and [[image]] tables")
    schema = document.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise GridError(f"{shown}: schema: this versweep reads matrix schema "
                        f"{SCHEMA_VERSION}, not {schema!r}")
    tables = document.get("image")
    if not isinstance(tables, list) or not tables:
        raise GridError(f"{shown}: image: the matrix has no [[image]] tables")
    images: dict[str, Image] = {}
    for index, table in enumerate(tables):
        image = _image_from_table(shown, index, table)
        if image.name in images:
            raise GridError(f"{shown}: image[{index}].name: '{image.name}' appears twice; "
                            "image names must be unique")
        images[image.name] = image
    return images


# Words that select entries of the matrix instead of naming them (grids, versweep images/envs).
SELECTORS = ("all", "cuda", "cpu")


def select_entries(matrix: dict[str, Image], names: Sequence[str], matrix_path: Path, *,
                   hint: str) -> list[Image]:
    """The entries named by ``names`` (entry names or selectors), in matrix order.

    A name that is neither is one UserError naming the nearest, then ``hint`` (what the
    caller's user can do: "python images/build.py list shows them all").
    """
    chosen: set[str] = set()
    for name in names:
        if name == "all":
            chosen.update(matrix)
        elif name in ("cuda", "cpu"):
            chosen.update(n for n, i in matrix.items() if (i.cuda is not None) == (name == "cuda"))
        elif name in matrix:
            chosen.add(name)
        else:
            raise UserError(f"image '{name}' is not in {display_path(matrix_path)}"
                            f"{nearest(name, list(matrix) + list(SELECTORS))}; {hint}")
    return [image for name, image in matrix.items() if name in chosen]


def release_line(image: Image) -> str:
    """The PyTorch release line of an image: '1.13' for torch 1.13.1."""
    return ".".join(image.torch.split(".")[:2])



# ---------------------------------------------------------------- an image against its entry

# The release at the front of a torch version: "2.13.0+cpu", "1.0.1.post2", "1.0.0a0+db5d313".
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def cudnn_release(code: int) -> str:
    """cuDNN's integer version as major.minor.patch: 7102 -> '7.1.2', 90100 -> '9.1.0'.

    torch.backends.cudnn.version() returns cuDNN's CUDNN_VERSION, whose encoding changed
    with cuDNN 9: MAJOR*1000 + MINOR*100 + PATCH up to cuDNN 8 (8500 is 8.5.0), then
    MAJOR*10000 + MINOR*100 + PATCH (91900 is 9.19.0), so minors can pass 9.
    """
    major, rest = divmod(int(code), 10000 if code >= 90000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def _release_parts(version: str, count: int) -> str:
    """The first ``count`` numeric parts of a version, 0 where missing: ('9.0.176', 2) -> '9.0'."""
    found = _RELEASE.match(version)
    if found is None:
        return version
    parts = [int(p) if p is not None else 0 for p in found.groups()] + [0] * count
    return ".".join(str(p) for p in parts[:count])


def env_differences(image: Image, env: dict[str, Any]) -> list[str]:
    """What the worker's env event, run inside ``image``, says differs from its matrix entry.

    One phrase per field, like "torch is 1.13.0 in the image, the matrix says 1.13.1";
    an empty list when the image is what the matrix says. Local suffixes ("+cpu",
    ".post2") and CUDA's build number ("9.0.176") are ignored; cuDNN is compared as
    major.minor.patch (the integer torch reports has no build number). GPU architectures
    are compared only when the event has them (``arch_list`` comes from a GPU).
    """
    differences = []

    def differ(field: str, found: str, says: str, verb: str = "is") -> None:
        differences.append(f"{field} {verb} {found} in the image, the matrix says {says}")

    torch_found = str(env.get("torch") or "none")
    if _release_parts(torch_found, 3) != image.torch:
        differ("torch", torch_found, image.torch)
    python_found = str(env.get("python") or "none")
    wanted = len(image.python.split("."))
    if _release_parts(python_found, wanted) != image.python:
        differ("python", python_found, image.python)
    cuda_found = env.get("cuda")
    if (cuda_found is None) != (image.cuda is None) or (
            cuda_found is not None and image.cuda is not None
            and _release_parts(str(cuda_found), 2) != image.cuda):
        differ("cuda", str(cuda_found) if cuda_found else "none (a CPU build)",
               image.cuda or "none (a CPU image)")
    cudnn_found = env.get("cudnn")
    found_text = f"{cudnn_release(cudnn_found)} ({cudnn_found})" \
        if isinstance(cudnn_found, int) else "none"
    if (cudnn_found is None) != (image.cudnn is None) or (
            isinstance(cudnn_found, int) and image.cudnn is not None
            and cudnn_release(cudnn_found) != _release_parts(image.cudnn, 3)):
        differ("cudnn", found_text, image.cudnn or "none (a CPU image)")
    arch_list = env.get("arch_list")
    if arch_list is not None:
        sass = sorted(a for a in arch_list if a.startswith("sm_"))
        ptx = sorted(a for a in arch_list if a.startswith("compute_"))
        if set(sass) != set(image.archs):
            differ("archs", " ".join(sass) or "none", " ".join(image.archs) or "none", "are")
        if set(ptx) != set(image.ptx):
            differ("ptx", " ".join(ptx) or "none", " ".join(image.ptx) or "none")
    return differences


# ---------------------------------------------------------------- an image's labels

# The io.versweep.* labels images/Dockerfile writes from the entry's fields at build time;
# a mirror whose labels differ was built from another (an older, or a wrong) entry.
LABEL_PREFIX = "io.versweep."
LABEL_FIELDS = ("torch", "python", "cuda", "cudnn")


def label_differences(image: Image, labels: dict[str, str] | None) -> list[str] | None:
    """What the io.versweep.* labels of an image say differs from its matrix entry ``image``.

    One phrase per field, like "python is 3.10 in the image's labels, the matrix says
    3.11"; an empty list when they agree; None when the image has no such labels (not
    built by images/Dockerfile), so it cannot be checked without running it. The labels
    hold the entry's strings verbatim ("" for a CPU image's cuda and cudnn), so the
    comparison is exact.
    """
    labels = labels or {}
    if f"{LABEL_PREFIX}torch" not in labels:
        return None
    differences = []
    for field in LABEL_FIELDS:
        says = getattr(image, field) or ""
        found = labels.get(f"{LABEL_PREFIX}{field}")
        if found is None:
            differences.append(f"{field} is not in the image's labels, the matrix says "
                               f"{says or 'none'}")
        elif found != says:
            differences.append(f"{field} is {found or 'none'} in the image's labels, the matrix "
                               f"says {says or 'none'}")
    return differences

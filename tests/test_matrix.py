"""images/matrix.toml checked against itself, and what a broken matrix tells its editor."""
import re
import tomllib
from pathlib import Path

import pytest

from sweeps.errors import GridError
from sweeps.grid.load import MATRIX_PATH
from sweeps.grid.matrix import (
    cudnn_release,
    env_differences,
    label_differences,
    load_matrix,
    release_line,
)

# Every PyTorch release line the project promises to cover (DESIGN.md, images section).
RELEASE_LINES = ["0.4"] + [f"1.{minor}" for minor in range(14)] + \
    [f"2.{minor}" for minor in range(16)]

FIELDS = ("name", "base", "torch", "python", "cuda", "cudnn", "archs")


def _version(text):
    return tuple(int(part) for part in text.split("."))


@pytest.fixture(scope="module")
def raw_entries():
    """The [[image]] tables as TOML gives them, without the loader's help."""
    return tomllib.loads(MATRIX_PATH.read_text())["image"]


@pytest.fixture(scope="module")
def matrix():
    return load_matrix(MATRIX_PATH)


def test_the_matrix_loads_with_one_entry_per_table(matrix, raw_entries):
    assert list(matrix) == [entry["name"] for entry in raw_entries]


def test_image_names_are_unique(raw_entries):
    names = [entry["name"] for entry in raw_entries]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_release_line_from_0_4_to_2_15_has_an_image(matrix):
    covered = {release_line(image) for image in matrix.values()}
    missing = [line for line in RELEASE_LINES if line not in covered]
    assert not missing, f"release lines without an image: {missing}"


def test_every_entry_has_every_field_well_formed(raw_entries):
    for entry in raw_entries:
        for field in FIELDS:
            assert field in entry, f"{entry.get('name')}: no {field}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["torch"]), entry
        assert re.fullmatch(r"3\.\d+", entry["python"]), entry
        assert entry["notes"].strip(), f"{entry['name']}: notes must say where the facts come from"
        if entry["cuda"]:
            assert re.fullmatch(r"\d+\.\d+", entry["cuda"]), entry
            assert re.fullmatch(r"\d+(\.\d+){1,3}", entry["cudnn"]), entry
            assert entry["archs"], f"{entry['name']}: a CUDA image needs its archs"
            assert all(re.fullmatch(r"sm_\d{2,3}", a) for a in entry["archs"]), entry
            assert all(re.fullmatch(r"compute_\d{2,3}", a) for a in entry.get("ptx", [])), entry
        else:
            assert entry["cudnn"] == "" and entry["archs"] == [], entry


def test_names_say_torch_and_cuda(matrix):
    for image in matrix.values():
        variant = "cpu" if image.cuda is None else "cu" + image.cuda.replace(".", "")
        assert image.name == f"torch-{image.torch}-{variant}"


def test_pytorch_tags_match_the_torch_and_cuda_of_the_entry(matrix):
    for image in matrix.values():
        if not image.base.startswith("pytorch/pytorch:"):
            continue
        tag = image.base.split(":", 1)[1]
        # Old tags shorten the version ("1.2-cuda10.0", "0.4-cuda9"), so the line is enough.
        assert tag.startswith(release_line(image)), image
        major, minor = image.cuda.split(".")
        spelled = {f"cuda{image.cuda}"} | ({f"cuda{major}"} if minor == "0" else set())
        assert any(f"{s}-" in tag for s in spelled), image
        assert tag.endswith(("-runtime", "-devel")), image


def test_archs_are_ones_the_cuda_toolkit_can_compile_for(matrix):
    # sm_80 needs CUDA 11.0, sm_86 11.1, sm_90 11.8, sm_100/sm_120 12.8: a newer arch in an
    # older toolkit's image is a typo in the matrix.
    first_cuda = {"sm_80": "11.0", "sm_86": "11.1", "sm_90": "11.8", "sm_100": "12.8",
                  "sm_120": "12.8"}
    for image in matrix.values():
        for arch in image.archs:
            if arch in first_cuda:
                assert _version(image.cuda) >= _version(first_cuda[arch]), (image.name, arch)


def test_cudnn_major_fits_cuda(matrix):
    # cuDNN 8 came with CUDA 11 support, cuDNN 7 never supported CUDA 11.
    for image in matrix.values():
        if image.cuda is None:
            continue
        cudnn_major = int(image.cudnn.split(".")[0])
        if _version(image.cuda) >= (11, 0):
            assert cudnn_major >= 8, image.name
        else:
            assert cudnn_major == 7, image.name


def test_the_gpu_generations_the_reference_names_are_covered(matrix):
    # A100 (sm_80) from 1.7 cu110, H100 (sm_90) from 2.0 cu118 (reference §2), and a CPU
    # image for testing the docker backend without a GPU.
    assert "sm_80" in matrix["torch-1.7.1-cu110"].archs
    assert "sm_90" in matrix["torch-2.0.1-cu118"].archs
    assert "sm_90" not in matrix["torch-2.0.1-cu117"].archs
    assert any(image.cuda is None for image in matrix.values())


def test_ptx_is_for_architectures_the_cuda_toolkit_knows(matrix):
    first_cuda = {"compute_80": "11.0", "compute_86": "11.1", "compute_90": "11.8",
                  "compute_100": "12.8", "compute_120": "12.8"}
    for image in matrix.values():
        for arch in image.ptx:
            if arch in first_cuda:
                assert _version(image.cuda) >= _version(first_cuda[arch]), (image.name, arch)


def test_two_images_of_one_release_differ_in_which_gpus_run_them(matrix):
    # The issue asks for more than one image of a release only where the CUDA variant
    # changes what runs on which GPU; a second image with the same reach is a duplicate.
    by_release = {}
    for image in matrix.values():
        by_release.setdefault(image.torch, []).append(image)
    for images in by_release.values():
        reaches = [(image.cuda is None, image.archs, image.ptx) for image in images]
        assert len(set(reaches)) == len(reaches), [image.name for image in images]
    assert any(len(images) > 1 for images in by_release.values())


def test_a_base_without_torch_is_the_python_image_of_the_entry(matrix):
    # Not a pytorch/pytorch tag: images/Dockerfile pip-installs torch==<torch> on it, so it
    # must be the official Python image of the entry's Python.
    for image in matrix.values():
        if image.base.startswith("pytorch/pytorch:"):
            continue
        assert image.base.startswith(f"python:{image.python}"), image
        if image.cuda is None:
            # PyPI's plain torch is the CUDA build; a CPU image must name the CPU index.
            assert image.torch_index_url == "https://download.pytorch.org/whl/cpu", image


def test_cudnn_integers_read_as_torch_reports_them():
    # torch.backends.cudnn.version(): MAJOR*1000+MINOR*100+PATCH up to cuDNN 8,
    # MAJOR*10000+MINOR*100+PATCH from cuDNN 9.
    assert cudnn_release(7102) == "7.1.2"
    assert cudnn_release(7605) == "7.6.5"
    assert cudnn_release(8500) == "8.5.0"
    assert cudnn_release(8907) == "8.9.7"
    assert cudnn_release(90100) == "9.1.0"
    assert cudnn_release(91900) == "9.19.0"


def test_an_env_event_that_matches_its_entry_has_no_differences(matrix):
    cpu = {"torch": "2.13.0+cpu", "python": "3.11.2", "cuda": None, "cudnn": None,
           "arch_list": None}
    assert env_differences(matrix["torch-2.13.0-cpu"], cpu) == []
    old = {"torch": "0.4.0", "python": "3.6.5", "cuda": "9.0.176", "cudnn": 7102,
           "arch_list": None}
    assert env_differences(matrix["torch-0.4.0-cu90"], old) == []
    on_gpu = {"torch": "2.13.0+cu130", "python": "3.11.9", "cuda": "13.0", "cudnn": 92000,
              "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120",
                            "compute_120"]}
    assert env_differences(matrix["torch-2.13.0-cu130"], on_gpu) == []


def test_every_field_that_differs_is_named(matrix):
    image = matrix["torch-1.13.1-cu116"]
    env = {"torch": "1.13.0+cu116", "python": "3.6.15", "cuda": "11.7", "cudnn": 8500,
           "arch_list": ["sm_37", "sm_50"]}
    found = env_differences(image, env)
    assert found[0] == "torch is 1.13.0+cu116 in the image, the matrix says 1.13.1"
    assert [phrase.split()[0] for phrase in found] == \
        ["torch", "python", "cuda", "cudnn", "archs", "ptx"]
    assert f"cudnn is 8.5.0 (8500) in the image, the matrix says {image.cudnn}" in found
    cpu_build = {"torch": "1.13.1+cpu", "python": image.python + ".0", "cuda": None,
                 "cudnn": None, "arch_list": None}
    assert env_differences(image, cpu_build) == [
        f"cuda is none (a CPU build) in the image, the matrix says {image.cuda}",
        f"cudnn is none in the image, the matrix says {image.cudnn}"]


def _labels(image):
    """The io.versweep.* labels images/Dockerfile gives an image built from ``image``."""
    return {"io.versweep.image": image.name, "io.versweep.torch": image.torch,
            "io.versweep.python": image.python, "io.versweep.cuda": image.cuda or "",
            "io.versweep.cudnn": image.cudnn or "", "org.opencontainers.image.version": "x"}


def test_labels_of_an_image_built_from_the_entry_agree_with_it(matrix):
    for name in ("torch-2.13.0-cpu", "torch-1.13.1-cu116"):
        assert label_differences(matrix[name], _labels(matrix[name])) == []


def test_labels_from_another_entry_name_every_field_that_differs(matrix):
    # A mirror built when the entry said 2.13.0 / Python 3.11 / CUDA 13.0 / cuDNN 9.20.0.48,
    # pulled for the 2.14.0 entry.
    found = label_differences(matrix["torch-2.14.0-cu130"], _labels(matrix["torch-2.13.0-cu130"]))
    assert found == ["torch is 2.13.0 in the image's labels, the matrix says 2.14.0",
                     "cudnn is 9.20.0.48 in the image's labels, the matrix says 9.24.0.43"]
    cpu = _labels(matrix["torch-2.13.0-cpu"])
    assert label_differences(matrix["torch-2.13.0-cu130"], cpu) == [
        "cuda is none in the image's labels, the matrix says 13.0",
        "cudnn is none in the image's labels, the matrix says 9.20.0.48"]
    del cpu["io.versweep.python"]
    assert label_differences(matrix["torch-2.13.0-cpu"], cpu) == [
        "python is not in the image's labels, the matrix says 3.11"]


def test_an_image_without_versweep_labels_cannot_be_compared(matrix):
    image = matrix["torch-2.13.0-cpu"]
    assert label_differences(image, None) is None
    assert label_differences(image, {"maintainer": "someone"}) is None


def _write(tmp_path, text):
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


GOOD = """
[[image]]
name = "torch-2.1.0-cu121"
base = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"
torch = "2.1.0"
python = "3.10"
cuda = "12.1"
cudnn = "8.9.2.26"
archs = ["sm_80", "sm_90"]
notes = "test"
"""


def test_a_small_matrix_loads_into_images(tmp_path):
    images = load_matrix(_write(tmp_path, GOOD))
    image = images["torch-2.1.0-cu121"]
    assert (image.torch, image.cuda, image.cudnn, image.archs) == \
        ("2.1.0", "12.1", "8.9.2.26", ("sm_80", "sm_90"))


@pytest.mark.parametrize("text, where, says", [
    (GOOD + GOOD, "image[1].name", "appears twice"),
    (GOOD.replace("archs =", "arch ="), "image[0].arch", "did you mean 'archs'"),
    (GOOD.replace('cudnn = "8.9.2.26"\n', ""), "image[0].cudnn", "missing"),
    (GOOD.replace('"sm_90"', '"sm90"'), ".archs", "'sm90' is not an architecture"),
    (GOOD.replace('torch = "2.1.0"', 'torch = "2.1"'), ".torch", "not a release"),
    (GOOD.replace('name = "torch-2.1.0-cu121"', 'name = "torch-2.1.0-cu118"'), ".name",
     "does not match"),
    (GOOD.replace('cuda = "12.1"', 'cuda = ""'), "image[0]", "both"),
    (GOOD.replace("archs = [", "archs = [1, "), ".archs", "list of strings"),
    (GOOD + "\n[[image]\n", "", "line"),
    ("schema = 2\n" + GOOD, "schema", "schema 1"),
    (GOOD.replace('python = "3.10"', 'python = "3.5"'), ".python", "older than the workers"),
    (GOOD + 'torch_index_url = "download.pytorch.org/whl/cpu"\n', ".torch_index_url",
     "not a pip index URL"),
    (GOOD + 'torch_index = "https://download.pytorch.org/whl/cpu"\n', ".torch_index",
     "did you mean 'torch_index_url'"),
])
def test_a_broken_matrix_names_file_and_key(tmp_path, text, where, says):
    with pytest.raises(GridError) as caught:
        load_matrix(_write(tmp_path, text))
    message = str(caught.value)
    assert "matrix.toml: " in message and where in message and says in message, message
    assert "\n" not in message


def test_an_index_url_reaches_the_image(tmp_path):
    text = GOOD + 'torch_index_url = "https://download.pytorch.org/whl/cu121"\n'
    image = load_matrix(_write(tmp_path, text))["torch-2.1.0-cu121"]
    assert image.torch_index_url == "https://download.pytorch.org/whl/cu121"


def test_a_missing_matrix_is_one_clear_error(tmp_path):
    with pytest.raises(GridError, match="no such file"):
        load_matrix(Path(tmp_path / "nowhere.toml"))

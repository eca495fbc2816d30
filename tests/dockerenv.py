"""A real Docker engine for the tests, and a small local image of the matrix to run in it.

No registry can be reached here, so nothing is pulled: the tests make their own image.

1. A base, ``versweep-testbase:<recipe hash>``: a minimal Debian root filesystem made with
   debootstrap (python3 from Debian's packages), the host's CPU torch wheel installed into
   it with pip, imported with ``docker import``. Made once per recipe and kept by the
   engine (so a second test run on the same machine takes seconds).
2. The matrix image ``versweep:torch-2.13.0-cpu``, built from images/Dockerfile on that
   base with images/build.py, as a user builds any image of the matrix (the Dockerfile
   keeps a base's own torch). Its python and torch are the ones images/matrix.toml says.

The engine itself is started by .ci/run (apt-get install docker.io; dockerd). Where no
engine answers, the docker tests are skipped with one line saying so (tests/needs.py),
unless VERSWEEP_REQUIRE_DOCKER=1 (set by .ci/run) makes that a failure: CI must never
pass by skipping them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from needs import need, problem

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "images" / "matrix.toml"
# The matrix image the tests run: CPU-only torch 2.13.0 on Python 3.11, as on the host.
TEST_IMAGE = "torch-2.13.0-cpu"
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the ABI of the host's torch wheel
DEBIAN_MIRROR = os.environ.get("VERSWEEP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_REPOSITORY = "versweep-testbase"
# What goes into the base; a change to it makes a new base.
# The bytecode is compiled at install (the image's workers run with PYTHONDONTWRITEBYTECODE:
# without it every docker trial would compile torch's sources again, seconds of CPU).
BASE_RECIPE = {"suite": DEBIAN_SUITE, "include": "python3,ca-certificates",
               "pip": ("torch==2.13.0", "numpy"), "bytecode": True}


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    return problem("docker")


def require_engine() -> None:
    """Skip (or, under VERSWEEP_REQUIRE_DOCKER=1, fail) where no engine answers."""
    need("docker")


def base_tag(recipe: dict = BASE_RECIPE) -> str:
    """``versweep-testbase:<hash of the recipe>``: a new recipe is a new base."""
    digest = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{digest}"


def _image_exists(tag: str) -> bool:
    import docker
    import docker.errors

    try:
        docker.from_env(timeout=60).images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _run(args: list[str], **kwargs) -> None:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def make_base(recipe: dict = BASE_RECIPE) -> str:
    """The base image (debootstrap + the recipe's pip packages), made if missing.

    The default recipe holds the host's torch wheel; benchmarks/two_versions.py makes a
    second base with another torch release the same way.
    """
    tag = base_tag(recipe)
    if _image_exists(tag):
        return tag
    need("debootstrap")
    work = Path(tempfile.mkdtemp(prefix="vs-rootfs-", dir=os.environ.get("TMPDIR", "/tmp")))
    rootfs = work / "rootfs"
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={recipe['include']}",
              recipe["suite"], str(rootfs), DEBIAN_MIRROR], timeout=900)
        site = rootfs / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
        compile_flag = "--compile" if recipe.get("bytecode") else "--no-compile"
        _run([sys.executable, "-m", "pip", "install", "-q", compile_flag,
              "--disable-pip-version-check", "--target", str(site),
              *recipe["pip"]], timeout=1800)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=900)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag


def build_test_image() -> str:
    """``versweep:torch-2.13.0-cpu``, built from images/Dockerfile on the test base.

    The suite's processes (pytest-xdist) each ask for it at their start: a lock on this
    machine lets the first make it while the others wait, then find it made.
    """
    lock_path = Path(tempfile.gettempdir()) / "versweep-test-image.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_test_image()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_test_image() -> str:
    base = make_base()
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "build",
                           TEST_IMAGE, "--base", base], capture_output=True, text=True,
                          timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"images/build.py build {TEST_IMAGE} failed:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return f"versweep:{TEST_IMAGE}"


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The matrix image name whose local image ``versweep:<name>`` exists now."""
    require_engine()
    build_test_image()
    return TEST_IMAGE


@pytest.fixture
def registry(tmp_path):
    """A real registry (Debian's docker-registry) on a free loopback port: '127.0.0.1:PORT'.

    The engine accepts it without TLS: 127.0.0.0/8 is an insecure registry by default.
    """
    import time
    import urllib.request

    from sweeping import free_port

    need("docker")  # a registry is only of use to an engine
    need("docker-registry")
    binary = shutil.which("docker-registry")
    assert binary is not None
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path / 'registry'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    with open(tmp_path / "registry.log", "w") as log:
        server = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("docker-registry did not start: "
                                + (tmp_path / "registry.log").read_text()[-2000:])
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def push_unlabelled_image(registry: str, name: str, layer_bytes=(6_000_000, 20_000_000)) -> str:
    """Push ``<registry>/versweep:<name>``: an image FROM scratch with a layer of random
    bytes per entry of ``layer_bytes`` (nothing another image shares, so a pull really
    moves them) and no io.versweep.* labels; then remove it from the engine. Returns the
    mirror's reference."""
    import io
    import tarfile

    import docker

    mirrored = f"{registry}/versweep:{name}"
    context = io.BytesIO()
    files = {f"layer{i}.bin": os.urandom(size) for i, size in enumerate(layer_bytes)}
    dockerfile = "FROM scratch\n" + "".join(f"COPY {f} /{f}\n" for f in files)
    with tarfile.open(fileobj=context, mode="w") as tar:
        for file_name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(file_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client = docker.from_env(timeout=300)
    client.images.build(fileobj=context, custom_context=True, tag=mirrored, rm=True)
    for event in client.api.push(f"{registry}/versweep", tag=name, stream=True, decode=True):
        assert not event.get("error"), event
    client.images.remove(mirrored)
    return mirrored

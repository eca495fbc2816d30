"""Pre-pulling matrix images on every node of a real Ray cluster, as a user does before a sweep.

The cluster is two real Ray nodes on this machine (``ray start --head``, then a second
``ray start --address``), 1 CPU each; the registry is Debian's ``docker-registry`` on a
loopback port; the image is the tests' own ``versweep:torch-2.13.0-cpu`` under a name of
this test's own (so removing it cannot disturb another test).

Both Ray nodes talk to this machine's one Docker engine, so these tests check the
per-node fan-out (one pinned task ran on each node, each node reported each image) and
the reporting, not two separate engines: a tag pulled through one node is seen by both.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from dockerenv import push_unlabelled_image, require_engine
from sweeping import end_processes_mentioning, free_port

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "images" / "matrix.toml"
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
# Ray's smallest object store: these tests move no objects, and the machine is shared.
OBJECT_STORE_BYTES = 80 * 1024 * 1024


def ray_env(tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = tmp  # every process of this cluster mentions it: cleanup finds them
    # Ray >= 2.5x turns on token authentication for `ray start --head`; a loopback test
    # cluster has no token to share, so all its processes run without it.
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def ray_start(args: str, env: dict[str, str], log: Path) -> None:
    """``ray start ARGS`` through a shell, as the cluster configs write it; 1 CPU."""
    command = (f"{shlex.join(RAY_CLI)} start --num-cpus 1 --disable-usage-stats "
               f"--object-store-memory {OBJECT_STORE_BYTES} {args}")
    with open(log, "w") as out:
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{log.read_text()[-3000:]}")


def alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    script = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
              "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} "
              "for n in ray.nodes() if n['Alive']]))")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(docker_image):
    """A real two-node Ray cluster on loopback: (GCS address, env for its drivers, nodes).

    The head advertises no image; the second node joins as the configs in sweeps/cluster
    start a node, with the resources sweeps.cluster.resources finds on it (the test image
    is on the engine). Every process started from the cluster's private temp dir is ended
    afterwards by pid.
    """
    tmp = tempfile.mkdtemp(prefix="vspp-", dir="/tmp")  # short: Unix socket paths < 108 B
    env = ray_env(tmp)
    address = f"127.0.0.1:{free_port()}"
    try:
        ray_start(f"--head --port {address.rsplit(':', 1)[1]} --include-dashboard false",
                  env, Path(tmp) / "head.log")
        python = shlex.quote(sys.executable)
        ray_start(f'--address {address} --resources "$({python} -m sweeps.cluster.resources)"',
                  env, Path(tmp) / "second.log")
        deadline = time.monotonic() + 120
        while len(nodes := alive_nodes(address, env)) < 2:
            assert time.monotonic() < deadline, f"the second node never joined: {nodes}"
            time.sleep(2)
        yield address, env, nodes
    finally:
        end_processes_mentioning(tmp, remove=True)


@pytest.fixture
def own_image(docker_image, tmp_path):
    """(name, matrix copy): the test image as a matrix entry of its own, versweep:<name>.

    The entry is torch-2.13.0-cpu's under another name; its local tag points at the same
    image. Every tag the test made is removed afterwards.
    """
    import docker
    import docker.errors

    name = f"{docker_image}-pp{uuid.uuid4().hex[:8]}"
    text = MATRIX.read_text()
    start = text.index(f'[[image]]\nname = "{docker_image}"')
    end = text.index("[[image]]", start + 1)
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(text + "\n" + text[start:end].replace(f'name = "{docker_image}"',
                                                            f'name = "{name}"'))
    client = docker.from_env(timeout=120)
    client.images.get(f"versweep:{docker_image}").tag("versweep", name)
    yield name, matrix
    for image in client.images.list():
        for tag in image.tags:
            if tag.endswith(f"/versweep:{name}") or tag == f"versweep:{name}":
                try:
                    client.images.remove(tag)
                except docker.errors.ImageNotFound:
                    pass


def prepull_cli(address: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m sweeps.cluster.prepull --address A ARGS`` from the checkout, as a user."""
    return subprocess.run([sys.executable, "-m", "sweeps.cluster.prepull", "--address", address,
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def push(name: str, registry: str, matrix: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "push", name,
                           "--registry", registry, "--matrix", str(matrix)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prepull_puts_the_image_back_on_every_node_and_says_which_advertise_it(
        cluster, registry, own_image, tmp_path):
    require_engine()
    import docker

    address, env, nodes = cluster
    name, matrix = own_image
    client = docker.from_env(timeout=120)
    push(name, registry, matrix)
    # A cluster that lost the image: neither its local tag nor the registry's is left.
    client.images.remove(f"{registry}/versweep:{name}")
    client.images.remove(f"versweep:{name}")
    assert not client.images.list(name=f"versweep:{name}")

    done = prepull_cli(address, env, name, "--registry", registry, "--matrix", str(matrix))
    assert done.returncode == 0, done.stdout + done.stderr
    node_lines = {node["id"]: [line for line in done.stdout.splitlines()
                               if f" {node['id'][:12]} " in line] for node in nodes}
    for lines in node_lines.values():
        # Each node reports the image: pulled by the first node whose task reached the
        # shared engine, already present for the other (or pulled, if both ran at once).
        reported = [line for line in lines if f": {name} " in line]
        assert len(reported) == 1, done.stdout
        assert f": {name} pulled {registry}/versweep@sha256:" in reported[0] or \
            f": {name} present {registry}/versweep@sha256:" in reported[0], reported[0]
        # Neither node was started with versweep_image:<name>: Ray cannot route trials of
        # it there until it restarts, and each node's report says so.
        assert any("does not advertise" in line and f"versweep_image:{name}" in line
                   for line in lines), lines
    # The tag was gone, so whichever node reached the engine first really pulled.
    assert f": {name} pulled {registry}/versweep@sha256:" in done.stdout, done.stdout
    assert f"prepull: all 2 node(s) hold {name}" in done.stdout

    back = client.images.get(f"versweep:{name}")
    assert any(d.startswith(f"{registry}/versweep@sha256:") for d in back.attrs["RepoDigests"])

    # A mirror built from another entry than the matrix's (its labels say Python 3.11, this
    # matrix copy 3.10) is refused on every node, and not tagged.
    text = matrix.read_text()
    start = text.index(f'name = "{name}"')
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text[:start] + text[start:].replace('python = "3.11"', 'python = "3.10"', 1))
    client.images.remove(f"versweep:{name}")
    refused = prepull_cli(address, env, name, "--registry", registry, "--matrix", str(wrong))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = [line for line in refused.stdout.splitlines()
             if f": {name} failed the mirror {registry}/versweep:{name} is not the matrix's"
             in line]
    assert len(lines) == 2, refused.stdout
    assert "python is 3.11 in the image's labels, the matrix says 3.10" in lines[0]
    assert not client.images.list(name=f"versweep:{name}")


def test_each_nodes_pull_progress_reaches_the_drivers_console_as_it_happens(
        cluster, registry, own_image):
    require_engine()
    import docker

    address, env, nodes = cluster
    name, matrix = own_image
    # Layers of random bytes no image on the engine holds: a pull really moves them (the
    # mirror has no labels, so it is tagged with a warning). Every event is worth a line.
    docker.from_env(timeout=120).images.remove(f"versweep:{name}")
    push_unlabelled_image(registry, name)

    done = prepull_cli(address, {**env, "VERSWEEP_PROGRESS_EVERY_S": "0"}, name,
                       "--registry", registry, "--matrix", str(matrix))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    progress = [line for line in lines
                if re.match(rf"node [\d.]+ [0-9a-f]{{12}}: {name}: pulling, .* \(\d+%\)", line)]
    assert progress, done.stdout  # relayed from the node's task while it pulled
    node = progress[0].split(":", 1)[0]  # "node <ip> <id>"
    reported = next(i for i, line in enumerate(lines) if line.startswith(f"{node} (")
                    and f": {name} pulled " in line)
    assert lines.index(progress[-1]) < reported  # before the node's own report
    assert any(n["id"][:12] in node for n in nodes)


def test_an_image_missing_from_the_registry_fails_on_every_node_with_the_reason(
        cluster, registry, own_image):
    require_engine()
    address, env, nodes = cluster
    name, matrix = own_image  # never pushed: the registry has no such image
    # Through the function, to see which node each task really ran on.
    script = (
        "import json, dataclasses, sys\n"
        "from sweeps.cluster.prepull import prepull\n"
        f"results = prepull({address!r}, [{name!r}, 'torch-2.13.0-cpu'], "
        f"registry={registry!r}, matrix_path={str(matrix)!r})\n"
        "print(json.dumps([dataclasses.asdict(r) for r in results], default=sorted))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])

    assert sorted(r["node_id"] for r in results) == sorted(n["id"] for n in nodes)
    for result in results:
        assert result["ran_on"] == result["node_id"]  # pinned: never ran on another node
        outcomes = {image["name"]: image for image in result["images"]}
        assert outcomes[name]["status"] == "failed"
        assert outcomes[name]["detail"].startswith(
            f"pulling {registry}/versweep:{name} failed: "), outcomes[name]
        assert "not found" in outcomes[name]["detail"] or "unknown" in \
            outcomes[name]["detail"], outcomes[name]
    # The second node advertises the test image it holds (sweeps.cluster.resources found
    # it when the node started); the head was started without image resources.
    head = next(n for n in nodes if "node:__internal_head__" in n["resources"])
    advertised = {r["node_id"]: r["advertised"] for r in results}
    assert advertised.pop(head["id"]) == []
    assert list(advertised.values()) == [["torch-2.13.0-cpu"]]

    # The command says the same, per node, and fails.
    cli = prepull_cli(address, env, name, "--registry", registry, "--matrix", str(matrix))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    failed = [line for line in cli.stdout.splitlines() if f": {name} failed pulling " in line]
    assert len(failed) == 2, cli.stdout
    assert "prepull: 2 of 2 node(s) do not hold every image" in cli.stdout


def test_without_a_registry_prepull_only_checks(cluster):
    require_engine()
    address, env, _ = cluster
    done = prepull_cli(address, env, "torch-2.1.0-cu121")  # a CUDA image no test builds
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if ": torch-2.1.0-cu121 " in line]
    assert len(lines) == 2, done.stdout
    assert all("failed versweep:torch-2.1.0-cu121 is not on this node; pre-pull it with "
               "--registry R" in line for line in lines), lines


def test_a_node_whose_engine_does_not_answer_fails_every_image_with_that_reason(monkeypatch):
    # What the task pinned to such a node runs (no Ray needed to see what it reports).
    from sweeps.cluster.prepull import prepull_here

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    answer = prepull_here(["torch-2.1.0-cu121", "torch-2.13.0-cpu"], "127.0.0.1:9")
    assert answer["hostname"] == socket.gethostname()
    assert [(name, status) for name, status, _ in answer["images"]] == [
        ("torch-2.1.0-cu121", "failed"), ("torch-2.13.0-cpu", "failed")]
    for _, _, detail in answer["images"]:
        assert detail.startswith("the Docker daemon does not answer at "
                                 "unix:///nonexistent.sock"), detail


class FakeEngine(http.server.ThreadingHTTPServer):
    """Just enough of the Docker Engine API for a registry pull, on a loopback TCP port.

    No Docker engine runs here, and a real one cannot be made to fail on cue: the real
    docker SDK talks HTTP to this, so its real errors (APIError from a 500) reach the
    code under test as they would from an engine in trouble. ``labels`` are the pulled
    mirror's (None: it has none); ``broken`` names the step that answers 500 ("inspect"
    of the mirror, or "tag").
    """

    API = "1.45"

    def __init__(self, labels: dict[str, str] | None = None, broken: str = ""):
        super().__init__(("127.0.0.1", 0), _FakeEngineHandler)
        self.labels, self.broken, self.tagged = labels, broken, set()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server_address[1]}"


class _FakeEngineHandler(http.server.BaseHTTPRequestHandler):
    server: FakeEngine

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str)
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        engine = self.server
        if path == "/version":
            return self._answer(200, {"ApiVersion": engine.API, "Version": "fake"})
        if path == f"/v{engine.API}/_ping":
            return self._answer(200, "OK")
        image = re.fullmatch(rf"/v{engine.API}/images/(.+)/json", path)
        if image and image.group(1).startswith("versweep:"):  # the node's own tag
            if image.group(1) not in engine.tagged:
                return self._answer(404, {"message": f"No such image: {image.group(1)}"})
            return self._answer(200, {"Id": "sha256:" + "1" * 64,
                                      "RepoDigests": ["127.0.0.1:5000/versweep@sha256:"
                                                      + "2" * 64]})
        if image:  # the pulled mirror
            if engine.broken == "inspect":
                return self._answer(500, {"message": "the engine could not read the image"})
            return self._answer(200, {"Id": "sha256:" + "1" * 64,
                                      "Config": {"Labels": engine.labels}})
        return self._answer(404, {"message": f"page not found: {path}"})

    def do_POST(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path, query = urllib.parse.unquote(split.path), urllib.parse.parse_qs(split.query)
        engine = self.server
        if path == f"/v{engine.API}/images/create":
            return self._answer(200, {"status": "Digest: sha256:" + "2" * 64})
        if re.fullmatch(rf"/v{engine.API}/images/(.+)/tag", path):
            if engine.broken == "tag":
                return self._answer(500, {"message": "the engine could not tag the image"})
            engine.tagged.add(f"{query['repo'][0]}:{query['tag'][0]}")
            return self._answer(201, "")
        return self._answer(404, {"message": f"page not found: {path}"})


@pytest.fixture
def fake_engine(monkeypatch):
    """Start a FakeEngine and point DOCKER_HOST at it; yields a function making one."""
    started = []

    def start(**options) -> FakeEngine:
        engine = FakeEngine(**options)
        threading.Thread(target=engine.serve_forever, daemon=True).start()
        started.append(engine)
        monkeypatch.setenv("DOCKER_HOST", engine.url)
        return engine

    yield start
    for engine in started:
        engine.shutdown()
        engine.server_close()


REGISTRY = "127.0.0.1:5000"
MIRRORED = f"{REGISTRY}/versweep:torch-2.13.0-cpu"


def prepull_and_build_py(name: str) -> tuple[tuple[str, str], str]:
    """(status, detail) of the pre-pull on this node, and `images/build.py pull`'s output."""
    from sweeps.cluster.prepull import prepull_here
    from sweeps.grid.matrix import load_matrix

    answer = prepull_here([name], REGISTRY, {name: load_matrix(MATRIX)[name]})
    [(_, status, detail)] = answer["images"]
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "pull", name,
                           "--registry", REGISTRY], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert "Traceback" not in done.stderr, done.stderr
    return (status, detail), done.stdout


def test_a_mirror_without_labels_is_pulled_with_build_pys_warning(fake_engine):
    # Not built by images/Dockerfile: nothing to compare with the matrix. Both pulls tag it
    # and say the same: a warning, and the command that checks it.
    fake_engine(labels=None)
    (status, detail), built = prepull_and_build_py("torch-2.13.0-cpu")
    warning = (f"warning: {MIRRORED} has no io.versweep.* labels (not built by "
               "images/build.py), so it is not checked against the matrix; check it with: "
               "python images/build.py verify torch-2.13.0-cpu")
    assert status == "pulled"
    assert detail == f"{REGISTRY}/versweep@sha256:{'2' * 64}; {warning}"
    assert f"torch-2.13.0-cpu: {warning}" in built.splitlines()


@pytest.mark.parametrize("broken, words", [
    ("inspect", f"pulled {MIRRORED}, but cannot read its labels: the engine could not read "
                "the image"),
    ("tag", f"pulled {MIRRORED}, but tagging it versweep:torch-2.13.0-cpu failed: the engine "
            "could not tag the image"),
])
def test_an_engine_error_during_a_pull_is_a_failed_line_in_build_pys_words(fake_engine,
                                                                            broken, words):
    fake_engine(labels={}, broken=broken)
    (status, detail), built = prepull_and_build_py("torch-2.13.0-cpu")
    assert (status, detail) == ("failed", words)
    assert f"torch-2.13.0-cpu: {words}" in built.splitlines()


@pytest.mark.parametrize("args, words", [
    (["--address", "127.0.0.1:9", "torch-2.1.0-cu121"], ["nothing answers there"]),
    (["--address", "http://127.0.0.1:8265", "torch-2.1.0-cu121"], ["dashboard", "HEAD:6379"]),
    (["--address", "127.0.0.1:9", "torch-2.1.0-cu12"], ["did you mean 'torch-2.1.0-cu121'"]),
    (["--address", "127.0.0.1:9", "--registry", "https://r.example", "torch-2.1.0-cu121"],
     ["not a registry address"]),
    (["--address", "127.0.0.1:9"], ["name the images"]),
    (["--grid", "smoke", "--address", "127.0.0.1:9"], ["names no images"]),
])
def test_user_errors_are_one_line(args, words):
    done = subprocess.run([sys.executable, "-m", "sweeps.cluster.prepull", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepull: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]

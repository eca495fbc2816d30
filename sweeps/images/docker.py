"""Docker images of the matrix on this node: their tags, the engine, their digests.

One image of images/matrix.toml, say ``torch-1.13.1-cu117``, is the local Docker image
``versweep:torch-1.13.1-cu117`` on every node that runs it: images/build.py builds or
pulls it under that tag, and the docker backend runs that tag. A registry is only how
images travel to a cluster (``R/versweep:<name>``, see images/build.py push / pull).

Nothing here imports torch; the docker SDK is imported when an engine is needed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from sweeps.errors import UserError
from sweeps.grid.matrix import label_differences
from sweeps.grid.spec import Image
from sweeps.progress import Progress, Say, format_bytes, heartbeat

# The local repository every matrix image is tagged into.
REPOSITORY = "versweep"
# A registry a user names for `push` / `pull --registry`: host[:port][/path...].
_REGISTRY = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.-]*(:\d{1,5})?(/[a-z0-9][a-z0-9._-]*)*$")
# Seconds the SDK waits for one answer of the engine (not for a stream of output).
ENGINE_TIMEOUT_S = 120


def local_tag(name: str) -> str:
    """The tag of matrix image ``name`` on a node: ``versweep:<name>``."""
    return f"{REPOSITORY}:{name}"


def check_registry(registry: str) -> str:
    """``registry`` without a trailing slash, or a UserError saying what a registry looks like."""
    value = registry.strip().rstrip("/")
    if "://" in value or not _REGISTRY.match(value):
        raise UserError(f"registry '{registry}' is not a registry address; give host[:port]"
                        "[/path], like 'registry.example.com:5000/team' (no scheme)")
    return value


def registry_tag(registry: str, name: str) -> str:
    """Where matrix image ``name`` lives in ``registry``: ``<registry>/versweep:<name>``."""
    return f"{check_registry(registry)}/{REPOSITORY}:{name}"


def engine_address() -> str:
    """The Docker engine the SDK talks to, as a user would name it."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_client(timeout: float | None = ENGINE_TIMEOUT_S) -> Any:
    """A docker SDK client whose engine answered a ping, or a UserError that says what to do.

    ``timeout=None`` is for streams (a container's output, a pull) that may be silent
    for longer than any fixed timeout.
    """
    try:
        import docker
        import docker.errors
    except ImportError:  # pragma: no cover - a dependency of versweep
        raise UserError("the docker backend needs the docker SDK; "
                        "pip install 'docker>=7'") from None
    try:
        # from_env: DOCKER_HOST, and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH for a remote engine.
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the Docker daemon does not answer at {engine_address()} ({first}); "
                        "start it (sudo systemctl start docker, or dockerd) or set DOCKER_HOST"
                        ) from None
    return client


def engine_error(exc: BaseException) -> str:
    """What the engine said, in one line: a docker SDK error's explanation, else its text."""
    text = str(getattr(exc, "explanation", None) or exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def mirror_verdict(client: Any, image: Image, reference: str) -> tuple[bool, str]:
    """Whether the mirror ``reference`` just pulled may be tagged versweep:<name>; what to say.

    The one judgement of ``images/build.py pull --registry`` and the cluster pre-pull
    (sweeps/cluster/prepull.py), so both treat a mirror alike. Its io.versweep.* labels
    (images/Dockerfile writes them) are compared with the matrix entry ``image``:

    - they agree: (True, "");
    - it has none (not built by images/build.py): (True, a warning), as images/README.md
      says: tagged, and ``verify`` is the check;
    - they contradict the entry (a mirror pushed from an older or another matrix), or
      the engine cannot show them: (False, why): not tagged.
    """
    import docker.errors

    try:
        labels = (client.api.inspect_image(reference).get("Config") or {}).get("Labels")
    except docker.errors.DockerException as exc:
        return False, f"pulled {reference}, but cannot read its labels: {engine_error(exc)}"
    differences = label_differences(image, labels)
    if differences is None:
        return True, (f"warning: {reference} has no io.versweep.* labels (not built by "
                      "images/build.py), so it is not checked against the matrix; check it "
                      f"with: python images/build.py verify {image.name}")
    if differences:
        return False, (f"the mirror {reference} is not the matrix's {image.name}: "
                       f"{'; '.join(differences)}; not tagged {local_tag(image.name)} (build "
                       "and push it again from this matrix)")
    return True, ""


def image_digest(attrs: dict[str, Any]) -> str:
    """The content address that names an image for good: its registry digest if it has one.

    A pulled or pushed image has ``RepoDigests`` (``versweep@sha256:...``); an image built
    here has only its ID (the sha256 of its config), which is just as exact on this node.
    """
    digests = attrs.get("RepoDigests") or []
    return str(digests[0]) if digests else str(attrs.get("Id", ""))


# ---------------------------------------------------------------- progress of pulls and pushes

# Per-layer states whose events repeat with byte counts (progressDetail current/total).
_COUNTED = ("Downloading", "Pushing")
# States after which all of a layer's bytes are here (pulled) or there (pushed).
_BYTES_DONE = ("Verifying Checksum", "Download complete", "Extracting", "Pull complete",
               "Pushed")
# States in which a layer is finished, moved or not.
_LAYER_DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists",
               "Mounted from")


class PullProgress:
    """One image's pull (or push) event stream from the engine, as progress lines.

    The engine's events are per layer, in the docker API's shape::

        {"status": "Downloading", "progressDetail": {"current": 310000, "total": 52000000},
         "id": "a1b2c3d4e5f6", "progress": "[=>   ] 310kB/52MB"}

    Their bytes are summed over the image's layers into one line every few seconds
    (sweeps/progress.py), ``<label>: pulling, 310 MB of 1.2 GB (26%), 41 MB/s, 2 of 7
    layers done``, counting the layers whose size the engine has told so far; and a
    heartbeat while the stream is silent. With ``layer_lines``, each layer's change of
    state is a line too (``<label>: layer a1b2c3d4e5f6: Pull complete``). The image's
    digest and the engine's error are kept for the caller.
    """

    def __init__(self, label: str, say: Say, *, doing: str = "pulling",
                 layer_lines: bool = False, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.progress = Progress(label, say, doing=doing, every=every, clock=clock)
        self.label = label
        self.layer_lines = layer_lines
        self.states: dict[str, str] = {}  # layer -> its last state
        self.sizes: dict[str, int] = {}  # layer -> bytes, once the engine said
        self.moved: dict[str, int] = {}  # layer -> bytes moved so far
        self.digest: str | None = None
        self.error: str | None = None

    @property
    def bytes_moved(self) -> int:
        return sum(self.moved.values())

    def _layers_line(self) -> str:
        finished = sum(1 for state in self.states.values() if state.startswith(_LAYER_DONE))
        extracting = any(state == "Extracting" for state in self.states.values())
        return (f"{finished} of {len(self.states)} layers done"
                + (", extracting" if extracting else ""))

    def take(self, event: dict[str, Any]) -> None:
        """One decoded event of the engine's stream."""
        if event.get("error"):
            self.error = str((event.get("errorDetail") or {}).get("message") or event["error"])
            return
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = str(aux["Digest"])
        status = str(event.get("status") or "")
        if status.startswith("Digest: "):
            self.digest = status.split(": ", 1)[1].strip()
        layer = event.get("id")
        if not status or not layer or status.startswith(("Pulling from", "The push refers")):
            if status and not status.startswith(("Digest: ", "Status: ")):
                self.progress.note(status)
            if status and self.layer_lines:
                self.progress.say(status)
            return
        layer = str(layer)
        detail = event.get("progressDetail") or {}
        if status in _COUNTED and detail.get("total"):
            self.sizes[layer] = int(detail["total"])
            self.moved[layer] = min(int(detail.get("current") or 0), self.sizes[layer])
        elif status.startswith(_BYTES_DONE) and layer in self.sizes:
            self.moved[layer] = self.sizes[layer]
        changed = self.states.get(layer) != status
        self.states[layer] = status
        if changed and self.layer_lines:
            size = (f" ({format_bytes(self.sizes[layer])})"
                    if status in _COUNTED and layer in self.sizes else "")
            self.progress.say(f"layer {layer}: {status}{size}")
        self.progress.note(f"layer {layer}: {status}")
        if self.sizes:  # a count once the engine has told a size (not for cached layers)
            self.progress.update(self.bytes_moved, sum(self.sizes.values()),
                                 detail=self._layers_line())

    def follow(self, events: Iterable[dict[str, Any]]) -> PullProgress:
        """Take every event of the stream (until an error), with a heartbeat meanwhile."""
        with heartbeat(self.progress):
            for event in events:
                self.take(event)
                if self.error:
                    break
        return self

    def summary(self) -> str:
        """'980 MB in 12 s (81.7 MB/s)', or the time alone where no bytes moved."""
        if not self.bytes_moved:
            return f"in {self.progress.elapsed():.0f} s"
        return self.progress.summary()

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
from typing import Any

from sweeps.errors import UserError
from sweeps.grid.matrix import label_differences
from sweeps.grid.spec import Image

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

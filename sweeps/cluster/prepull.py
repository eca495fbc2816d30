"""Pre-pull matrix images on every node of a running Ray cluster, and say what each node holds.

    python -m sweeps.cluster.prepull --address HEAD:6379 --grid nightly --registry R
    python -m sweeps.cluster.prepull --address HEAD:6379 torch-2.1.0-cu121      # check only

A trial runs ``versweep:<name>`` on whichever node Ray gives it, so every node that may
run a trial must hold the image before the sweep starts (the docker backend never pulls
in the middle of a timed trial). ``prepull`` runs one small Ray task on each alive node,
pinned there (NodeAffinitySchedulingStrategy, soft=False: never run elsewhere), which
talks to that node's Docker engine:

- with a registry: pulls ``<registry>/versweep:<name>`` and tags it ``versweep:<name>``
  (as ``images/build.py pull --registry`` does on one node, judging the mirror by the
  same function: refused when its io.versweep.* labels contradict the matrix, tagged
  with a warning when it has none); "present" when the tag already named the
  registry's image, "pulled" when it changed;
- without one: only checks that ``versweep:<name>`` is there ("present"), and otherwise
  reports it "failed" with what to do.

While a node pulls, its progress comes back as it happens, a line every few seconds
(``node 10.0.0.2 1a2b3c4d5e6f: torch-2.1.0-cu121: pulling, 310 MB of 1.2 GB (26%), 41
MB/s, 2 of 7 layers done``; sweeps/progress.py, through a small Ray actor the driver
reads). Each node reports per image (pulled / present / failed with the reason) and
whether it advertises the Ray resource ``versweep_image:<name>``. Ray resources are fixed when a
node's ``ray start`` runs, so an image pulled onto a running node is used by trials only
after Ray is restarted there with ``--resources "$(python -m sweeps.cluster.resources)"``;
the report says so for each such node.

The tasks ask for no CPU, so a pre-pull also runs on a busy node or a head started with
``--num-cpus 0``. Exit codes of the command: 0 every node holds every image, 1 some pull
or check failed (printed per node), 2 a user error (one line).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sweeps import validate
from sweeps.cluster.resources import image_resource
from sweeps.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USER_ERROR,
    ArgumentParser,
    UserError,
    one_line,
)
from sweeps.grid.load import MATRIX_PATH
from sweeps.grid.matrix import display_path, load_matrix, nearest
from sweeps.grid.spec import Image
from sweeps.images.docker import (
    REPOSITORY,
    PullProgress,
    check_registry,
    engine_error,
    local_tag,
    mirror_verdict,
    registry_tag,
)
from sweeps.paths import REPO_ROOT
from sweeps.progress import EVERY_S_VAR, LineRelay, Relayed, Say

PULLED, PRESENT, FAILED = "pulled", "present", "failed"


@dataclass(frozen=True)
class ImageOutcome:
    """What one node did about one matrix image."""

    name: str  # the matrix name; the node's image is versweep:<name>
    status: str  # PULLED, PRESENT or FAILED
    detail: str  # the image's digest or ID, or (FAILED) why, in one line


@dataclass(frozen=True)
class NodeResult:
    """One alive node of the cluster: where it is and what it did about each image."""

    node_id: str
    node_ip: str
    hostname: str  # as the node itself says ('' when its task never ran)
    ran_on: str  # the node ID the task itself reported ('' when it never ran): node_id
    images: tuple[ImageOutcome, ...]
    advertised: frozenset[str]  # image names whose versweep_image resource it advertises

    @property
    def failed(self) -> list[ImageOutcome]:
        return [outcome for outcome in self.images if outcome.status == FAILED]

    @property
    def not_advertised(self) -> list[str]:
        """Images this node now holds but Ray will not route trials of to it."""
        return [o.name for o in self.images
                if o.status != FAILED and o.name not in self.advertised]


# ---------------------------------------------------------------- on each node


def _first_line(text: object) -> str:
    return (str(text).strip().splitlines() or ["no message"])[0]


def _image_attrs(client: Any, tag: str) -> dict[str, Any] | None:
    import docker.errors

    try:
        return client.images.get(tag).attrs
    except docker.errors.ImageNotFound:
        return None


def _quiet(line: str) -> None:
    pass


def _pull_one(client: Any, name: str, registry: str,
              entry: Image | None = None, say: Say = _quiet) -> tuple[str, str]:
    """(status, detail) of pulling ``<registry>/versweep:<name>`` as ``versweep:<name>``.

    With the matrix ``entry``, the mirror is judged as ``images/build.py pull`` judges it
    (sweeps.images.docker.mirror_verdict): refused and not tagged when its io.versweep.* labels
    contradict the entry, tagged with a warning (in ``detail``) when it has none. An
    error of the engine at any step is a FAILED detail in build.py's words, not raised.
    The pull's progress (bytes of all layers, every few seconds) goes to ``say``.
    """
    import docker.errors

    reference = registry_tag(registry, name)
    repository, tag = reference.rsplit(":", 1)
    try:
        before = _image_attrs(client, local_tag(name))
        error = PullProgress(name, say).follow(
            client.api.pull(repository, tag=tag, stream=True, decode=True)).error
    except docker.errors.DockerException as exc:
        error = engine_error(exc)
    if error is not None:
        return FAILED, f"pulling {reference} failed: {_first_line(error)}"
    warning = ""
    if entry is not None:
        accepted, warning = mirror_verdict(client, entry, reference)
        if not accepted:
            return FAILED, warning
    try:
        client.api.tag(reference, REPOSITORY, name)
        after = _image_attrs(client, local_tag(name)) or {}
    except docker.errors.DockerException as exc:
        return FAILED, (f"pulled {reference}, but tagging it {local_tag(name)} failed: "
                        f"{engine_error(exc)}")
    digests = [d for d in after.get("RepoDigests") or [] if d.startswith(f"{repository}@")]
    detail = digests[0] if digests else str(after.get("Id", ""))
    unchanged = before is not None and before.get("Id") == after.get("Id")
    return (PRESENT if unchanged else PULLED), detail + (f"; {warning}" if warning else "")


def _check_one(client: Any, name: str) -> tuple[str, str]:
    """(status, detail) of ``versweep:<name>`` on this node, without pulling."""
    attrs = _image_attrs(client, local_tag(name))
    if attrs is None:
        return FAILED, (f"{local_tag(name)} is not on this node; pre-pull it with --registry R "
                        f"(pushed there by: python images/build.py push {name} --registry R)")
    digests = attrs.get("RepoDigests") or []
    return PRESENT, str(digests[0] if digests else attrs.get("Id", ""))


def prepull_here(image_names: Sequence[str], registry: str | None,
                 entries: dict[str, Image] | None = None,
                 say: Say = _quiet) -> dict[str, Any]:
    """On this node: pull or check each image; the answer is plain data for the driver.

    ``{"hostname": ..., "images": [(name, status, detail), ...]}``. No failure escapes
    as an exception: an engine that does not answer fails every image with its reason.
    The progress of each pull goes to ``say`` as it happens.
    """
    from sweeps.images.docker import docker_client

    answer: dict[str, Any] = {"hostname": socket.gethostname(), "images": []}
    try:
        client = docker_client(timeout=None)  # a pull may be silent for long
    except UserError as exc:
        answer["images"] = [(name, FAILED, str(exc)) for name in image_names]
        return answer
    for name in image_names:
        try:
            if registry is not None:
                status, detail = _pull_one(client, name, registry,
                                           (entries or {}).get(name), say)
            else:
                status, detail = _check_one(client, name)
        except Exception as exc:  # the engine failed otherwise: report it for this image
            status, detail = FAILED, f"{type(exc).__name__}: {_first_line(exc)}"
        answer["images"].append((name, status, detail))
    return answer


def _prepull_task(image_names: Sequence[str], registry: str | None,
                  entries: dict[str, Image] | None = None, relay: Any = None,
                  prefix: str = "") -> dict[str, Any]:
    """The Ray task pinned to one node: prepull_here, and the node it really ran on.

    Its progress lines go to the driver's ``relay`` (a LineRelay actor), ``prefix``
    first. Everything it needs (the docker SDK, this checkout) must be importable on the
    node.
    """
    import ray

    say = Relayed(relay, prefix) if relay is not None else _quiet
    answer = prepull_here(image_names, registry, entries, say)
    answer["ran_on"] = ray.get_runtime_context().get_node_id()
    if relay is not None:
        ray.get(relay.ping.remote())  # its lines are there before its answer is
    return answer


def relay_lines(relay: Any, out: TextIO) -> None:
    """Write the lines the relay holds to ``out`` (none if it cannot be reached)."""
    import ray

    try:
        lines = ray.get(relay.take.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - progress is never worth failing the command
        return
    if lines:
        out.write("".join(line + "\n" for line in lines))
        out.flush()


def start_relay() -> Any:
    """A LineRelay actor for this driver's tasks, on no CPU slot (a busy node holds it)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(LineRelay).remote()


# ---------------------------------------------------------------- across the cluster


def _check_names(image_names: Sequence[str], matrix_path: Path) -> list[str]:
    matrix = load_matrix(matrix_path)
    for name in image_names:
        if name not in matrix:
            raise UserError(f"image '{name}' is not in {display_path(matrix_path)}"
                            f"{nearest(name, list(matrix))}")
    if not image_names:
        raise UserError("name the images to pre-pull (matrix names, or --grid NAME)")
    return list(dict.fromkeys(image_names))


def join_cluster(address: str | None, *,
                 alone: str = "python images/build.py pull") -> bool:
    """Join the cluster at ``address``; True when this call started the connection.

    ``alone`` is the command that does the same on this node only, for the error that
    names no cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("name the cluster with --address HEAD:6379 (or set RAY_ADDRESS); "
                        f"the same on this node alone is: {alone}")
    # Malformed, the dashboard's web address, or nothing listening: one line, at once.
    address = validate.ray_address(address, "--address")
    validate.ray_address_reachable(address, "--address")
    try:
        # The node tasks import sweeps/ from this checkout: cluster nodes keep it at the
        # same path (see sweeps/cluster/README.md).
        # The driver's progress interval applies to its tasks' lines too.
        env_vars = {"PYTHONPATH": str(REPO_ROOT)}
        if os.environ.get(EVERY_S_VAR):
            env_vars[EVERY_S_VAR] = os.environ[EVERY_S_VAR]
        ray.init(address=address, log_to_driver=False,
                 logging_level="WARNING",  # type: ignore[arg-type]  # Ray's own default
                 runtime_env={"env_vars": env_vars})
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}"
                        ) from None
    return True


def _advertised(resources: dict[str, float], names: Sequence[str]) -> frozenset[str]:
    return frozenset(n for n in names if resources.get(image_resource(n), 0) > 0)


def prepull(address: str | None, image_names: Sequence[str], *, registry: str | None,
            matrix_path: Path = MATRIX_PATH, out: TextIO | None = None) -> list[NodeResult]:
    """Pull (``registry``) or check the images on every alive node; one NodeResult per node.

    ``address`` is the cluster's GCS address (``HEAD:6379``, ``auto``; None: $RAY_ADDRESS);
    inside a Ray driver that is already connected it is not used. With ``out``, a line
    per node is written as each node finishes, and each node's pull progress as it
    happens. Raises UserError for a bad image name,
    registry or address; a node's own failures are in its result, never raised.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    names = _check_names(image_names, Path(matrix_path))
    matrix = load_matrix(Path(matrix_path))
    entries = {name: matrix[name] for name in names}  # each node checks its pulls against
    registry = check_registry(registry) if registry is not None else None
    started_here = join_cluster(address)
    relay = None
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        # num_cpus=0: the task needs no CPU slot, so it runs on a busy node too; no
        # retries, because a task of a dead node must not run anywhere else.
        on_node = ray.remote(num_cpus=0, max_retries=0)(_prepull_task)
        relay = start_relay() if out is not None else None
        pending = {
            on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=node["NodeID"], soft=False)).remote(
                    names, registry, entries, relay,
                    f"node {node.get('NodeManagerAddress', '')} {node['NodeID'][:12]}: "): node
            for node in nodes}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if relay is not None and out is not None:
                relay_lines(relay, out)
            if not done:
                continue
            node = pending.pop(done[0])
            try:
                answer = ray.get(done[0])
            except Exception as exc:  # the node died or its task could not run there
                answer = {"hostname": "", "ran_on": "", "images": [
                    (name, FAILED, f"the task on this node did not finish: "
                                   f"{type(exc).__name__}: {_first_line(exc)}")
                    for name in names]}
            result = NodeResult(
                node_id=node["NodeID"], node_ip=node.get("NodeManagerAddress", ""),
                hostname=answer["hostname"], ran_on=answer["ran_on"],
                images=tuple(ImageOutcome(*entry) for entry in answer["images"]),
                advertised=_advertised(node.get("Resources") or {}, names))
            if out is not None:
                out.write(format_node(result))
                out.flush()
            results.append(result)
    finally:
        if relay is not None:
            ray.kill(relay)
        if started_here:
            ray.shutdown()
    return sorted(results, key=lambda r: (r.node_ip, r.node_id))


def format_node(result: NodeResult) -> str:
    """The lines a person reads about one node: an image per line, then what to do."""
    where = f"node {result.node_ip} {result.node_id[:12]}"
    if result.hostname:
        where += f" ({result.hostname})"
    lines = [f"{where}: {outcome.name} {outcome.status} {outcome.detail}"
             for outcome in result.images]
    missing = result.not_advertised
    if missing:
        lines.append(f"{where}: holds {', '.join(missing)} but does not advertise "
                     f"{', '.join(image_resource(n) for n in missing)}; trials "
                     "are routed there after Ray restarts on it with --resources "
                     "\"$(python -m sweeps.cluster.resources)\"")
    return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    top = ArgumentParser(
        prog="python -m sweeps.cluster.prepull",
        description="Pull (with --registry) or check matrix images on every alive node of a "
                    "running Ray cluster, one pinned Ray task per node.")
    top.add_argument("names", nargs="*", metavar="IMAGE", help="matrix image names")
    top.add_argument("--grid", metavar="NAME",
                     help="the images this grid runs (a name of sweeps/grids or a path)")
    top.add_argument("--address", metavar="HEAD:6379",
                     help="the cluster's GCS address, or 'auto' on a node (default: "
                          "$RAY_ADDRESS)")
    top.add_argument("--registry", metavar="R",
                     help="pull R/versweep:<name> and tag it versweep:<name>; without it, "
                          "only check that every node holds versweep:<name>")
    top.add_argument("--matrix", default=str(MATRIX_PATH), metavar="PATH",
                     help="the image matrix (default: images/matrix.toml)")
    return top


def run(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Parse ``argv``, pre-pull, print a line per node and image; return the exit code."""
    out = out if out is not None else sys.stdout
    args = parser().parse_args(argv)
    names = list(args.names)
    if args.grid is not None:
        from sweeps.grid.load import load_sweep

        sweep = load_sweep(args.grid, matrix_path=Path(args.matrix))
        if not sweep.images:
            raise UserError(f"grid '{args.grid}' runs on the {sweep.backend} backend and names "
                            "no images of the matrix")
        names += [image.name for image in sweep.images]
    return pull_on_cluster(args.address, names, registry=args.registry,
                           matrix_path=Path(args.matrix), out=out)


def pull_on_cluster(address: str | None, image_names: Sequence[str], *, registry: str | None,
                    matrix_path: Path = MATRIX_PATH, out: TextIO) -> int:
    """``prepull`` with its report (a line per node and image, then a verdict) on ``out``.

    Returns the exit code: EXIT_OK when every node holds every image, else EXIT_FAILED.
    This is what ``images/build.py pull --cluster ADDRESS`` runs.
    """
    results = prepull(address, image_names, registry=registry, matrix_path=matrix_path,
                      out=out)
    if not results:
        raise UserError("the cluster has no alive node")
    bad = [r for r in results if r.failed]
    if bad:
        out.write(f"prepull: {len(bad)} of {len(results)} node(s) do not hold every image\n")
        return EXIT_FAILED
    out.write(f"prepull: all {len(results)} node(s) hold "
              f"{', '.join(dict.fromkeys(image_names))}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except UserError as exc:
        print(f"prepull: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prepull: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

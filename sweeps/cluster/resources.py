"""Custom Ray node resources that route docker trials to nodes able to run them.

A node says what it can run through two kinds of custom resources (value 1000 each: they
only gate *where* a trial may go; CPU and GPU limit how many run at once):

    versweep_image:NAME   the node holds the local image versweep:NAME, and its GPUs (if
                          any) can run that image: its driver is new enough for the image's
                          CUDA and the image has SASS or PTX for every GPU's architecture
    versweep_arch:sm_XY   the node has a GPU of compute capability X.Y

Start every node with them:

    ray start --address HEAD:6379 --resources "$(python -m sweeps.cluster.resources)"

On a cluster whose nodes advertise images, each trial of a docker sweep asks Ray for one
unit of its image's resource, so it only lands on a node that holds the image and whose
GPUs the image has kernels for. What only some trials need of a GPU (cuDNN that knows the
GPU's generation for cuDNN trials, Triton's capability >= 7.0 for impl "compiled") is
decided per trial on the driver: when only some of the cluster's architectures can run a
trial, it also asks for one ``versweep_arch:`` resource among those (Ray has no "any of"
for resources, so the one with the most GPUs holding the image is chosen). A trial that no
architecture can run is not constrained: wherever it lands, sweeps.plan.compat records it as
``unsupported`` with the reason, before any container starts.

Nothing here imports Ray: the driver (sweeps/execute/tune.py) passes the alive nodes' resources in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sweeps.errors import ArgumentParser, UserError
from sweeps.grid.spec import Image, TrialSpec
from sweeps.paths import MATRIX_PATH
from sweeps.plan import compat

IMAGE_PREFIX = "versweep_image:"
ARCH_PREFIX = "versweep_arch:"
# How much of each resource a node has. A trial asks for 1, so this is a cap on how many
# trials of one image may share a node (never reached: CPU and GPU run out long before).
NODE_AMOUNT = 1000
# What one trial asks for of its image's (and arch's) resource.
TRIAL_AMOUNT = 1



def image_resource(name: str) -> str:
    """The node resource that says a node holds matrix image ``name``: versweep_image:NAME."""
    return IMAGE_PREFIX + name


def arch_resource(sm: str) -> str:
    """The node resource that says a node has a GPU of architecture ``sm`` ("sm_90")."""
    return ARCH_PREFIX + sm


# ---------------------------------------------------------------------------------------------
# What a node advertises

def image_gpu_reason(image: Image, gpus: Sequence[compat.Gpu]) -> str | None:
    """Why ``image`` cannot use this node's GPUs at all (driver, kernels), or None.

    A CPU-only image is never refused: it runs CPU trials on any node (a GPU trial on it
    is `unsupported` wherever it goes). A GPU of unknown capability refuses nothing.
    """
    if image.cuda is None:
        return None
    for gpu in gpus:
        reason = compat.driver_reason(image, gpu)
        if reason is not None:
            return reason
        if gpu.capability != compat.UNKNOWN_CAPABILITY and compat.kernel_source(image, gpu) is None:
            return f"{image.name} has no kernels for {gpu.describe()} ({gpu.sm})"
    return None


def node_resources(images: Iterable[Image], present: Iterable[str],
                   gpus: Sequence[compat.Gpu]) -> tuple[dict[str, int], list[str]]:
    """(resources, notes) of a node holding the images named in ``present``, with ``gpus``.

    Notes say which present images are left out, and why, for the person starting the node.
    """
    held = set(present)
    resources: dict[str, int] = {}
    notes = []
    for image in images:
        if image.name not in held:
            continue
        reason = image_gpu_reason(image, gpus)
        if reason is not None:
            notes.append(f"not advertising {image.name}: {reason}")
            continue
        resources[image_resource(image.name)] = NODE_AMOUNT
    for sm in sorted({gpu.sm for gpu in gpus if gpu.capability != compat.UNKNOWN_CAPABILITY}):
        resources[arch_resource(sm)] = NODE_AMOUNT
    return resources, notes


def local_images(names: Iterable[str]) -> tuple[set[str], str | None]:
    """(the names whose versweep:NAME is on this node's engine, None) or (empty, why not)."""
    from sweeps.images.docker import docker_client, local_tag

    try:
        client = docker_client(timeout=30)
    except UserError as exc:
        return set(), str(exc)
    tags = set()
    for image in client.images.list(name="versweep"):
        tags.update(image.tags)
    return {name for name in names if local_tag(name) in tags}, None


def this_node(matrix_path: Path = MATRIX_PATH) -> tuple[dict[str, int], list[str]]:
    """(resources, notes) of the node this runs on: its Docker images and nvidia-smi's GPUs."""
    from sweeps.grid.matrix import load_matrix

    matrix = load_matrix(matrix_path)
    present, problem = local_images(matrix)
    notes = [f"no image resources: {problem}"] if problem else []
    gpus = compat.node_gpus()
    resources, left_out = node_resources(matrix.values(), present, gpus)
    if not gpus:
        notes.append("no GPU found by nvidia-smi: no versweep_arch resource")
    return resources, notes + left_out


# ---------------------------------------------------------------------------------------------
# What a trial asks for (on the driver, from the alive nodes' resources)

def advertises_images(nodes: Iterable[Mapping[str, float]]) -> bool:
    """Whether any node advertises a versweep_image resource: then docker trials are routed.

    A private local Ray (the single-machine default) and a cluster started without these
    resources have none: every node is taken to hold every image, as on one machine.
    """
    return any(key.startswith(IMAGE_PREFIX) for node in nodes for key in node)


def _stand_in_gpu(sm: str) -> compat.Gpu:
    major, minor, _ = compat.arch_capability(sm)
    # No driver: the node's image resource already says its driver runs the image.
    return compat.Gpu(index="?", name=f"any {sm} GPU", capability=(major, minor), driver="")


def trial_routing(spec: TrialSpec, image: Image | None, *, wants_gpu: bool,
                  nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The custom resources one docker trial asks for on a cluster whose nodes advertise images.

    Always one unit of its image's resource; for a GPU trial that only some of the
    architectures of the nodes holding the image can run, one unit of one of those
    architectures too (the one with the most GPUs there).
    """
    wanted = image_resource(spec.image)
    routing: dict[str, float] = {wanted: TRIAL_AMOUNT}
    if not wants_gpu or image is None or spec.config_dict.get("device") == "cpu":
        return routing
    gpus_by_arch: dict[str, float] = {}
    for node in nodes:
        if wanted not in node or not node.get("GPU"):
            continue
        for key in node:
            if key.startswith(ARCH_PREFIX):
                sm = key[len(ARCH_PREFIX):]
                gpus_by_arch[sm] = gpus_by_arch.get(sm, 0.0) + float(node["GPU"])
    runs = [sm for sm in gpus_by_arch
            if compat.unsupported_reason(image, spec.workload, spec.config_dict,
                                         [_stand_in_gpu(sm)]) is None]
    if runs and len(runs) < len(gpus_by_arch):
        best = max(sorted(runs), key=lambda sm: gpus_by_arch[sm])
        routing[arch_resource(best)] = TRIAL_AMOUNT
    return routing


def launcher_node_types(config: Mapping) -> list[dict[str, float]]:
    """The resources of each node type a `ray up` cluster's autoscaler may still start.

    ``config`` is the cluster launcher's YAML as loaded (on the head it is
    ~/ray_bootstrap_config.yaml). The head's type and types with max_workers 0 start none.
    """
    default_max = config.get("max_workers", 0)
    types = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if (name == config.get("head_node_type") or not isinstance(node_type, Mapping)
                or not node_type.get("max_workers", default_max)):
            continue
        resources = node_type.get("resources") or {}
        types.append({str(key): float(value) for key, value in resources.items()
                      if isinstance(value, (int, float))})
    return types


def unplaceable(requests: Mapping[str, Mapping[str, float]],
                nodes: Sequence[Mapping[str, float]]) -> dict[str, Mapping[str, float]]:
    """Of ``requests`` (label -> resources), those that no single node has room for at all."""
    return {label: request for label, request in requests.items()
            if not any(all(node.get(key, 0.0) >= amount for key, amount in request.items())
                       for node in nodes)}


def missing_images_message(names: Sequence[str], grid: str) -> str:
    """The one line a user gets when no alive node advertises some of the sweep's images."""
    shown = ", ".join(names)
    return (f"no node of the Ray cluster advertises image(s) {shown}, so their trials could "
            f"never start; pull them on the nodes (python images/build.py pull --grid {grid} "
            "--registry R, on each node) and start Ray on each node with --resources "
            "\"$(python -m sweeps.cluster.resources)\"")


# ---------------------------------------------------------------------------------------------
# python -m sweeps.cluster.resources

def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None, prog: str = "python -m sweeps.cluster.resources") -> int:
    """Print this node's resources as JSON for ``ray start --resources``; notes on stderr."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = ArgumentParser(
        prog=prog,
        description="Print this node's versweep resources (the matrix images it holds and can "
                    "run, its GPU architectures) as JSON for `ray start --resources`.")
    parser.add_argument("--matrix", default=str(MATRIX_PATH), metavar="PATH",
                        help="the image matrix (default: images/matrix.toml)")
    shown = "sweeps.cluster.resources" if prog.startswith("python -m ") else prog
    try:
        args = parser.parse_args(argv)
        resources, notes = this_node(Path(args.matrix))
    except UserError as exc:
        print(f"{shown}: error: {exc}", file=err)
        return exc.exit_code
    for note in notes:
        print(f"{shown}: {note}", file=err)
    print(json.dumps(resources, sort_keys=True), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ARCH_PREFIX", "IMAGE_PREFIX", "NODE_AMOUNT", "advertises_images", "arch_resource",
    "image_gpu_reason", "image_resource", "launcher_node_types", "main",
    "missing_images_message", "node_resources", "this_node", "trial_routing", "unplaceable"]

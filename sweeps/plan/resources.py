"""What a trial asks Ray for, and how it is routed to a node: decided from the Sweep alone.

The dry run prints this (describe_*), and the sweep asks Ray for exactly this
(trial_resources, per trial, with the cluster's nodes once Ray is up).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from sweeps.cluster.resources import advertises_images, trial_routing
from sweeps.grid.spec import Sweep, TrialSpec


def trial_resources(sweep: Sweep, cluster_gpus: float | None, *, spec: TrialSpec | None = None,
                    nodes: Sequence[Mapping[str, float]] = ()) -> dict[str, float]:
    """What one trial asks Ray for: a whole GPU on CUDA (timing trials never share one).

    device "cuda" always asks for a GPU; "auto" asks for one when the cluster has GPUs
    (``cluster_gpus`` None: not known yet, as in a dry run); "cpu" never does.

    On a cluster whose ``nodes`` (the alive nodes' resources) advertise images, a docker
    trial (``spec``) also asks for its image's resource, so it lands only on a node that
    holds the image and can run it (sweeps/cluster/resources.py).
    """
    wants_gpu = sweep.device == "cuda" or (sweep.device == "auto" and bool(cluster_gpus))
    resources = {"CPU": 1.0, "GPU": 1.0} if wants_gpu else {"CPU": 1.0}
    if spec is not None and routes_by_image(sweep, nodes):
        image = next((i for i in sweep.images if i.name == spec.image), None)
        resources.update(trial_routing(spec, image, wants_gpu=wants_gpu, nodes=nodes))
    return resources


def address_given(address: str | None) -> bool:
    """Whether this driver joins an existing cluster (--address, or a Ray Job's RAY_ADDRESS)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def routes_by_image(sweep: Sweep, nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether trials ask for their image's node resource: docker, on a cluster advertising images.

    The local backend runs the host's torch on any node; a private local Ray (every
    single-machine sweep) and a cluster started without versweep resources advertise no
    images, so their trials ask for CPU/GPU only, as on one machine.
    """
    return sweep.backend == "docker" and advertises_images(nodes)


def describe_resources(sweep: Sweep) -> str:
    """The resources of one trial in words, for the dry run (no Ray started)."""
    if sweep.device == "cuda":
        return "1 GPU + 1 CPU"
    if sweep.device == "auto":
        return "1 GPU + 1 CPU if the cluster has GPUs, else 1 CPU"
    return "1 CPU"


def describe_routing(sweep: Sweep) -> str | None:
    """How trials are routed to nodes on a cluster, in words for the dry run; None: they are not."""
    if sweep.backend != "docker":
        return None
    return ("on a cluster whose nodes advertise versweep_image resources, each trial also asks "
            "for 1 versweep_image:<its image> (and a versweep_arch:<sm> when only some of the "
            "cluster's GPU architectures can run it)")

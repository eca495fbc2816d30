"""Build the venv backend's environments ahead on every node of a running Ray cluster.

    versweep envs build --grid versions-cpu --address HEAD:6379

A venv trial builds its environment on the node it lands on when it first needs it, so
the first trial of each line on each node pays the build (seconds from uv's warm cache,
a minute or more cold) inside the sweep. Building ahead, as the image pre-pull does for
the docker backend (sweeps/cluster/prepull.py), runs one small Ray task pinned to each
alive node (NodeAffinitySchedulingStrategy, soft=False; no CPU slot asked, so a busy node
runs it too), which builds there exactly what ``versweep envs build`` builds on one node,
in that node's $VERSWEEP_ENVS_DIR and within its budget. While a node builds, its
builds' own lines and heartbeats reach the console as they happen (``node 10.0.0.2
1a2b3c4d5e6f: torch-2.13.0-py3.11: still building, 45 s (last: ...)``, through a LineRelay
actor, sweeps/progress.py); each node's report comes back whole and is printed under the
node's name as the node finishes.

Exit codes: 0 every node has every environment it can build, 1 some node failed (or a
line cannot be built there), 2 a user error (one line).
"""

from __future__ import annotations

import io
import socket
from collections.abc import Sequence
from typing import Any, TextIO

from sweeps.cluster.prepull import join_cluster, relay_lines, start_relay
from sweeps.errors import EXIT_FAILED, EXIT_OK
from sweeps.grid.spec import Image
from sweeps.progress import Relayed, Say


def build_here(entries: Sequence[Image], live: Say | None = None) -> dict[str, Any]:
    """``versweep envs build`` of ``entries`` on this node; its exit code and its report
    (each build's progress to ``live`` as it happens)."""
    from sweeps.envs.build import do_build
    from sweeps.envs.store import EnvStore
    from sweeps.errors import UserError

    out = io.StringIO()
    try:
        code = do_build(EnvStore(), list(entries), out, live)
    except UserError as exc:  # no uv on this node, a budget too small: its own words
        out.write(f"error: {exc}\n")
        code = EXIT_FAILED
    return {"hostname": socket.gethostname(), "code": code, "report": out.getvalue()}


def _build_task(entries: Sequence[Image], relay: Any = None,
                prefix: str = "") -> dict[str, Any]:
    """The Ray task pinned to one node: build_here, and the node it really ran on; its
    progress lines go to the driver's ``relay``, ``prefix`` first."""
    import ray

    answer = build_here(entries, Relayed(relay, prefix) if relay is not None else None)
    answer["ran_on"] = ray.get_runtime_context().get_node_id()
    if relay is not None:
        ray.get(relay.ping.remote())  # its lines are there before its answer is
    return answer


def build_on_cluster(address: str | None, entries: Sequence[Image], out: TextIO) -> int:
    """Build ``entries`` on every alive node of the cluster at ``address``; the exit code."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started_here = join_cluster(address, alone="versweep envs build (without --address)")
    relay = None
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        on_node = ray.remote(num_cpus=0, max_retries=0)(_build_task)
        relay = start_relay()
        pending = {
            on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=node["NodeID"], soft=False)).remote(
                    list(entries), relay,
                    f"node {node.get('NodeManagerAddress', '?')} {node['NodeID'][:12]}: "): node
            for node in nodes}
        worst = EXIT_OK
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            relay_lines(relay, out)
            if not done:
                continue
            node = pending.pop(done[0])
            where = f"node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
            try:
                answer = ray.get(done[0])
            except Exception as exc:  # the node died or the task could not run there
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                answer = {"hostname": "?", "code": EXIT_FAILED,
                          "report": f"the task on this node did not finish: {first}\n"}
            out.write(f"== {where}, host {answer['hostname']}: "
                      f"{'ok' if answer['code'] == EXIT_OK else 'FAILED'}\n")
            out.write("".join(f"   {line}\n" for line in answer["report"].splitlines()))
            out.flush()
            worst = max(worst, int(answer["code"]))
        out.write(f"{len(nodes)} node(s): "
                  f"{'every environment built' if worst == EXIT_OK else 'some failed'}\n")
        return worst
    finally:
        if relay is not None:
            ray.kill(relay)
        if started_here:
            ray.shutdown()

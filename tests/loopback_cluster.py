"""A real multi-node Ray cluster on this machine: one `ray start` per node, on 127.0.0.1.

    with loopback_cluster(tmp_dir) as cluster:
        head = cluster.start_head(num_cpus=1, resources={"versweep_image:x": 1000})
        b = cluster.add_node(num_cpus=1, resources={...})
        cluster.address             # "127.0.0.1:PORT", for --address / RAY_ADDRESS
        cluster.dashboard_url       # "http://127.0.0.1:PORT", for Ray Jobs
        cluster.node_ids()          # {node: Ray node id}
        cluster.kill_node(b)        # node loss: every process of that node, SIGKILL

Each node has its own temp dir (short: Unix socket paths must stay under 108 bytes), its
own ports (two raylets on one machine must not share one), and RAY_TMPDIR set to that
dir, so every process of the node, Ray's workers and the trials' own child processes
included, can be found by it: that is how a node is "lost" (all its processes killed at
once, as when its machine goes away) and how everything is cleaned up afterwards, by
pid, never with `ray stop` (which would stop every Ray on the machine). Both nodes share
this machine's CPUs and Docker engine; what differs between them is what Ray knows: their
CPU counts and custom resources.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from needs import tool
from sweeping import free_port, own_pids_mentioning

# How long one `ray start` may take on a busy two-core machine.
START_TIMEOUT_S = 240


@dataclass(eq=False)  # a node is itself, not its fields: usable as a dict key
class Node:
    """One `ray start` of the cluster."""

    name: str
    temp_dir: str
    node_manager_port: int
    resources: dict[str, float] = field(default_factory=dict)


def cluster_env(temp_dir: str | None = None, token: str | None = None) -> dict[str, str]:
    """The environment of the cluster's processes and of drivers joining it.

    With ``token``, Ray's token authentication as a user's cluster runs it (every node
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``); without, none (Ray's default token
    lives in the starting user's home; the loopback cluster and its drivers agree on
    none). No inherited cluster address.
    """
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    env["RAY_AUTH_MODE"] = "disabled"
    if token is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = token
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if temp_dir is not None:
        env["RAY_TMPDIR"] = temp_dir
    return env


def ray_cli() -> str:
    """The `ray` command of this Python's environment (activated or not)."""
    found = tool("ray")
    if found is None:
        raise RuntimeError("no `ray` command beside this Python nor on PATH: "
                           "install the project (uv sync --extra test)")
    return found


class LoopbackCluster:
    """Start, inspect and break a Ray cluster whose nodes all run on 127.0.0.1."""

    def __init__(self, token: str | None = None):
        self.token = token  # Ray's token authentication on, with this token
        self.nodes: list[Node] = []
        self.port = free_port()
        self.dashboard_port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], num_cpus: int,
               resources: dict[str, float], env: dict[str, str] | None = None) -> Node:
        temp_dir = tempfile.mkdtemp(prefix=f"vs{name}-", dir="/tmp")
        node = Node(name=name, temp_dir=temp_dir, node_manager_port=free_port(),
                    resources=dict(resources))
        self.nodes.append(node)  # cleaned up even if its start fails half-way
        command = [ray_cli(), "start", *args, "--num-cpus", str(num_cpus),
                   "--resources", json.dumps(resources), "--node-ip-address", "127.0.0.1",
                   "--temp-dir", temp_dir, "--disable-usage-stats",
                   "--node-manager-port", str(node.node_manager_port),
                   "--object-manager-port", str(free_port()),
                   "--metrics-export-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()),
                   "--dashboard-agent-grpc-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port())]
        done = subprocess.run(command, env={**cluster_env(temp_dir, self.token), **(env or {})},
                              capture_output=True,
                              text=True, timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"ray start of node {name} failed:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
        return node

    def start_head(self, *, num_cpus: int, resources: dict[str, float],
                   dashboard: bool = True, env: dict[str, str] | None = None) -> Node:
        """The head node (GCS, and the dashboard that Ray Jobs are submitted to)."""
        args = ["--head", "--port", str(self.port),
                "--ray-client-server-port", str(free_port())]
        if dashboard:
            args += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)]
        else:
            args += ["--include-dashboard", "false"]
        return self._start("head", args, num_cpus, resources, env)

    def add_node(self, *, num_cpus: int, resources: dict[str, float],
                 name: str = "node", env: dict[str, str] | None = None) -> Node:
        """A worker node joining the head; returns once Ray lists it alive."""
        node = self._start(name, ["--address", self.address], num_cpus, resources, env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while node not in self.node_ids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {name} never joined the cluster at {self.address}")
            time.sleep(1)
        return node

    def alive_nodes(self) -> list[dict]:
        """Ray's own view of the alive nodes (ray.nodes(), from a driver in a child process)."""
        script = ("import json, ray\n"
                  f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
                  "print('NODES', json.dumps([n for n in ray.nodes() if n['Alive']]))\n")
        done = subprocess.run([sys.executable, "-c", script],
                              env=cluster_env(token=self.token),
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"cannot list the cluster's nodes:\n{done.stderr[-2000:]}")
        # Ray may print its own lines on stdout too (e.g. when a node has just died).
        answer = [line for line in done.stdout.splitlines() if line.startswith("NODES ")]
        if not answer:
            raise RuntimeError(f"no node list from Ray:\n{done.stdout[-2000:]}")
        return json.loads(answer[-1][len("NODES "):])

    def node_ids(self) -> dict[Node, str]:
        """The Ray node id of each of our nodes that is alive now."""
        by_port = {n["NodeManagerPort"]: n["NodeID"] for n in self.alive_nodes()}
        return {node: by_port[node.node_manager_port] for node in self.nodes
                if node.node_manager_port in by_port}

    def kill_node(self, node: Node) -> int:
        """Lose ``node``: SIGKILL every process of it at once (raylet, Ray workers, trials)."""
        pids = own_pids_mentioning(node.temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def shutdown(self) -> None:
        """End every process of every node (drivers started with RAY_TMPDIR set to a node's
        temp dir included), and remove the temp dirs."""
        for _ in range(3):  # a dying raylet may still spawn a worker: look again
            left = 0
            for node in self.nodes:
                left += self.kill_node(node)
            if not left:
                break
            time.sleep(1)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def loopback_cluster(token: str | None = None) -> Iterator[LoopbackCluster]:
    """A LoopbackCluster that is always taken down afterwards, whatever happened; with
    ``token``, every node requires it (Ray's token authentication)."""
    cluster = LoopbackCluster(token)
    try:
        yield cluster
    finally:
        cluster.shutdown()

"""How a sweep's wall time scales from one to two Ray nodes, and what Ray costs per trial.

    python benchmarks/cluster_scaling.py [--trials 16] [--epochs 10] [--rounds 2]
        [--out docs/bench/cluster_scaling.txt]

A real loopback cluster (tests/loopback_cluster.py: `ray start --head`, then
`ray start --address` for a second node, both on 127.0.0.1 with 1 CPU each) runs the same
grid of CPU trials (tiny ptb_lm on the local backend, one thread each) through
`python sweeps/run.py --address ...`, alternately on one node and on two nodes:

    1 node  (head only, 1 CPU)            -> 1 trial at a time
    2 nodes (head + node B, 1 CPU each)   -> 2 trials at a time
    1 node  (node B lost: killed)         -> 1 trial at a time
    2 nodes (a fresh node B joins)        -> 2 trials at a time

Reported per run: the trials' wall time (Tuner.fit, after Ray has started, as run_sweep
prints it) and the ratio 1-node / 2-node of the means (2.0 is perfect scaling: one CPU
more). Per-trial scheduling overhead: (trial slots x trials' wall time - the sum of the
workers' own run times [the versweep.wall_seconds tag: worker start to exit]) / trials,
i.e. the time a slot spends on anything but a worker (Tune starting the trial, the trial
process, MLflow bookkeeping, idle slots at the end); and the median gap on one node
between a trial's MLflow run ending and the next trial's run starting there.

Both nodes share this machine (2 cores), so two nodes also means two trials competing for
the cores with whatever else runs; the load average is printed next to each figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from loopback_cluster import LoopbackCluster, cluster_env, loopback_cluster  # noqa: E402

GRID = """
[sweep]
name = "{name}"
backend = "local"
device = "cpu"
trial_timeout_s = 600

[[group]]
workload = "ptb_lm"
axes.seed = {seeds}
config.hidden_size = 16
config.num_layers = 1
config.num_steps = 5
config.batch_size = 4
config.max_epochs = {epochs}
config.synthetic_words = 3000
config.synthetic_vocab = 50
config.num_threads = 1
"""


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_sweep(cluster: LoopbackCluster, work: Path, name: str, trials: int,
              epochs: int) -> dict:
    """One sweep on the cluster as it is now; its timings and per-trial records."""
    grid = work / f"{name}.toml"
    grid.write_text(GRID.format(name=name, seeds=list(range(1, trials + 1)), epochs=epochs))
    uri = f"sqlite:///{work}/mlflow.db"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "run.py"), "--grid",
                           str(grid), "--address", cluster.address, "--tracking-uri", uri],
                          cwd=work, env=cluster_env(), capture_output=True, text=True,
                          timeout=3600)
    command_seconds = time.monotonic() - started
    if done.returncode != 0 or f"trials: {trials} ok" not in done.stdout:
        raise SystemExit(f"sweep {name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    fit = float(re.search(r"trials ([\d.]+) s \(after Ray started\)", done.stdout).group(1))
    from sweeps.records.store import open_client

    client = open_client(uri)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags]
    return {"fit": fit, "command": command_seconds, "runs": runs}


def overheads(result: dict, slots: int, trials: int) -> tuple[float, float]:
    """(per-trial slot time not spent in a worker, median gap between trials on one node)."""
    worker = sum(float(r.data.tags["versweep.wall_seconds"]) for r in result["runs"])
    per_trial = (slots * result["fit"] - worker) / trials
    gaps = []
    by_node: dict[str, list] = {}
    for run in result["runs"]:
        by_node.setdefault(run.data.tags["versweep.ray_node_id"], []).append(run)
    for runs in by_node.values():
        runs.sort(key=lambda r: r.info.start_time)
        gaps += [(b.info.start_time - a.info.end_time) / 1000 for a, b in pairwise(runs)]
    return per_trial, statistics.median(gaps) if gaps else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="1-node/2-node pairs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "cluster_scaling.txt"))
    args = parser.parse_args()

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# benchmarks/cluster_scaling.py --trials {args.trials} --epochs {args.epochs} "
        f"--rounds {args.rounds}")
    say(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}")
    say(f"# grid: {args.trials} ptb_lm trials (hidden 16, {args.epochs} epochs of a "
        "3000-word synthetic corpus, 1 thread), local backend, 1 CPU per trial")
    fits: dict[int, list[float]] = {1: [], 2: []}
    per_trial: dict[int, list[float]] = {1: [], 2: []}
    work = Path(tempfile.mkdtemp(prefix="vsbench-"))
    with loopback_cluster() as cluster:
        started = time.monotonic()
        cluster.start_head(num_cpus=1, resources={}, dashboard=False)
        say(f"head node started in {time.monotonic() - started:.1f} s (load {load()})")
        node_b = None
        for round_number in range(1, args.rounds + 1):
            for nodes in (1, 2):
                if nodes == 2:
                    started = time.monotonic()
                    node_b = cluster.add_node(num_cpus=1, resources={},
                                              name=f"b{round_number}")
                    say(f"node B joined in {time.monotonic() - started:.1f} s")
                elif node_b is not None:
                    cluster.kill_node(node_b)  # back to one node: B is lost
                    while len(cluster.alive_nodes()) > 1:
                        time.sleep(1)
                name = f"scale_{nodes}node_{round_number}"
                before = load()
                result = run_sweep(cluster, work, name, args.trials, args.epochs)
                slot_overhead, gap = overheads(result, nodes, args.trials)
                fits[nodes].append(result["fit"])
                per_trial[nodes].append(slot_overhead)
                used = {r.data.tags["versweep.ray_node_id"] for r in result["runs"]}
                say(f"round {round_number}, {nodes} node(s): trials {result['fit']:.1f} s "
                    f"(command {result['command']:.1f} s), trials ran on {len(used)} node(s); "
                    f"per trial not in a worker {slot_overhead:.2f} s, median gap between "
                    f"trials on a node {gap:.2f} s (load {before} -> {load()})")
    one, two = statistics.mean(fits[1]), statistics.mean(fits[2])
    ratios = [a / b for a, b in zip(fits[1], fits[2], strict=True)]
    say("ratio 1-node / 2-node per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    say(f"mean trials wall time: 1 node {one:.1f} s, 2 nodes {two:.1f} s; "
        f"ratio of the means 1-node / 2-node = {one / two:.2f} (2.00 = perfect)")
    say(f"mean per-trial time not in a worker: 1 node {statistics.mean(per_trial[1]):.2f} s, "
        f"2 nodes {statistics.mean(per_trial[2]):.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

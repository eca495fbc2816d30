"""Harness overhead: what rnn_bench reports per batch against a bare loop doing the same steps.

    python benchmarks/harness_overhead.py [--rounds 40] [--batches 12] [--warmup 2]
                                          [--batch-size 16] [--seq-len 50] [--hidden-size 320]
                                          [--impl cudnn] [--threads 1] [--device cpu]

One process, one model, one optimizer, one batch (1x320-ce-short at a CPU-friendly size).
Each round runs (a) rnn_bench's own timing loop (``timed_loop``: synchronise, clock, the
train step, synchronise, clock; then the loss read-back, the finiteness check and a metric
event per chunk, outside the timed region) and (b) a bare loop that times the same
host->device copy, zero_grad, forward, loss, backward and Adam step with perf_counter and
nothing else. Rounds alternate which loop goes first, so drift (thermal, other processes)
falls on both. The figure that matters is the ratio of the medians of the per-batch
milliseconds over all rounds: rnn_bench's (the ms_per_batch_median it reports) over the
bare loop's. The median of the per-round ratios is printed beside it.

Also printed: the wall time per batch of each loop as a whole, which includes what the
harness does between batches (not part of any reported time, but part of a run's length).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Run as a script from anywhere: the repository root holds the workers package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from workers import rnn_bench  # noqa: E402
from workers.protocol import Emitter  # noqa: E402
from workers.runtime import apply_numerics, resolve_device  # noqa: E402
from workers.workloads import resolve_workload_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Many short rounds: on a shared machine the load changes by the second, and fine
    # interleaving puts the same load on both loops.
    parser.add_argument("--rounds", type=int, default=40, help="alternating rounds of (a), (b)")
    parser.add_argument("--batches", type=int, default=12, help="batches per loop per round")
    parser.add_argument("--warmup", type=int, default=2, help="leading batches dropped per loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=320)
    parser.add_argument("--impl", default="cudnn", choices=("basic", "fused", "cudnn"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: leave the other core to the machine)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def bare_loop(model, optimizer, loss_function, inputs_on_host, targets_on_host, device,
              batches):
    """The same steps as rnn_bench.train_step, timed with nothing around them."""
    seconds = []
    cuda = device.type == "cuda"
    for _ in range(batches):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        inputs = inputs_on_host.to(device)
        targets = targets_on_host.to(device)
        optimizer.zero_grad()
        loss = loss_function(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None):
    args = parse_args(argv)
    config = resolve_workload_config("rnn_bench", {
        "bench": "1x320-ce-short", "impl": args.impl, "device": args.device,
        "num_threads": args.threads, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "hidden_size": args.hidden_size, "batches": args.batches,
        "warmup_batches": args.warmup, "chunk_batches": 10, "check": False, "samples": True})
    device = resolve_device(config["device"])
    apply_numerics(config, device)

    # What rnn_bench.run builds, piece by piece, so both loops share the model and batch.
    shape = rnn_bench.benchmark_shape(config)
    shape["cell"] = config["cell"]
    batch = rnn_bench.make_toy_batch(shape)
    reference = rnn_bench.build_for("cudnn", shape)
    model = rnn_bench.loaded_copy(config["impl"], shape, reference, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    criterion = rnn_bench.Criterion(shape["loss"], batch, device)
    loss_function = torch.nn.CrossEntropyLoss()

    with open(os.devnull, "w") as devnull:
        emitter = Emitter(devnull)  # the metric events go nowhere, but they are written
        harness_medians, bare_medians, harness_walls, bare_walls = [], [], [], []
        harness_samples, bare_samples = [], []
        rows = []
        for round_index in range(args.rounds):
            order = ("harness", "bare") if round_index % 2 == 0 else ("bare", "harness")
            for which in order:
                start = time.perf_counter()
                if which == "harness":
                    seconds, _ = rnn_bench.timed_loop(model, optimizer, criterion, batch,
                                                      device, config, emitter)
                    wall = (time.perf_counter() - start) / args.batches
                    harness_samples.extend(seconds)  # warm-up already dropped by the loop
                    harness_medians.append(statistics.median(seconds) * 1000.0)
                    harness_walls.append(wall * 1000.0)
                else:
                    seconds = bare_loop(model, optimizer, loss_function, batch["inputs"],
                                        batch["targets"], device, args.batches)
                    wall = (time.perf_counter() - start) / args.batches
                    bare_samples.extend(seconds[args.warmup:])
                    bare_medians.append(statistics.median(seconds[args.warmup:]) * 1000.0)
                    bare_walls.append(wall * 1000.0)
            rows.append(f"round {round_index} ({order[0]} first): rnn_bench median "
                        f"{harness_medians[-1]:.3f} ms, bare median {bare_medians[-1]:.3f} ms, "
                        f"ratio {harness_medians[-1] / bare_medians[-1]:.4f}")

    harness = statistics.median(harness_samples) * 1000.0
    bare = statistics.median(bare_samples) * 1000.0
    ratio = harness / bare
    ratios = sorted(h / b for h, b in zip(harness_medians, bare_medians, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    harness_wall = statistics.median(harness_walls)
    bare_wall = statistics.median(bare_walls)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print("harness overhead: rnn_bench's timing loop vs a bare loop, same process, model, batch")
    print("command: python benchmarks/harness_overhead.py " + " ".join(sys.argv[1:]))
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {device}, "
          f"threads {torch.get_num_threads()}, host load average {load}")
    print(f"workload: 1x320-ce-short impl={config['impl']} cell={config['cell']}, input (T, N, C)"
          f" = ({config['seq_len']}, {config['batch_size']}, {config['input_size']}), hidden "
          f"{config['hidden_size']}, Adam lr {config['learning_rate']:g}")
    print(f"each loop: {args.batches} batches per round, the first {args.warmup} dropped; "
          f"{args.rounds} rounds, alternating order")
    for row in rows:
        print("  " + row)
    print(f"median over all timed batches ({len(harness_samples)} each): rnn_bench "
          f"{harness:.3f} ms/batch, bare loop {bare:.3f} ms/batch")
    print(f"ratio rnn_bench / bare = {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")
    print(f"per-round ratios: median {statistics.median(ratios):.4f}, quartiles "
          f"{quartiles[0]:.4f} .. {quartiles[2]:.4f}, range {ratios[0]:.4f} .. {ratios[-1]:.4f}")
    print(f"wall time per batch incl. between-batch work: rnn_bench {harness_wall:.3f} ms, "
          f"bare {bare_wall:.3f} ms ({(harness_wall / bare_wall - 1) * 100:+.2f}%)")
    print(f"within 3%: {'yes' if abs(ratio - 1) <= 0.03 else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

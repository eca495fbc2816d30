"""Training throughput of the `ptb_lm` workload, measured the way a sweep runs it.

    python benchmarks/ptb_lm_throughput.py --out docs/bench/ptb_lm_throughput_cpu

starts ``python -m workers ptb_lm`` as a child process for each preset at its own
sizes (hidden, layers, steps, batch), on a synthetic corpus with a PTB-sized
vocabulary (the softmax over ~10k words is a large part of the cost), caps each
epoch at a number of steps, and reports the words per second the worker
measured (target tokens over the wall time of the training pass, seed-facts 1.5).
The first epoch is a warm-up (allocator, thread pool) and is not reported.
Writes <out>.json (every event) and <out>.md (a table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_worker(config: dict) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "workers", "ptb_lm", "--config",
                           json.dumps(config)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}): {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--presets", default="small,medium,large,kuchaiev2017")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs; the first is warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    rows, runs = [], []
    for preset in args.presets.split(","):
        config = {
            "preset": preset, "device": args.device, "num_threads": args.threads,
            "max_epochs": args.epochs, "max_steps_per_epoch": args.steps,
            "max_eval_steps": 5, "test_num_steps": 35,
            # PTB's vocabulary is 10,000 words; this corpus gives a similar softmax.
            "synthetic_words": 400_000, "synthetic_vocab": 10_000,
        }
        events = run_worker(config)
        runs.append({"config": config, "events": events})
        env = next(e for e in events if e["event"] == "env")
        epochs = [e["metrics"] for e in events if e["event"] == "metric"][1:]  # no warm-up
        speeds = sorted(m["words_per_second"] for m in epochs)
        resolved = env["config"]
        rows.append({
            "preset": preset,
            "layout": (f"{resolved['num_layers']}x{resolved['hidden_size']}, "
                       f"{resolved['num_steps']} steps x batch {resolved['batch_size']}"),
            "vocab": next(e for e in events if e["event"] == "result")["metrics"]["vocab_size"],
            "words_per_second": statistics.median(speeds),
            "min": speeds[0], "max": speeds[-1],
            "device": env["device"], "torch": env["torch"],
        })

    machine = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "host_cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "platform": platform.platform(), "python": platform.python_version(),
        "command": "python benchmarks/ptb_lm_throughput.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "rows": rows, "runs": runs}, indent=1))
    lines = [
        "# ptb_lm training throughput",
        "",
        f"`{machine['command']}`, {machine['date_utc']} UTC, {machine['platform']}, "
        f"{machine['host_cpus']} CPUs, torch {rows[0]['torch']} on {rows[0]['device']}, "
        f"{args.threads} thread(s), {args.steps} steps per epoch, median of epochs "
        f"2..{args.epochs} (min..max). Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in machine["load_average_at_end"])
        + " (a shared machine: other jobs ran at the same time).",
        "",
        "| preset | model | vocab | words/s | min..max |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['preset']} | {row['layout']} | {row['vocab']} | "
                     f"{row['words_per_second']:.0f} | {row['min']:.0f}..{row['max']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU figures in one call: env, the four LSTM benchmarks at the seed's sizes, ptb_lm large.

    python benchmarks/gpu_figures.py --out OUT_DIR [--device cuda] [--quick]

Made for a lent GPU machine with no network and its own torch: it needs only the standard
library, torch and this checkout's workers/ (it runs ``python -m workers`` with this
interpreter, one worker process per figure, as a sweep's trial would). It writes, as it
goes, ``figures.json`` (every worker's env and result events) and ``figures.md`` (a table
per workload, next to the seed's GTX 1080 / torch 0.4 figures from
analysis/data/rnn_benchmarks_pytorch_gtx1080.csv) into OUT_DIR.

What runs (sized for under 8 minutes on an H100, not yet measured on one: the Python-loop
cells cost about a kernel launch per operation, some 0.3 ms per cell step forward and
backward, so their batch counts are cut where a batch has thousands of steps; each worker
also has a time limit, so a slow one cannot take the rest with it):

- ``env``: torch, CUDA, cuDNN, the GPU, its driver and architecture.
- ``rnn_bench``, the seed's four benchmarks at their own sizes (64 x 100 and 32 x 1000 steps,
  123 inputs, 320 hidden), every implementation. cudnn (nn.LSTM) everywhere, and basic and
  fused on 1x320-ce-short, by the seed's method: 500 batches, the first 100 dropped. basic
  and fused on 1x320-ce-long: 100 batches (20 dropped). On 4x320 (8,000 cell steps from
  Python per batch): 12 batches (2 dropped).
- ``ptb_lm large`` (2x1500, 35 x 20) for 300 training steps on the synthetic corpus: words
  per second.

``--quick`` shrinks every size, and runs the Python-loop cells on one benchmark only, so
that the script runs in under a minute on a CPU: that is how the test suite checks it
(tests/test_gpu_figures.py); its figures mean nothing.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CSV = os.path.join(ROOT, "analysis", "data", "rnn_benchmarks_pytorch_gtx1080.csv")
# Seconds one worker may run before it is stopped and recorded as timed out.
WORKER_LIMIT_S = 240


def plan(quick):
    """(label, workload, config) of every figure, in the order they run."""
    figures = [("env", "env", {})]
    full = {"batches": 500, "warmup_batches": 100}
    long_loop = {"batches": 100, "warmup_batches": 20, "chunk_batches": 20}
    deep_loop = {"batches": 12, "warmup_batches": 2, "chunk_batches": 10}
    for bench in ("1x320-ce-short", "1x320-ce-long", "4x320-ce-long", "4x320-ctc-long"):
        for impl in ("basic", "fused", "cudnn"):
            if quick and bench != "1x320-ce-short" and impl != "cudnn":
                continue  # a check of the script: every implementation once is enough
            config = {"bench": bench, "impl": impl}
            if impl == "cudnn" or bench == "1x320-ce-short":
                config.update(full)
            else:
                config.update(long_loop if bench.startswith("1x") else deep_loop)
            if quick:
                config.update({"batch_size": 4, "seq_len": 20, "batches": 6,
                               "warmup_batches": 2, "chunk_batches": 4})
                if bench == "4x320-ctc-long":
                    config["labels_per_sample"] = 5
            figures.append(("rnn_bench %s %s" % (bench, impl), "rnn_bench", config))
    lm = {"preset": "large", "max_epochs": 1, "max_steps_per_epoch": 300,
          "max_eval_steps": 20, "synthetic_words": 200000, "synthetic_vocab": 10000}
    if quick:
        lm.update({"hidden_size": 32, "num_steps": 5, "batch_size": 4,
                   "max_steps_per_epoch": 5, "max_eval_steps": 2, "synthetic_words": 3000,
                   "synthetic_vocab": 50, "test_batch_size": 1})
    figures.append(("ptb_lm large", "ptb_lm", lm))
    return figures


def run_worker(workload, config, device):
    """One worker; (its events, exit code, seconds, stderr tail)."""
    config = dict(config, device=device)
    started = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "workers", workload, "--config", json.dumps(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=WORKER_LIMIT_S)
    except subprocess.TimeoutExpired:
        return [], None, time.time() - started, "timed out after %d s" % WORKER_LIMIT_S
    events = []
    for line in proc.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    return events, proc.returncode, time.time() - started, tail


# The seed's CSV names (as analysis/reference.py maps them; this script stays stdlib-only).
SEED_BENCH = {"1x320-LSTM_cross-entropy": "1x320-ce-long",
              "4x320-BIDIR-LSTM_cross-entropy": "4x320-ce-long",
              "4x320-BIDIR-LSTM_CTC": "4x320-ctc-long"}
SEED_IMPL = {"pytorch_cudnnLSTM": "cudnn", "pytorch_LSTMCell-fused": "fused",
             "pytorch_LSTMCell-basic": "basic"}
SEED_VERSION = "0.4.0"  # the newest torch the seed measured
SEED_WARMUP = 100  # its own method: the first 100 of 500 batches dropped


def seed_figures():
    """(bench, impl) -> the seed's GTX 1080 median ms per batch on torch 0.4.0."""
    runtimes = {}
    if not os.path.exists(SEED_CSV):
        return {}
    with open(SEED_CSV) as handle:
        for row in csv.DictReader(handle):
            if row["version"] != SEED_VERSION:
                continue
            key = (SEED_BENCH.get(row["experiment"]), SEED_IMPL.get(row["bench"]))
            runtimes.setdefault(key, []).append(float(row["runtime"]) * 1000.0)
    found = {}
    for key, values in runtimes.items():
        kept = sorted(values[SEED_WARMUP:])
        if kept:
            middle = len(kept) // 2
            found[key] = (kept[middle] if len(kept) % 2
                          else (kept[middle - 1] + kept[middle]) / 2.0)
    return found


def markdown(results, env, seed):
    lines = ["# GPU figures", ""]
    if env:
        lines += ["- GPU: %s (capability %s), driver %s" % (env.get("gpu"), env.get("capability"),
                                                         env.get("driver")),
                  "- torch %s, CUDA %s, cuDNN %s, Python %s" % (env.get("torch"), env.get("cuda"),
                                                              env.get("cudnn"),
                                                              env.get("python")),
                  "- host %s, %s" % (env.get("host"), env.get("platform")), ""]
    lines += ["| figure | status | ms/batch (median) | GTX 1080, torch 0.4.0 (seed) | other "
              "| seconds |", "|---|---|---:|---:|---|---:|"]
    for row in results:
        metrics = row.get("metrics") or {}
        ms = metrics.get("ms_per_batch_median")
        other = ""
        if "test_perplexity" in metrics:
            other = "words/s %.0f, test perplexity %.1f" % (
                metrics.get("words_per_second", float("nan")), metrics["test_perplexity"])
        config = row.get("config") or {}
        reference = seed.get((config.get("bench"), config.get("impl")))
        lines.append("| %s | %s | %s | %s | %s | %.0f |" % (
            row["label"], row["status"], "%.3f" % ms if ms is not None else "-",
            "%.2f" % reference if reference is not None else "-", other, row["seconds"]))
    lines += ["", "The seed column: stefbraun/rnn_benchmarks on a GTX 1080 with torch 0.4.0 "
                  "(analysis/data/rnn_benchmarks_pytorch_gtx1080.csv), median after its 100 "
                  "warm-up batches; it measured 1x320 with 1000 steps only (ce-long)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for figures.json and figures.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(ROOT, "workers")):
        sys.stderr.write("gpu_figures: error: no workers/ next to this script; run it from "
                         "a versweep checkout\n")
        return 2
    os.makedirs(args.out, exist_ok=True)
    results, env = [], None
    seed = seed_figures()
    started = time.time()
    for label, workload, config in plan(args.quick):
        events, code, seconds, tail = run_worker(workload, config, args.device)
        final = next((e for e in reversed(events)
                      if e.get("event") in ("result", "unsupported", "error")), {})
        status = {"result": "ok", "unsupported": "unsupported"}.get(
            final.get("event"), "failed" if final.get("kind") != "diverged" else "diverged")
        if code is None:
            status = "timed out"
        if label == "env":
            env = next((e for e in events if e.get("event") == "env"), None)
        results.append({"label": label, "workload": workload, "config": config,
                        "status": status, "exit_code": code, "seconds": round(seconds, 1),
                        "metrics": final.get("metrics"), "reason": final.get("reason")
                        or final.get("message") or (tail if status != "ok" else ""),
                        "env": next((e for e in events if e.get("event") == "env"), None)})
        sys.stdout.write("%-34s %-11s %6.1f s\n" % (label, status, seconds))
        sys.stdout.flush()
        with open(os.path.join(args.out, "figures.json"), "w") as handle:
            json.dump({"machine": platform.node(), "started": started, "device": args.device,
                       "quick": args.quick, "results": results}, handle, indent=1)
        with open(os.path.join(args.out, "figures.md"), "w") as handle:
            handle.write(markdown(results, env, seed))
    sys.stdout.write("done in %.0f s: %s\n" % (time.time() - started,
                                               os.path.join(args.out, "figures.md")))
    return 0 if all(r["status"] in ("ok", "unsupported") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

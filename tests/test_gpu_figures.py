"""benchmarks/gpu_figures.py, the one call a lent GPU machine runs, checked on its CPU path.

No GPU here or in CI: --quick --device cpu runs every kind of figure at toy sizes through
the real workers, and the outputs must be what the GPU run would write.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_figures.py"


def test_the_script_needs_only_the_standard_library_and_the_workers():
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names)


def test_quick_cpu_run_writes_every_figure_as_json_and_markdown(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--device",
                           "cpu", "--quick"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    labels = [r["label"] for r in figures["results"]]
    assert labels[0] == "env" and labels[-1] == "ptb_lm large"
    assert {"rnn_bench 1x320-ce-short basic", "rnn_bench 1x320-ce-short fused",
            "rnn_bench 4x320-ctc-long cudnn"} <= set(labels)
    assert all(r["status"] == "ok" for r in figures["results"]), figures["results"]
    bench = next(r for r in figures["results"] if r["label"] == "rnn_bench 1x320-ce-long cudnn")
    assert bench["metrics"]["ms_per_batch_median"] > 0
    assert bench["env"]["torch"] and bench["env"]["device"] == "cpu"
    text = (tmp_path / "figures.md").read_text()
    # The seed's GTX 1080 / torch 0.4.0 figure beside ours: 1x320-ce-long cudnn is ~80 ms.
    row = next(line for line in text.splitlines()
               if line.startswith("| rnn_bench 1x320-ce-long cudnn |"))
    assert 70 < float(row.split("|")[4]) < 90
    assert "| ptb_lm large | ok |" in text and "words/s" in text

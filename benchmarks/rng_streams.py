"""Does the same seed give the same numbers in every torch? The CPU random streams ptb_lm uses.

    python benchmarks/rng_streams.py [--out FILE]

In each environment the venv backend built ($VERSWEEP_ENVS_DIR, default
~/.cache/versweep/envs), after ``torch.manual_seed(1234)``, as ptb_lm's initialisation
draws them: ``uniform_(-0.1, 0.1)`` on a small and on a large tensor (the weights are
large ones, where newer torch fills in vectorised chunks), and the bits that dropout's
``bernoulli_`` would use. Lines with equal fingerprints draw equal numbers from equal
seeds; where they differ, the same seed starts training from different weights, and the
same config's perplexities differ by the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
from pathlib import Path

PROBE = """
import hashlib, json, torch
torch.manual_seed(1234)
small = torch.empty(4).uniform_(-0.1, 0.1)
torch.manual_seed(1234)
large = torch.empty(200, 800).uniform_(-0.1, 0.1)
torch.manual_seed(1234)
mask = torch.empty(10000).bernoulli_(0.5)
def digest(t):  # no NumPy: the environments of torch >= 2.3 have none
    values = [round(float(x), 9) for x in t.reshape(-1).tolist()]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]
print(json.dumps({"torch": torch.__version__, "small": [round(float(x), 6) for x in small],
                  "small_sha": digest(small), "large_sha": digest(large),
                  "bernoulli_sha": digest(mask)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    envs = Path(os.environ.get("VERSWEEP_ENVS_DIR", "~/.cache/versweep/envs")).expanduser()
    lines = ["# command: python benchmarks/rng_streams.py",
             "# torch            first 4 of uniform_(-0.1, 0.1) after manual_seed(1234)"
             "              small / 200x800 / bernoulli_ fingerprints"]
    found = []
    for env in sorted(envs.glob("torch-*/bin/python")):
        done = subprocess.run([str(env), "-c", PROBE], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        if done.returncode != 0:
            lines.append(f"{env.parent.parent.name}: failed: {done.stderr.strip()[-200:]}")
            continue
        found.append(json.loads(done.stdout.strip().splitlines()[-1]))

    def version(row):
        return tuple(int(p) for p in row["torch"].split("+")[0].split(".")[:3])

    for row in sorted(found, key=version):
        lines.append(f"{row['torch']:16s} {json.dumps(row['small']):48s} "
                     f"{row['small_sha']} / {row['large_sha']} / {row['bernoulli_sha']}")
    groups: dict[str, list[str]] = {}
    for row in sorted(found, key=version):
        key = hashlib.sha256(json.dumps([row["small_sha"], row["large_sha"],
                                         row["bernoulli_sha"]]).encode()).hexdigest()[:8]
        groups.setdefault(key, []).append(row["torch"])
    lines.append("same streams: " + "; ".join(", ".join(g) for g in groups.values()))
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

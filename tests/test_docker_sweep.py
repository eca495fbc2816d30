"""A whole sweep through `python sweeps/run.py` on the docker backend, as a user runs it.

Real Ray Tune schedules the trials, each trial's worker runs in a container of the
tests' own image on the real Docker engine, and MLflow holds the records. What proves
the trials ran in the image and not on the host: the Python the worker reports is the
image's (Debian's 3.11.2), not the host's, and each run carries the image's digest.
"""

from __future__ import annotations

import sys
import textwrap

from sweeping import sweep_runs, versweep

GRID = textwrap.dedent("""
    [sweep]
    name = "docker_e2e"
    backend = "docker"
    device = "cpu"
    images = ["{image}"]
    container_memory = "2g"
    trial_timeout_s = 180
    max_concurrent = 2

    [[group]]
    workload = "env"
    axes.seed = [1, 2]

    [[group]]
    workload = "rnn_bench"
    axes.impl = ["cudnn", "fused"]
    config.bench = "1x320-ce-short"
    config.batch_size = 4
    config.seq_len = 8
    config.hidden_size = 16
    config.batches = 6
    config.warmup_batches = 1
    config.num_threads = 1

    [[group]]
    workload = "ptb_lm"
    config.hidden_size = 16
    config.num_layers = 1
    config.num_steps = 5
    config.batch_size = 4
    config.max_epochs = 2
    config.max_steps_per_epoch = 5
    config.max_eval_steps = 3
    config.synthetic_words = 3000
    config.synthetic_vocab = 50
    config.num_threads = 1
""")


def test_a_docker_sweep_runs_every_trial_in_the_image_and_records_it(docker_image, tmp_path,
                                                                     ray_tmp):
    import docker

    grid = tmp_path / "docker_e2e.toml"
    grid.write_text(GRID.format(image=docker_image))
    done = versweep(["--grid", str(grid)], cwd=tmp_path, ray_tmp=ray_tmp, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trials: 5 ok, 0 unsupported, 0 failed, 0 diverged, 0 stopped" in done.stdout

    client, parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "docker_e2e")
    assert len(parents) == 1 and parents[0].data.tags["versweep.backend"] == "docker"
    assert len(children) == 5
    image = docker.from_env().images.get(f"versweep:{docker_image}")
    host_python = ".".join(map(str, sys.version_info[:3]))
    for run in children:
        tags = run.data.tags
        assert tags["versweep.status"] == "ok", tags.get("versweep.message")
        assert tags["versweep.image"] == docker_image
        assert tags["versweep.image_id"] == image.id
        assert tags["versweep.backend"] == "docker"
        assert tags["versweep.torch"] == "2.13.0+cpu"
        # The image's Python (Debian bookworm's), not the host's interpreter.
        assert tags["versweep.python"].startswith("3.11.")
        assert tags["versweep.python"] != host_python
    benches = [r for r in children if r.data.tags["versweep.workload"] == "rnn_bench"]
    assert all(r.data.metrics["ms_per_batch_median"] > 0 for r in benches)
    lm = next(r for r in children if r.data.tags["versweep.workload"] == "ptb_lm")
    assert lm.data.metrics["test_perplexity"] > 1
    # Every container of this sweep is gone: removed when its trial ended.
    keys = {run.data.tags["versweep.trial_key"] for run in children}
    left = docker.from_env().api.containers(all=True, filters={"label": "io.versweep.trial_key"})
    assert [c["Names"] for c in left if c["Labels"]["io.versweep.trial_key"] in keys] == []

"""Isolated environments per matrix entry, for the `venv` backend and `versweep envs`.

    pythons.py   the CPython interpreters of this machine (PATH, pyenv, uv, conda)
    store.py     which environment an entry gets, building it (uv, or venv + pip), its
                 marker, locks and the disk budget
    command.py   versweep envs list | build | prune

One environment per (torch version, Python minor version), built with uv from its shared,
hard-linked cache into ``$VERSWEEP_ENVS_DIR`` (default ``~/.cache/versweep/envs``) and kept
within ``$VERSWEEP_ENVS_BUDGET``. The backend that runs trials in them is
sweeps/execute/backends/venv.py. Host side: nothing here imports torch.
"""

from sweeps.envs.store import Env, EnvLease, EnvPlan, EnvStore

__all__ = ["Env", "EnvLease", "EnvPlan", "EnvStore"]

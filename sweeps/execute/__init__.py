"""Stage 3, execution: the sweep under Ray Tune, one trial per worker, in a backend.

sweep.py runs one sweep end to end (run_sweep); tune.py maps trials onto Ray Tune
(resources, routing, search, early stopping); trial.py runs one trial's worker, with
retries and timeouts, and decides its status; summary.py is the end-of-sweep text;
backends/ is where a worker runs (local: this interpreter; docker: a container).
"""

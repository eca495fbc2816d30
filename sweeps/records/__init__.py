"""Stage 4, the records: the MLflow layout, written and read in one place.

store.py: the sweep's parent run and its trials' child runs (names, params, tags,
metrics, artifacts), the tracking URI and safe access to a SQLite store, and quote()
for every filter string; schedule.py: the scheduled runs' records, through store.py.
"""

"""The contract between the two wings: a run's folder and the files in it (no torch, no Hydra).

    files.py       atomic writes: a reader sees the old file or the new one, never half of one
    identity.py    run_id: readable, and a hash of the settings that differ from the schema's defaults
    record.py      RunRecord, the only reader and writer of run.json; the run folder's lock
    metrics.py     the tidy metrics table: its schema, its writer and its reader
    sweep_jobs.py  each sweep's job list (written by phases.sweep): a run is in every sweep that lists it
    progress.py    where a run stands (done, running, crashed, ...): what phases.sweep and phases.status show
"""

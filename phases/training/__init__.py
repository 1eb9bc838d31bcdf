"""The training wing: one run from its config to its metrics (imports config and store, never analysis).

    execute.py         a run from config to folder: checks, data, lock, resume, run.json
    checkpoint.py      what a rerun resumes from
    provenance.py      code and library versions, machine, SLURM job and submitit logs
    run_log.py         what the run says: the terminal and its folder's run.log, through logging
    loggers.py         the `logger` group's mirrors of the metrics (logger=tensorboard)
    data/              file formats, where datasets live, splits as device tensors, the theory's data model
    models.py          architectures by name, each declaring its probe points
    external_models.py arch=torchvision, timm, custom: other people's networks (library_models.py builds them)
    probe_points.py    the probe points' hooks, shapes and depths, shared by every network
    train.py           the training loop; schedule.py when to evaluate; device.py where and in which precision
    evaluation.py      an evaluation step: one forward pass per split, then every probe and output metric
    features.py        activations at the probe points of a frozen network
    probes/            plug-ins fitted on a layer's activations (reconstruction, linear, transfer)
    output_metrics.py  measurements of the classifier's output (its accuracy, sample_loss)
"""

"""Speed, measured side by side in one process (`make bench`), never as absolute targets.

    python -m phases.bench.training_step   # our training step against a bare PyTorch loop
    python -m phases.bench.probes          # our probe solvers against the published recipes
"""

"""Sweep throughput: runs per hour with k runs sharing each device (`hydra.launcher.runs_per_device=k`).

    python -m phases.bench.sweep_throughput                          # k = 1, 2, 4, 8 on this machine's GPUs
    python -m phases.bench.sweep_throughput --runs 8 --steps 256 --per-device 1 2 --cpu

The same sweep, `--runs` seeds of VGG-8 for `--steps` updates on Fashion-MNIST with the default probes,
is run through the local launcher once per k, each time into a fresh outputs folder, so nothing is
skipped as done. The table gives the wall time of each, runs per hour and the ratio to k = 1, with the
device named. A small network leaves a GPU mostly idle, so k runs at once should finish the sweep up
to k times sooner; on a CPU the k runs split the cores (the launcher gives each cores / k threads),
which is why it runs there only with --cpu: to check the script, not to measure a speed-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sweep_seconds(per_device: int, runs: int, steps: int, outputs: Path, extra: list[str]) -> float:
    """Wall seconds of the sweep at `per_device` runs per device; fails unless every run is done."""
    command = [sys.executable, "-m", "phases.run", "-m", "arch=vgg8", f"schedule.max_steps={steps}",
               f"seed={','.join(map(str, range(runs)))}", "hydra/launcher=local",
               f"hydra.launcher.runs_per_device={per_device}", f"paths.outputs={outputs}", "progress=false", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    statuses = [json.loads(path.read_text())["status"] for path in outputs.glob("runs/*/run.json")]
    if result.returncode != 0 or statuses.count("done") != runs:
        raise SystemExit(f"the sweep at runs_per_device={per_device} did not finish every run "
                         f"({statuses.count('done')} of {runs} done):\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16, help="runs in the sweep (seeds 0..runs-1)")
    parser.add_argument("--steps", type=int, default=512, help="training updates per run")
    parser.add_argument("--per-device", type=int, nargs="+", default=[1, 2, 4, 8], help="values of k to compare")
    parser.add_argument("--cpu", action="store_true", help="run on a machine without a GPU (checks the script)")
    parser.add_argument("--skip-without-gpu", action="store_true",
                        help="say so and stop (exit status 0) on a machine without a GPU, as `make bench` does")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run, e.g. dataset.train_size=10000")
    arguments = parser.parse_args()
    gpus = torch.cuda.device_count()
    if not gpus and arguments.skip_without_gpu:
        print("sweep throughput at k runs per device: not measured, no GPU here "
              "(python -m phases.bench.sweep_throughput on a GPU machine)")
        return
    if not gpus and not arguments.cpu:
        raise SystemExit("no GPU here: sweep throughput at k runs per device is a GPU measurement "
                         "(add --cpu to check the script on the CPU's cores)")
    device = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "CPU"
    print(f"{arguments.runs} runs of VGG-8, {arguments.steps} steps each, default probes, on {device}")
    print(f"{'runs/device':>11} {'wall s':>8} {'runs/hour':>10} {'vs k=1':>7}")
    baseline = None
    with tempfile.TemporaryDirectory(prefix="phases-throughput-") as folder:
        for per_device in arguments.per_device:
            seconds = sweep_seconds(per_device, arguments.runs, arguments.steps, Path(folder) / f"k{per_device}",
                                    arguments.overrides)
            rate = arguments.runs * 3600 / seconds
            baseline = baseline or rate
            print(f"{per_device:>11} {seconds:>8.1f} {rate:>10.0f} {rate / baseline:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()

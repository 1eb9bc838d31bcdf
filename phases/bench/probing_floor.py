"""Probing against its floor: what a run's evaluations must cost on this machine, and what they cost.

    python -m phases.bench.probing_floor                    # part of `make bench`
    python -m phases.bench.probing_floor --steps 512 arch.width=0.5
    python -m phases.bench.probing_floor --configuration default arch.width=0.25   # the default run only

For each probing configuration (the default run's points, and every point: probe.layers=null) it runs
the real run (`python -m phases.run`, the defaults plus the given overrides, on the CPU, into
<outputs>/bench/probing_floor/<configuration>/) and sets the probing time the run records beside its floor:

- the FLOPs of the exact solves every evaluation needs, per probed point with d features, n training
  and m test images, p pixels and c classes: the centred Gram n d^2 (syrk), the decoder's cross-product
  2 n d p, its Cholesky d^3 / 3 and solve 2 d^2 p, its test prediction 2 m d p; the classifier's
  preconditioner d^3 / 3, its L-BFGS iterations (4 n d c each: logits and gradient) and its predictions
  2 (n + m) d c; at the first evaluation, the ridge's cross-validation (eigh, about 4 d^3, and its
  projections 2 d^2 p). A point with more features than images is solved in the dual (n and d swap in
  the cubic and Gram terms). All at this machine's measured float32 matmul rate;
- one forward pass per evaluated image (the classifier's train and test images, which include every
  probe's) at the network's measured inference rate at probe.batch_size.

Prints both, their ratio, probing's share of the run's time (training plus probing), and the share it
would have at its floor: the least any probing implementation could reach at these settings on this machine.
Then where the time goes: each task's measured time (run.json's probing_time_by_task_s: the forward passes,
each probe) beside its own part of the floor.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from phases.bench.training_step import matmul_rate
from phases.config.compose import compose
from phases.config.probe_schema import ClassifierSolver, ReconstructionSolver
from phases.config.validation import RIDGE_BY_GCV
from phases.training.data import ImageSplits, load_image_splits
from phases.training.evaluation import evaluation_sets, point_features
from phases.training.features import batch_bounds
from phases.training.models import build_model
from phases.training.probes.classification import PLAIN_ITERATIONS, PRECONDITIONED_ITERATIONS
from phases.training.schedule import evaluation_steps

CONFIGURATIONS = {"default": [], "every point": ["probe.layers=null"]}
FLOORED_PROBES = {"reconstruction", "linear", "sample_loss"}  # what the floor counts; sample_loss reads the logits


@dataclass
class Floor:
    """One run's probing floor: its solves' FLOPs over all its evaluations by probe, and the images passed."""

    flops: dict[str, float]  # probe -> FLOPs
    images: int
    evaluations: int
    points: int

    def seconds_by_task(self, flops_per_second: float, images_per_second: float) -> dict[str, float]:
        """The floor of each of the run's probing tasks, as run.json's probing_time_by_task_s names them."""
        return {"activations": self.images / images_per_second,
                **{probe: flops / flops_per_second for probe, flops in self.flops.items()}}

    def seconds(self, flops_per_second: float, images_per_second: float) -> float:
        return sum(self.seconds_by_task(flops_per_second, images_per_second).values())


def point_flops(features: int, images: int, test_images: int, pixels: int, classes: int, cfg: DictConfig,
                first: bool) -> dict[str, float]:
    """FLOPs of one evaluation's exact solves at one point (module docstring), by enabled probe."""
    # The primal system is features x features; the dual (more features than images), images x images.
    size, other = (features, images) if features <= images else (images, features)
    flops = {}
    enabled = set(cfg.probe.enabled)
    gram = size * size * other  # computed once per point, shared by the decoder and the classifier
    if "reconstruction" in enabled:
        flops["reconstruction"] = (gram + 2 * images * features * pixels + size**3 / 3 + 2 * size**2 * pixels
                                   + 2 * test_images * features * pixels)
        if first and cfg.probe.reconstruction.ridge == RIDGE_BY_GCV:
            flops["reconstruction"] += 4 * size**3 + 2 * size**2 * pixels
    if "linear" in enabled:
        linear = cfg.probe.linear
        preconditioned = linear.preconditioned and features <= images
        iterations = linear.max_iterations or (PRECONDITIONED_ITERATIONS if preconditioned else PLAIN_ITERATIONS)
        flops["linear"] = iterations * 4 * images * features * classes + 2 * (images + test_images) * features * classes
        if preconditioned:
            flops["linear"] += size**3 / 3 + (0 if "reconstruction" in enabled else gram)
    return flops


def probing_floor(cfg: DictConfig, splits: ImageSplits) -> Floor:
    """The floor of a run of `cfg` on `splits` (the run's own dataset)."""
    unfloored = set(cfg.probe.enabled) - FLOORED_PROBES
    recipes = (cfg.probe.linear.solver != ClassifierSolver.lbfgs
               or cfg.probe.reconstruction.solver != ReconstructionSolver.closed_form)
    if unfloored or recipes:
        raise ValueError(f"no floor for probes {sorted(unfloored)} or the recipe solvers: the floor counts the "
                         f"default probes ({', '.join(sorted(FLOORED_PROBES))}) with their default solvers")
    model = build_model(cfg.arch, splits.info)
    image_shape = tuple(splits.train_images.shape[1:])
    features = point_features(model, image_shape, cfg.probe)
    # The images an evaluation passes and each point's probes read, as the run's Evaluator draws them.
    sets = evaluation_sets(splits, cfg.probe, cfg.seed, features)
    train, test = sets["train"], sets["test"]
    steps = evaluation_steps(cfg.schedule.max_steps)
    pixels, classes = math.prod(image_shape), splits.info.classes
    flops: dict[str, float] = {}
    for first in [True] + [False] * (len(steps) - 1):
        for point in features:
            for probe, count in point_flops(features[point], train.point_counts[point], test.point_counts[point],
                                            pixels, classes, cfg, first).items():
                flops[probe] = flops.get(probe, 0.0) + count
    return Floor(flops, len(steps) * (len(train.images) + len(test.images)), len(steps), len(features))


def inference_rate(cfg: DictConfig, splits: ImageSplits, images: int = 4096, repeats: int = 3) -> float:
    """Best-of images/s of the network's forward pass (logits only, eval mode) at probe.batch_size."""
    model = build_model(cfg.arch, splits.info).eval()
    batch = splits.train_images[:images]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for start, end in batch_bounds(len(batch), cfg.probe.batch_size):
                model(batch[start:end])
            best = min(best, time.perf_counter() - started)
    return len(batch) / best


def measured_run(overrides: list[str], outputs: Path) -> dict:
    """Run the configuration for real into `outputs`, a folder of its own (force=true: a benchmark measures,
    it never reuses), and return its run.json."""
    command = [sys.executable, "-m", "phases.run", f"paths.outputs={outputs}", "force=true", "progress=false",
               *overrides]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    # The run just written is the newest there (earlier benchmarks with other overrides may lie beside it).
    record = max((outputs / "runs").glob("*/run.json"), key=lambda path: path.stat().st_mtime)
    return json.loads(record.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="schedule.max_steps (default: the default run's)")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    folders = {name.replace(" ", "_"): name for name in CONFIGURATIONS}  # on the command line and on disk
    # One name per flag (repeatable): a list-valued flag would swallow the run overrides that follow it.
    parser.add_argument("--configuration", action="append", choices=list(folders), dest="configurations",
                        help="run this one (repeatable; default: both; every_point took 15.5 minutes at width 1 on "
                             "2 cores)")
    parser.add_argument("overrides", nargs="*", help="more run overrides, e.g. arch.width=0.5 (CPU runs only)")
    arguments = parser.parse_args()
    if any(override.split("=")[0].lstrip("+~") == "paths.outputs" for override in arguments.overrides):
        # The runs go to <--outputs>/bench/probing_floor/<configuration>/, where their records are read back.
        parser.error("paths.outputs is set by --outputs here (the runs go under <outputs>/bench/probing_floor/)")
    overrides = ["device=cpu", *arguments.overrides,
                 *([f"schedule.max_steps={arguments.steps}"] if arguments.steps else [])]
    outputs = (arguments.outputs / "bench" / "probing_floor").resolve()
    chosen = {folders[folder]: folder for folder in arguments.configurations or folders}
    records = {name: measured_run([*overrides, *CONFIGURATIONS[name]], outputs / folder)
               for name, folder in chosen.items()}
    cfg = compose(overrides)
    splits = load_image_splits(cfg.dataset, cfg.paths, cfg.seed, torch.device("cpu"))
    flops_per_second, images_per_second = matmul_rate(torch.device("cpu")) * 1e9, inference_rate(cfg, splits)
    print(f"probing floor: {cfg.arch.name} (width {cfg.arch.width:g}) on {cfg.dataset.name}, "
          f"{cfg.schedule.max_steps} steps; cpu, {torch.get_num_threads()} threads: float32 matmul "
          f"{flops_per_second / 1e9:.0f} GFLOP/s, forward pass {images_per_second:.0f} images/s")
    header = (f"{'configuration':<13} {'points':>6} {'evals':>5} {'solve GFLOP':>11} {'images':>8} {'floor s':>8} "
              f"{'probing s':>9} {'probing/floor':>13} {'share of run':>12} {'at floor':>8}")
    print(header)
    print("-" * len(header))
    floors = {name: probing_floor(compose([*overrides, *CONFIGURATIONS[name]]), splits) for name in chosen}
    for name, floor in floors.items():
        probing, training = records[name]["probing_time_s"], records[name]["training_time_s"]
        floor_seconds = floor.seconds(flops_per_second, images_per_second)
        print(f"{name:<13} {floor.points:>6} {floor.evaluations:>5} {sum(floor.flops.values()) / 1e9:>11.0f} "
              f"{floor.images:>8} {floor_seconds:>8.2f} {probing:>9.2f} {probing / floor_seconds:>12.2f}x "
              f"{probing / (probing + training):>12.1%} {floor_seconds / (floor_seconds + training):>8.1%}",
              flush=True)
    print("\nwhere probing's time goes: measured s / floor s (ratio), from run.json's probing_time_by_task_s")
    for name, floor in floors.items():
        measured = dict(records[name]["probing_time_by_task_s"])
        parts = []
        for task, floor_part in floor.seconds_by_task(flops_per_second, images_per_second).items():
            seconds = measured.pop(task)
            parts.append(f"{task} {seconds:.2f} / {floor_part:.2f} ({seconds / floor_part:.1f}x)")
        # What the floor does not count: output metrics reading the logits, writing the metrics file.
        parts.append(f"other {sum(measured.values()):.2f} / 0")
        print(f"{name:<13} " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()

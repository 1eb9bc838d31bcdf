"""Probe-solver benchmark: each default solver against the published recipe, on the same activations.

    python -m phases.bench.probes                  # part of `make bench`
    python -m phases.bench.probes --steps 512 --train-images 10000

Trains VGG-8 on the real Fashion-MNIST for `--steps` updates (cached under
<outputs>/bench/), extracts the penultimate layer (block5, 512-d) and an early layer (block3,
2048-d) once, then fits on those same cached activations: the closed-form ridge decoder against
the Adam recipe (20 epochs), and the L-BFGS classifier against the SGD recipe (20 epochs), once with
the point's Gram already computed by the decoder (a run fitting both, the default) and once alone.
Prints seconds, test scores and the speed ratio side by side. `--device auto` (the default) runs on CUDA
when present: activations and solvers on the GPU, as in a run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from phases.bench.training_step import synchronise
from phases.config.compose import compose
from phases.config.probe_schema import BatchNormMode
from phases.training.data import dataset_info, load_image_splits, seeded_subset
from phases.training.device import autocast, place_model, resolve_device
from phases.training.features import collect_activations, frozen
from phases.training.models import build_model
from phases.training.optimizers import build_optimizer
from phases.training.probes import (
    ClosedFormReconstruction,
    GradientReconstruction,
    LBFGSClassifier,
    ProbeData,
    SGDClassifier,
)
from phases.training.train import TrainingStep

LAYERS = ("block5", "block3")


def trained_vgg8(cfg, splits, steps: int, cache: Path, device: torch.device):
    """VGG-8 after `steps` updates of the run's optimizer; cached, so reruns time only the probes."""
    torch.manual_seed(cfg.seed)
    model = place_model(build_model(cfg.arch, splits.info), device)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True, map_location=device))
        return model
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    step = TrainingStep(model, optimizer, device)
    order = torch.randperm(len(splits.train_labels), generator=torch.Generator().manual_seed(cfg.seed))
    for index in range(steps):
        batch = order[(index * 128) % (len(order) - 128):][:128]
        step(splits.train_images[batch], splits.train_labels[batch])
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model


def timed(probe, train: ProbeData, test: ProbeData) -> tuple[float, dict]:
    synchronise(train.features.device)
    started = time.perf_counter()
    measurements = probe.fit_and_score(train, test)  # reading each score back waits for the GPU
    synchronise(train.features.device)
    return time.perf_counter() - started, {(m.metric, m.split): m.value for m in measurements}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=512, help="training updates of the benchmarked checkpoint")
    parser.add_argument("--train-images", type=int, default=10000, help="probe training images")
    parser.add_argument("--test-images", type=int, default=10000, help="probe test images")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    arguments = parser.parse_args()
    device = resolve_device(arguments.device)
    cfg = compose()
    splits = load_image_splits(cfg.dataset, cfg.paths, cfg.seed, device)
    model = trained_vgg8(cfg, splits, arguments.steps,
                         arguments.outputs / "bench" / f"vgg8-fashion_mnist-{arguments.steps}steps.pt", device)
    train_rows = seeded_subset(len(splits.train_labels), arguments.train_images, 0, "bench.train")
    test_rows = seeded_subset(len(splits.test_labels), arguments.test_images, 0, "bench.test")
    shapes = model.probe_shapes((dataset_info(cfg.dataset).channels, 32, 32))
    data = {}
    train_rows, test_rows = train_rows.to(device), test_rows.to(device)
    calibration = splits.train_images[train_rows[:2000]]
    with autocast(device), frozen(model, BatchNormMode.precise_eval, calibration):
        for split, images, labels in (("train", splits.train_images[train_rows], splits.train_labels[train_rows]),
                                      ("test", splits.test_images[test_rows], splits.test_labels[test_rows])):
            features = collect_activations(model, images, list(LAYERS), batch_size=256)
            data[split] = {layer: ProbeData(features[layer], images, labels, shapes[layer], point=layer)
                           for layer in LAYERS}

    recipe = cfg.probe
    sgd = SGDClassifier(recipe.linear.epochs, recipe.linear.lr, recipe.linear.momentum, recipe.linear.lr_drop_epoch,
                        recipe.linear.batch_size, cfg.seed)
    lbfgs = LBFGSClassifier(recipe.linear.l2, recipe.linear.max_iterations, recipe.linear.preconditioned)
    # (row, metric, default solver, published recipe, whether the point's Gram is already there): the decoder
    # computes it; the classifier finds it computed in a run that fits both (the default), and "linear alone"
    # is the classifier in a run without the decoder.
    rows = [
        ("reconstruction", "mse", ClosedFormReconstruction(recipe.reconstruction.ridge),
         GradientReconstruction(recipe.reconstruction.epochs, recipe.reconstruction.lr,
                                recipe.reconstruction.weight_decay, recipe.reconstruction.batch_size, cfg.seed), False),
        ("linear", "accuracy", lbfgs, sgd, True),
        ("linear alone", "accuracy", lbfgs, sgd, False),
    ]
    print(f"VGG-8 on Fashion-MNIST after {arguments.steps} steps, on {device}; {arguments.train_images} train / "
          f"{arguments.test_images} test images; the same cached activations for both solvers")
    header = (f"{'probe':<15} {'layer':<7} {'default s':>9} {'recipe s':>9} {'speed-up':>8} "
              f"{'default test':>12} {'recipe test':>11}  metric")
    print(header)
    print("-" * len(header))
    for row_name, metric, default, published, gram_shared in rows:
        for layer in LAYERS:
            train, test = data["train"][layer], data["test"][layer]
            # Warm-up: the recipe's first of many batches has it too; it is also where the decoder's ridge is
            # chosen by cross-validation, once per point and run, so the timed fit is one evaluation's cost.
            default.fit_and_score(replace(train, _centred_gram=None), test)
            timed_train = replace(train, _centred_gram=train.centred_gram() if gram_shared else None)
            default_seconds, default_scores = timed(default, timed_train, test)
            recipe_seconds, recipe_scores = timed(published, train, test)
            print(f"{row_name:<15} {layer:<7} {default_seconds:>9.2f} {recipe_seconds:>9.2f} "
                  f"{recipe_seconds / default_seconds:>7.1f}x {default_scores[(metric, 'test')]:>12.4f} "
                  f"{recipe_scores[(metric, 'test')]:>11.4f}  {metric}", flush=True)


if __name__ == "__main__":
    main()

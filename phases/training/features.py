"""Activations of a frozen network at its probe points: one forward pass, every point at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from phases.config.probe_schema import BatchNormMode
from phases.training.models import ProbedNetwork


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches; a last batch of one image joins the one before, since
    BatchNorm with batch statistics cannot normalise a single image's 1x1 feature map."""
    bounds = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


# PreciseBN averages the statistics of its batches, so their size is part of what it measures (the variance of
# the batch means is left out): fixed here, not probe.batch_size, a speed-only setting outside the run ids.
CALIBRATION_BATCH_SIZE = 256


@contextmanager
def frozen(model: nn.Module, bn_mode: BatchNormMode, calibration_images: torch.Tensor,
           batch_size: int) -> Iterator[None]:
    """The model ready for extraction in `bn_mode`; its training state is restored afterwards.

    Why `precise_eval` exists: running statistics start at mean 0 / variance 1 and follow the
    weights with momentum 0.1, so during the first hundred or so updates plain eval mode measures
    a network whose normalisation lags its weights, a network that is never trained. Recomputing
    the statistics on `calibration_images` (PreciseBN) measures the network as it is now.
    """
    bn_mode = BatchNormMode(bn_mode)  # a caller's unknown mode fails here, naming it
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved = [(norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone(), norm.momentum)
             for norm in norms]
    was_training = model.training
    model.eval()
    try:
        if bn_mode == BatchNormMode.precise_eval and norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the calibration batches
                norm.train()
            with torch.no_grad():
                for start, end in batch_bounds(len(calibration_images), batch_size):
                    model(calibration_images[start:end])
            for norm in norms:
                norm.eval()
        elif bn_mode == BatchNormMode.train:
            for norm in norms:
                norm.momentum = 0.0  # normalise with batch statistics but leave running statistics as they are
                norm.train()
        yield
    finally:
        for norm, (mean, variance, batches, momentum) in zip(norms, saved, strict=True):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(variance)
            norm.num_batches_tracked.copy_(batches)
            norm.momentum = momentum
        model.train(was_training)


def pooled_shape(shape: tuple[int, ...], spatial_pool: int | None) -> tuple[int, ...]:
    """A point's activation shape after `probe.spatial_pool` (feature maps only)."""
    if spatial_pool is not None and len(shape) == 3 and shape[-1] > spatial_pool:
        return (shape[0], spatial_pool, spatial_pool)
    return shape


@torch.no_grad()
def collect_activations(
    model: ProbedNetwork, images: torch.Tensor, points: list[str], batch_size: int, spatial_pool: int | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Flattened float32 activations, (images, features) per point, in `images`' order; with `counts`,
    a point keeps only its first counts[point] images' (wide points are probed on more images than
    narrow ones: memory goes only to the rows a probe reads).

    The caller sets the model's mode (see `frozen`). Forward hooks capture every requested point
    during the same pass, so adding a probe point adds no forward pass. Each point's result is
    allocated once and filled batch by batch, so memory peaks at the result's size, not twice it.
    With `spatial_pool`, feature maps larger than spatial_pool x spatial_pool are average-pooled
    to that size first (only when a probe configuration asks for it: it changes what is measured).
    """
    outputs: dict[str, torch.Tensor] = {}
    start = 0
    handles = []
    for point in points:
        def keep(output, point=point):
            if spatial_pool is not None and output.ndim == 4 and output.shape[-1] > spatial_pool:
                output = F.adaptive_avg_pool2d(output, spatial_pool)
            kept = len(images) if counts is None else counts[point]
            output = output.detach().flatten(1)[: max(kept - start, 0)]
            if point not in outputs:
                outputs[point] = torch.empty(kept, output.shape[1], device=output.device)
            outputs[point][start : start + len(output)] = output

        handles.append(model.hook_point(point, keep))  # the output of the point's module, or its input
    try:
        for start, end in batch_bounds(len(images), batch_size):
            model(images[start:end])
    finally:
        for handle in handles:
            handle.remove()
    return outputs

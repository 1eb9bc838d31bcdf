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


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """PreciseBN in one batch: `images` go through the network once with BatchNorm in training mode, so
    each BatchNorm's statistics become exactly those of its input on these images, and the network's
    outputs on them (what forward hooks see during the call) are already normalised with them. The
    variance is then kept biased, as the batch normalised itself, so that later images in eval mode are
    normalised exactly as these were. One batch, not several averaged: the average of batch statistics
    leaves out the variance of the batch means, so it would depend on the batch size."""
    norms = batch_norms(model)
    values_per_channel: dict[nn.Module, int] = {}

    def count(norm: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        values_per_channel[norm] = inputs[0].numel() // inputs[0].shape[1]

    hooks = [norm.register_forward_pre_hook(count) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
        norm.train()
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        for norm in norms:
            norm.eval()
    for norm, values in values_per_channel.items():
        norm.running_var.mul_((values - 1) / values)  # BatchNorm keeps the unbiased variance


@contextmanager
def frozen(model: nn.Module, bn_mode: BatchNormMode, calibration_images: torch.Tensor | None = None) -> Iterator[None]:
    """The model ready for extraction in `bn_mode`; its training state is restored afterwards.

    Why `precise_eval` exists: running statistics start at mean 0 / variance 1 and follow the
    weights with momentum 0.1, so during the first hundred or so updates plain eval mode measures
    a network whose normalisation lags its weights, a network that is never trained. Recomputing
    the statistics on `calibration_images` (PreciseBN, recompute_statistics) measures the network as it
    is now. Without them, the caller's first collect_activations(..., calibration=k) recomputes them on
    its first k images while extracting them, so no image goes through the network twice.
    """
    bn_mode = BatchNormMode(bn_mode)  # a caller's unknown mode fails here, naming it
    norms = batch_norms(model)
    saved = [(norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone(), norm.momentum)
             for norm in norms]
    was_training = model.training
    model.eval()
    try:
        if bn_mode == BatchNormMode.precise_eval and calibration_images is not None:
            recompute_statistics(model, calibration_images)
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
    counts: dict[str, int] | None = None, calibration: int = 0,
) -> dict[str, torch.Tensor]:
    """Flattened float32 activations, (images, features) per point, in `images`' order; with `counts`,
    a point keeps only its first counts[point] images' (wide points are probed on more images than
    narrow ones: memory goes only to the rows a probe reads). With `calibration` (precise_eval under
    `frozen` without calibration images), the first `calibration` images go through first, as one
    batch that sets BatchNorm's statistics (recompute_statistics).

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
        if calibration:
            recompute_statistics(model, images[:calibration])
        for start, end in batch_bounds(len(images) - calibration, batch_size):
            start, end = start + calibration, end + calibration
            model(images[start:end])
    finally:
        for handle in handles:
            handle.remove()
    return outputs

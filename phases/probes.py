"""Probes: fresh models fitted on frozen activations at each evaluation step.

Every probe has one interface, `fit_and_score(train, test) -> [Measurement]`, and is built from its
config node in `probe.<name>` through the `PROBES` registry; a probe set to null is not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


@dataclass
class ProbeData:
    features: torch.Tensor  # (images, features) activations of one probe point
    images: torch.Tensor  # (images, pixels) the normalised input images, flattened: the decoder's target
    labels: torch.Tensor  # (images,) class labels


@dataclass(frozen=True)
class Measurement:
    metric: str
    split: str
    value: float


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact affine ridge regression: (weight (features, outputs), bias (outputs,)).

    Minimises ||X W + b - Y||^2 + lambda ||W||^2 with lambda = ridge * trace(Xc^T Xc) / features
    (Xc: centred X), so `ridge` is free of the features' scale. Solved in the primal
    (features x features system) or, when features outnumber images, in the dual (images x images):
    W = Xc^T (Xc Xc^T + lambda I)^-1 Yc, the same solution at a fraction of the cost.
    """
    feature_mean, target_mean = features.mean(0), targets.mean(0)
    centred, centred_targets = features - feature_mean, targets - target_mean
    images, dimension = centred.shape
    primal = dimension <= images
    cholesky = None
    # The Gram matrix is the costly product: float32 first, solved in float64. A tiny relative ridge
    # can leave float32 rounding errors larger than the penalty (Cholesky fails): redo it in float64.
    for dtype in (torch.float32, torch.float64):
        matrix = centred.to(dtype)
        gram = (matrix.T @ matrix if primal else matrix @ matrix.T).double()
        penalty = ridge * gram.diagonal().sum() / dimension + torch.finfo(torch.float64).tiny
        gram.diagonal().add_(penalty)
        cholesky, failed = torch.linalg.cholesky_ex(gram)
        if not failed:
            break
    else:
        raise torch.linalg.LinAlgError(f"ridge system not positive definite even in float64 (ridge={ridge})")
    if primal:
        weight = torch.cholesky_solve((centred.T @ centred_targets).double(), cholesky).float()
    else:
        # The (features x images) @ (images x outputs) product is as large as the Gram: keep it in float32.
        weight = centred.T @ torch.cholesky_solve(centred_targets.double(), cholesky).float()
    return weight, target_mean - feature_mean @ weight


class ClosedFormReconstruction:
    """The linear (affine) decoder from a layer's activations back to the normalised input image.

    Reports per-pixel MSE on the probe's train and test images: the paper's reconstruction loss.
    """

    def __init__(self, ridge: float):
        self.ridge = ridge

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        weight, bias = fit_ridge(train.features, train.images, self.ridge)
        return [
            Measurement("mse", split, F.mse_loss(data.features @ weight + bias, data.images).item())
            for split, data in (("train", train), ("test", test))
        ]


class LinearClassifier:
    """Multinomial logistic regression on standardised activations, fitted full-batch with L-BFGS.

    Activations are cached, so a full-batch second-order-like method converges in tens of
    iterations where the paper's SGD recipe needs 20 epochs of mini-batches.
    """

    def __init__(self, l2: float, max_iterations: int):
        self.l2 = l2
        self.max_iterations = max_iterations

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        mean = train.features.mean(0)
        # Constant features (dead units) keep scale 1 instead of dividing by zero.
        scale = train.features.std(0).clamp_min(1e-6)
        classes = int(max(train.labels.max(), test.labels.max()).item()) + 1
        standardised = (train.features - mean) / scale
        weight = torch.zeros(standardised.shape[1], classes, device=standardised.device, requires_grad=True)
        bias = torch.zeros(classes, device=standardised.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=self.max_iterations, line_search_fn="strong_wolfe",
            tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20,
        )

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(standardised @ weight + bias, train.labels) + self.l2 * weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        measurements = []
        with torch.no_grad():
            for split, data in (("train", train), ("test", test)):
                logits = ((data.features - mean) / scale) @ weight + bias
                accuracy = (logits.argmax(1) == data.labels).float().mean().item()
                measurements.append(Measurement("accuracy", split, accuracy))
                measurements.append(Measurement("cross_entropy", split, F.cross_entropy(logits, data.labels).item()))
        return measurements


ProbeBuilder = Callable[[DictConfig], object]
PROBES: dict[str, ProbeBuilder] = {
    "reconstruction": lambda cfg: ClosedFormReconstruction(ridge=cfg.ridge),
    "linear": lambda cfg: LinearClassifier(l2=cfg.l2, max_iterations=cfg.max_iterations),
}


def build_probes(probe_cfg: DictConfig) -> dict[str, object]:
    """The enabled probes, by name, in registry order."""
    return {name: build(probe_cfg[name]) for name, build in PROBES.items() if probe_cfg.get(name) is not None}

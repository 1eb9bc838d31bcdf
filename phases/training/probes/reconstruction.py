"""Reconstruction probes: decoders from a layer's activations back to the normalised input image.

The reconstruction loss (RL) is the decoder's per-pixel MSE on test images. `closed_form` is the
exact optimum of the linear decoder; `GradientReconstruction` is the published recipe for the same
decoder (Adam, 20 epochs); `ConvolutionalReconstruction` is the script's alternative decoder.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from phases.config.validation import RIDGE_BY_GCV
from phases.training.probes.base import (
    OWN_DATASET,
    Measurement,
    ProbeData,
    minibatch_indices,
    seeded,
    symmetric_gram,
)


class RidgeSolution(NamedTuple):
    weight: torch.Tensor  # (features, outputs)
    bias: torch.Tensor  # (outputs,)
    train_squared_error: float  # sum over the training images and outputs, without predicting them


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, ridge: float,
              centred_gram: torch.Tensor | None = None) -> RidgeSolution:
    """Exact affine ridge regression.

    Minimises ||X W + b - Y||^2 + lambda ||W||^2 with lambda = ridge * trace(Xc^T Xc) / features
    (Xc: centred X), so `ridge` is free of the features' scale. Solved in the primal
    (features x features system) or, when features outnumber images, in the dual (images x images):
    W = Xc^T (Xc Xc^T + lambda I)^-1 Yc, the same solution at a fraction of the cost. `centred_gram`:
    Xc^T Xc when the caller has it (ProbeData.centred_gram, shared with the other probes of the point).
    """
    feature_mean, target_mean = features.mean(0), targets.mean(0)
    images, dimension = features.shape
    primal = dimension <= images
    centred_targets = targets - target_mean
    cholesky = None
    # The Gram matrix is the costly product: float32 first, solved in float64. A tiny relative ridge
    # can leave float32 rounding errors larger than the penalty (Cholesky fails): redo it in float64.
    for dtype in (torch.float32, torch.float64):
        shared = primal and dtype == torch.float32 and centred_gram is not None
        # The centred copy of the activations only when this solve computes its own Gram.
        matrix = None if shared else (features - feature_mean).to(dtype)
        gram = centred_gram.clone() if shared else symmetric_gram(matrix if primal else matrix.T).double()
        penalty = ridge * gram.diagonal().sum() / dimension + torch.finfo(torch.float64).tiny
        gram.diagonal().add_(penalty)
        cholesky, failed = torch.linalg.cholesky_ex(gram)
        if not failed:
            break
    else:
        raise torch.linalg.LinAlgError(f"ridge system not positive definite even in float64 (ridge={ridge})")
    # The training error comes from quantities the solve already has, instead of a prediction pass as
    # costly as the Gram: primal, ||Yc||^2 - <W, Xc^T Yc> - lambda ||W||^2 (as (G + lambda I) W = Xc^T Yc);
    # dual, the residual Yc - Xc W equals lambda A with A = (K + lambda I)^-1 Yc.
    if primal:
        # Xc^T Yc = X^T Yc, since the columns of Yc sum to zero: no centred copy of the activations, whose
        # Gram the caller usually has already.
        cross = (features.T @ centred_targets).double()
        weight = torch.cholesky_solve(cross, cholesky)
        flat_targets = centred_targets.reshape(-1)
        target_energy = torch.dot(flat_targets, flat_targets).double()
        squared_error = target_energy - (weight * cross).sum() - penalty * weight.square().sum()
        weight = weight.float()
    else:
        dual_weight = torch.cholesky_solve(centred_targets.double(), cholesky)
        squared_error = penalty**2 * dual_weight.square().sum()
        # The (features x images) @ (images x outputs) product is as large as the Gram: keep it in float32.
        weight = matrix.float().T @ dual_weight.float()
    return RidgeSolution(weight, target_mean - feature_mean @ weight, max(squared_error.item(), 0.0))


# Relative penalties generalised cross-validation chooses among: 1e-8 to 1e2, eight per decade. Each costs
# a few vector operations once the Gram's eigendecomposition is known.
RIDGE_GRID = torch.logspace(-8, 2, 81, dtype=torch.float64)


def gcv_ridge(features: torch.Tensor, targets: torch.Tensor, grid: torch.Tensor = RIDGE_GRID,
              centred_gram: torch.Tensor | None = None) -> float:
    """The relative ridge (as fit_ridge takes it) of the grid with the least generalised cross-validation
    error, RSS(lambda) / (n - 1 - df(lambda))^2: leave-one-out's error with every image's leverage
    replaced by the mean leverage, so one eigendecomposition of the Gram serves every penalty.

    With Xc = U diag(s) V^T and e = s^2 (the eigenvalues of the smaller Gram), the fit shrinks the
    targets' component along u_i by e_i / (e_i + lambda): RSS = ||Yc||^2 - sum_i (1 - (lambda /
    (e_i + lambda))^2) ||u_i^T Yc||^2 and df = sum_i e_i / (e_i + lambda); the intercept takes one more
    degree of freedom.
    """
    # The products in float32 (as fit_ridge's), the eigendecomposition in float64: only a grid point is chosen.
    centred_targets = targets - targets.mean(0)
    images, dimension = features.shape
    if dimension <= images:
        eigenvalues, vectors = torch.linalg.eigh(symmetric_gram(features - features.mean(0)).double()
                                                 if centred_gram is None else centred_gram)
        # u_i^T Yc = v_i^T Xc^T Yc / s_i, and Xc^T Yc = X^T Yc (as in fit_ridge)
        cross = (features.T @ centred_targets).double()
        projections = (vectors.T @ cross).square().sum(1) / eigenvalues.clamp_min(1e-300)
    else:
        eigenvalues, vectors = torch.linalg.eigh(symmetric_gram((features - features.mean(0)).T).double())
        projections = (vectors.T @ centred_targets.double()).square().sum(1)
    centred_targets = centred_targets.double()
    # Directions the Gram does not span (centring removes one; rounding leaves tiny negative ones) fit nothing.
    spanned = eigenvalues > eigenvalues.max() * 1e-12
    eigenvalues, projections = eigenvalues[spanned], projections[spanned]
    penalties = grid.to(eigenvalues) * eigenvalues.sum() / dimension  # as fit_ridge scales `ridge`
    shrinkage = eigenvalues[None, :] / (eigenvalues[None, :] + penalties[:, None])  # (grid, directions)
    residual = centred_targets.square().sum() - ((1 - (1 - shrinkage).square()) * projections).sum(1)
    freedom = images - 1 - shrinkage.sum(1)
    scores = residual.clamp_min(0) / freedom.square()
    scores[freedom <= 0] = torch.inf  # an interpolating fit: no error left to cross-validate
    return grid[scores.argmin()].item()


def fit_size(train: ProbeData) -> list[Measurement]:
    """The decoder's feature count and training images: with n images and d features a least-squares
    test error is inflated by about d / (n - d), so a reader must see both beside the RL they bend."""
    return [Measurement("features", "train", float(train.features.shape[1])),
            Measurement("images", "train", float(train.features.shape[0]))]


def _mse_measurements(predict, train: ProbeData, test: ProbeData) -> list[Measurement]:
    with torch.no_grad():
        return [Measurement("mse", split, F.mse_loss(predict(data.features), data.images.flatten(1)).item())
                for split, data in (("train", train), ("test", test))] + fit_size(train)


class ClosedFormReconstruction:
    """The linear (affine) decoder at its exact ridge optimum: no epochs, no learning rate to tune.

    `ridge` is a relative penalty, or "gcv": each probe point's penalty is chosen by gcv_ridge on its
    first fit (the run's first evaluation) and kept for the rest of the run; `restore` gives a resumed
    run the penalties its first attempt chose, from the `ridge` rows it recorded.
    """

    name, dataset = "reconstruction", OWN_DATASET

    def __init__(self, ridge: float | str):
        self.ridge = ridge
        self.chosen: dict[str, float] = {}  # probe point -> the relative ridge gcv chose for it

    def penalty(self, train: ProbeData, targets: torch.Tensor) -> float:
        if self.ridge != RIDGE_BY_GCV:
            return float(self.ridge)
        if train.point not in self.chosen:
            self.chosen[train.point] = gcv_ridge(train.features, targets, centred_gram=self.shared_gram(train))
        return self.chosen[train.point]

    @staticmethod
    def shared_gram(train: ProbeData) -> torch.Tensor | None:
        """The point's Gram when the decoder is solved in the primal (features <= images), else None."""
        return train.centred_gram() if train.features.shape[1] <= train.features.shape[0] else None

    def restore(self, rows: list[dict]) -> None:
        """The penalties of the earliest step each point recorded: those a resumed run goes on with."""
        for row in sorted(rows, key=lambda row: row["step"], reverse=True):
            if row["probe"] == self.name and row["metric"] == "ridge" and self.ridge == RIDGE_BY_GCV:
                self.chosen[row["layer"]] = row["value"]

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        targets = train.images.flatten(1)
        ridge = self.penalty(train, targets)
        solution = fit_ridge(train.features, targets, ridge, self.shared_gram(train))
        with torch.no_grad():
            test_mse = F.mse_loss(test.features @ solution.weight + solution.bias, test.images.flatten(1)).item()
        return [Measurement("mse", "train", solution.train_squared_error / targets.numel()),
                Measurement("mse", "test", test_mse), Measurement("ridge", "train", ridge), *fit_size(train)]


def train_decoder(decoder: nn.Module, train: ProbeData, epochs: int, lr: float, weight_decay: float,
                  batch_size: int, generator: torch.Generator) -> None:
    """The published recipe: Adam on the per-pixel MSE, shuffled minibatches, a fixed number of epochs."""
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    targets = train.images.flatten(1)
    with torch.enable_grad():
        for _ in range(epochs):
            for batch in minibatch_indices(len(targets), batch_size, generator, targets.device):
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(decoder(train.features[batch]), targets[batch]).backward()
                optimizer.step()


class GradientReconstruction:
    """The published script's linear decoder: nn.Linear trained with Adam (lr 3e-4, weight decay 1e-5,
    batch 128, 20 epochs) on the raw activations. `name`: `reconstruction` when it is that probe's solver,
    `reconstruction_recipe` when it is fitted beside the closed-form decoder."""

    dataset = OWN_DATASET

    def __init__(self, epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int,
                 name: str = "reconstruction"):
        self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed = epochs, lr, weight_decay, batch_size, seed
        self.name = name

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        with seeded(self.seed):
            decoder = nn.Linear(train.features.shape[1], train.images[0].numel()).to(train.features.device)
        train_decoder(decoder, train, self.epochs, self.lr, self.weight_decay, self.batch_size,
                      torch.Generator().manual_seed(self.seed))
        return _mse_measurements(decoder, train, test)


def convolutional_decoder(feature_shape: tuple[int, ...], image_shape: tuple[int, ...], width: int = 256) -> nn.Module:
    """The script's convolutional decoder: a Linear (flat features) or 1x1 Conv (feature maps) to
    `width` channels, then ConvTranspose 4x4 stride 2 + ReLU blocks doubling the size up to the image's,
    then a 3x3 conv to the image's channels. Output flattened, like the linear decoders'."""
    channels, size = image_shape[0], image_shape[-1]
    layers: list[nn.Module] = []
    if len(feature_shape) == 1:
        side = 4
        layers += [nn.Linear(feature_shape[0], width * side * side), nn.ReLU(), nn.Unflatten(1, (width, side, side))]
    else:
        side = feature_shape[-1]
        layers += [nn.Unflatten(1, feature_shape), nn.Conv2d(feature_shape[0], width, kernel_size=1), nn.ReLU()]
    current = width
    while side < size:
        following = max(current // 2, 16)
        layers += [nn.ConvTranspose2d(current, following, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        current, side = following, side * 2
    if side != size:
        raise ValueError(f"feature maps of side {feature_shape[-1]} do not double up to the image side {size}")
    layers += [nn.Conv2d(current, channels, kernel_size=3, padding=1), nn.Flatten()]
    return nn.Sequential(*layers)


class ConvolutionalReconstruction:
    """The script's convolutional decoder trained with the same Adam recipe; reports `mse` like the
    linear decoders, under its own probe name."""

    name, dataset = "reconstruction_conv", OWN_DATASET

    def __init__(self, epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int):
        self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed = epochs, lr, weight_decay, batch_size, seed

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        side = train.feature_shape[-1]
        if len(train.feature_shape) == 3 and not math.log2(train.images.shape[-1] / side).is_integer():
            raise ValueError(f"reconstruction_conv needs feature maps whose side doubles to the image's, "
                             f"got {train.feature_shape}")
        with seeded(self.seed):
            decoder = convolutional_decoder(train.feature_shape, tuple(train.images.shape[1:]))
        decoder = decoder.to(train.features.device)
        train_decoder(decoder, train, self.epochs, self.lr, self.weight_decay, self.batch_size,
                      torch.Generator().manual_seed(self.seed))
        decoder.eval()
        return _mse_measurements(lambda features: torch.cat([decoder(chunk) for chunk in features.split(1000)]),
                                 train, test)

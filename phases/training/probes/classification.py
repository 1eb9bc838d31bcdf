"""Linear classifier probes: how linearly decodable the labels are from a layer's activations.

`LBFGSClassifier` (default) fits multinomial logistic regression full-batch on the cached
activations; `SGDClassifier` is the published recipe (SGD lr 0.01, momentum 0.9, 20 epochs,
lr x0.1 after epoch 10, batch 128). Both report accuracy and cross-entropy on train and test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from phases.config.probe_schema import ClassifierSolver
from phases.training.probes.base import (
    OWN_DATASET,
    Measurement,
    ProbeData,
    minibatch_indices,
    seeded,
    symmetric_gram,
)


def classification_measurements(logits: torch.Tensor, labels: torch.Tensor, split: str) -> list[Measurement]:
    return [Measurement("accuracy", split, (logits.argmax(1) == labels).float().mean().item()),
            Measurement("cross_entropy", split, F.cross_entropy(logits, labels).item())]


# L-BFGS iterations when probe.linear.max_iterations is null. Either ends within 2% of the optimum's
# penalised loss and 0.5 points of its test accuracy on VGG-8's block3 and block5 (tests/test_probes.py:
# against a 500-iteration solve), the preconditioned one in half the passes over the activations.
PLAIN_ITERATIONS, PRECONDITIONED_ITERATIONS = 30, 15

# Below 16 columns, products with the activations (n x d by d x classes, and their gradient's transpose)
# take a CPU BLAS's slower skinny-matrix path (MKL on this project's CPU: a product and its backward on
# 8192 x 2048 activations took 66 ms at 10 columns and 20 ms at 16 in isolation). Each L-BFGS function
# evaluation is one such pair, so the classifier multiplies by its weight padded with zero columns: 16% less
# time per fit at VGG-8's block1 and block2 (width 0.25), measured side by side; no change on narrow points.
MINIMUM_PRODUCT_COLUMNS = 16


class LBFGSClassifier:
    """Multinomial logistic regression on standardised activations, fitted full-batch with L-BFGS.

    Activations are cached, so a full-batch quasi-Newton method converges in tens of iterations and
    has no learning rate or epoch count to tune. Each iteration is a full pass over the activations,
    so iterations are what it costs. With `preconditioned` (and no more features than images) it solves
    for V = R W instead of W, where R^T R = C / classes + 2 l2 I and C is the features' correlation
    matrix: about the loss's Hessian, so the problem L-BFGS sees is close to isotropic and it gets
    within a small fraction of the optimum's loss in far fewer iterations. C comes from the point's
    centred Gram, which the ridge decoder computes anyway (ProbeData.centred_gram).
    """

    name, dataset = "linear", OWN_DATASET

    def __init__(self, l2: float, max_iterations: int | None = None, preconditioned: bool = False):
        self.l2, self.max_iterations, self.preconditioned = l2, max_iterations, preconditioned

    def fit(self, features: torch.Tensor, labels: torch.Tensor, classes: int,
            centred_gram: Callable[[], torch.Tensor] | None = None):
        """A function from activations to logits; `centred_gram` gives the features' Xc^T Xc (computed here
        when not given). With more features than images the correlation has no inverse: solved plainly."""
        mean = features.mean(0)
        images, dimension = features.shape
        gram = None
        if self.preconditioned and dimension <= images:
            gram = symmetric_gram(features - mean).double() if centred_gram is None else centred_gram()
        # The variances are the Gram's diagonal when there is one (torch.std is 17x slower than a mean here).
        variance = gram.diagonal() if gram is not None else torch.linalg.vector_norm(features - mean, dim=0).square()
        scale = (variance / (images - 1)).sqrt().float().clamp_min(1e-6)  # dead units: their zeros stay zeros
        root = None if gram is None else self.preconditioner_root(gram, scale, images, classes)
        iterations = self.max_iterations or (PLAIN_ITERATIONS if root is None else PRECONDITIONED_ITERATIONS)
        variable = torch.zeros(dimension, classes, device=features.device, requires_grad=True)
        bias = torch.zeros(classes, device=features.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([variable, bias], lr=1.0, max_iter=iterations,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9,
                                      history_size=20)

        def weight_of(value: torch.Tensor) -> torch.Tensor:
            """The weight on the standardised features."""
            return value if root is None else torch.linalg.solve_triangular(root, value, upper=True)

        def logits(new_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            # ((x - mean) / scale) @ weight + bias without a standardised copy of the activations: one
            # pass over them per product instead of writing and reading another matrix as large.
            scaled = weight / scale[:, None]
            # Zero columns up to MINIMUM_PRODUCT_COLUMNS: the same logits, from a faster matmul kernel.
            padded = F.pad(scaled, (0, max(MINIMUM_PRODUCT_COLUMNS - classes, 0)))
            return (new_features @ padded)[:, :classes] + (bias - mean @ scaled)

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            weight = weight_of(variable)
            loss = F.cross_entropy(logits(features, weight, bias), labels) + self.l2 * weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        weight, bias = weight_of(variable.detach()), bias.detach()
        return lambda new_features: logits(new_features, weight, bias)

    def preconditioner_root(self, centred_gram: torch.Tensor, scale: torch.Tensor, images: int,
                            classes: int) -> torch.Tensor | None:
        """Upper-triangular R with R^T R = C / classes + 2 l2 I: C the standardised features' second
        moments, 1 / classes the softmax's curvature at the start (uniform probabilities). In float32:
        with the penalty on its diagonal the system is well conditioned. None when it has no Cholesky
        factor (l2 = 0 and collinear features): then the solve is plain."""
        inverse = 1 / (scale.double() * math.sqrt((images - 1) * classes))
        system = centred_gram * torch.outer(inverse, inverse)
        system.diagonal().add_(2 * self.l2)
        root, failed = torch.linalg.cholesky_ex(system.float(), upper=True)
        return None if failed else root

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        return fit_and_score_classifier(self, train, test)


class SGDClassifier:
    """The published recipe: nn.Linear on the raw activations, SGD with momentum, a step decay. `name`:
    `linear` when it is that probe's solver, `linear_recipe` when it is fitted beside L-BFGS."""

    dataset = OWN_DATASET

    def __init__(self, epochs: int, lr: float, momentum: float, lr_drop_epoch: int, batch_size: int, seed: int,
                 name: str = "linear"):
        self.epochs, self.lr, self.momentum = epochs, lr, momentum
        self.lr_drop_epoch, self.batch_size, self.seed = lr_drop_epoch, batch_size, seed
        self.name = name

    def fit(self, features: torch.Tensor, labels: torch.Tensor, classes: int):
        with seeded(self.seed):
            classifier = nn.Linear(features.shape[1], classes).to(features.device)
        optimizer = torch.optim.SGD(classifier.parameters(), lr=self.lr, momentum=self.momentum)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[self.lr_drop_epoch], gamma=0.1)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():
            for _ in range(self.epochs):
                for batch in minibatch_indices(len(labels), self.batch_size, generator, features.device):
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(classifier(features[batch]), labels[batch]).backward()
                    optimizer.step()
                schedule.step()
        classifier.requires_grad_(False)
        return classifier

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        return fit_and_score_classifier(self, train, test)


def class_count(train: ProbeData, test: ProbeData) -> int:
    """Classes of a probe's task: the largest label seen in either split, plus one."""
    return int(max(train.labels.max(), test.labels.max()).item()) + 1


def fit_and_score_classifier(classifier, train: ProbeData, test: ProbeData) -> list[Measurement]:
    classes = class_count(train, test)
    if isinstance(classifier, LBFGSClassifier):
        predict = classifier.fit(train.features, train.labels, classes, train.centred_gram)
    else:
        predict = classifier.fit(train.features, train.labels, classes)
    with torch.no_grad():
        return [measurement for split, data in (("train", train), ("test", test))
                for measurement in classification_measurements(predict(data.features), data.labels, split)]


def build_classifier(cfg: DictConfig, seed: int) -> LBFGSClassifier | SGDClassifier:
    if cfg.solver == ClassifierSolver.lbfgs:
        return LBFGSClassifier(l2=cfg.l2, max_iterations=cfg.max_iterations, preconditioned=cfg.preconditioned)
    return sgd_recipe(cfg, seed)


def sgd_recipe(cfg: DictConfig, seed: int, name: str = "linear") -> SGDClassifier:
    """The SGD recipe from a node holding its settings: probe.linear (solver sgd) or probe.linear_recipe."""
    return SGDClassifier(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, lr_drop_epoch=cfg.lr_drop_epoch,
                         batch_size=cfg.batch_size, seed=seed, name=name)

"""Linear classifier probes: how linearly decodable the labels are from a layer's activations.

`LBFGSClassifier` (default) fits multinomial logistic regression full-batch on the cached
activations; `SGDClassifier` is the published recipe (SGD lr 0.01, momentum 0.9, 20 epochs,
lr x0.1 after epoch 10, batch 128). Both report accuracy and cross-entropy on train and test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from phases.config.probe_schema import ClassifierSolver
from phases.training.probes.base import OWN_DATASET, Measurement, ProbeData, minibatch_indices, seeded


def classification_measurements(logits: torch.Tensor, labels: torch.Tensor, split: str) -> list[Measurement]:
    return [Measurement("accuracy", split, (logits.argmax(1) == labels).float().mean().item()),
            Measurement("cross_entropy", split, F.cross_entropy(logits, labels).item())]


class LBFGSClassifier:
    """Multinomial logistic regression on standardised activations, fitted full-batch with L-BFGS.

    Activations are cached, so a full-batch quasi-Newton method converges in tens of iterations and
    has no learning rate or epoch count to tune. Each iteration is a full pass over the activations:
    on a CPU that is not faster than the SGD recipe's 20 cache-friendly epochs (see make bench).
    """

    name, dataset = "linear", OWN_DATASET

    def __init__(self, l2: float, max_iterations: int):
        self.l2, self.max_iterations = l2, max_iterations

    def fit(self, features: torch.Tensor, labels: torch.Tensor, classes: int):
        """A function from activations to logits."""
        mean = features.mean(0)
        scale = features.std(0).clamp_min(1e-6)  # constant features (dead units) keep scale 1
        standardised = (features - mean) / scale
        weight = torch.zeros(standardised.shape[1], classes, device=features.device, requires_grad=True)
        bias = torch.zeros(classes, device=features.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iterations,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9,
                                      history_size=20)

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(standardised @ weight + bias, labels) + self.l2 * weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        weight, bias = weight.detach(), bias.detach()
        return lambda new_features: ((new_features - mean) / scale) @ weight + bias

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
    predict = classifier.fit(train.features, train.labels, classes)
    with torch.no_grad():
        return [measurement for split, data in (("train", train), ("test", test))
                for measurement in classification_measurements(predict(data.features), data.labels, split)]


def build_classifier(cfg: DictConfig, seed: int) -> LBFGSClassifier | SGDClassifier:
    if cfg.solver == ClassifierSolver.lbfgs:
        return LBFGSClassifier(l2=cfg.l2, max_iterations=cfg.max_iterations)
    return sgd_recipe(cfg, seed)


def sgd_recipe(cfg: DictConfig, seed: int, name: str = "linear") -> SGDClassifier:
    """The SGD recipe from a node holding its settings: probe.linear (solver sgd) or probe.linear_recipe."""
    return SGDClassifier(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, lr_drop_epoch=cfg.lr_drop_epoch,
                         batch_size=cfg.batch_size, seed=seed, name=name)

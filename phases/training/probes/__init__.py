"""Probes: fresh models fitted on frozen activations at each evaluation step, as plug-ins.

Every probe has one interface, `fit_and_score(train, test) -> [Measurement]`, and is built from its
config node `probe.<name>` through the `PROBES` registry; `probe.enabled` lists those that run. A probe's
`scope` says what it reads: "layer" probes run on each probed layer's activations, "output" probes
once on the classifier's logits. A probe whose `data_source` is "other_dataset" is fed the frozen
network's activations on the paired dataset (transfer by dataset switch).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from phases.data import DatasetInfo
from phases.probes.base import Measurement, Probe, ProbeData
from phases.probes.classification import LBFGSClassifier, SGDClassifier, build_classifier
from phases.probes.reconstruction import (
    ClosedFormReconstruction,
    ConvolutionalReconstruction,
    GradientReconstruction,
    fit_ridge,
)
from phases.probes.sample_loss import SampleLoss
from phases.probes.transfer import TransferProbe

__all__ = ["PROBES", "Measurement", "Probe", "ProbeData", "build_probes", "fit_ridge", "ClosedFormReconstruction",
           "GradientReconstruction", "ConvolutionalReconstruction", "LBFGSClassifier", "SGDClassifier",
           "SampleLoss", "TransferProbe"]


def _reconstruction(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    if cfg.solver == "closed_form":
        return [ClosedFormReconstruction(ridge=cfg.ridge)]
    return [GradientReconstruction(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   batch_size=cfg.batch_size, seed=seed)]


def _reconstruction_conv(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [ConvolutionalReconstruction(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        batch_size=cfg.batch_size, seed=seed)]


def _linear(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [build_classifier(cfg, seed)]


def _transfer(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    dominance = "colour_dominance" if info.channels == 3 else "quadrant_dominance"
    tasks = dict.fromkeys(dominance if task == "dominance" else task for task in cfg.tasks)
    return [TransferProbe(task, build_classifier(cfg.classifier, seed), cfg.validation_fraction, seed)
            for task in tasks]


def _sample_loss(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [SampleLoss(quantiles=list(cfg.quantiles), worst_fractions=list(cfg.worst_fractions))]


# probe.<name> -> the probes it configures (transfer: one per task).
PROBES: dict[str, Callable[[DictConfig, int, DatasetInfo], list[Probe]]] = {
    "reconstruction": _reconstruction,
    "reconstruction_conv": _reconstruction_conv,
    "linear": _linear,
    "transfer": _transfer,
    "sample_loss": _sample_loss,
}


def build_probes(probe_cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    """The enabled probes, in registry order."""
    return [probe for name, build in PROBES.items() if name in probe_cfg.enabled
            for probe in build(probe_cfg[name], seed, info)]

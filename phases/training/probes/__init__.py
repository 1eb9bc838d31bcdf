"""Probes: fresh models fitted on a layer's frozen activations at each evaluation step, as plug-ins.

Every probe has one interface, `fit_and_score(train, test) -> [Measurement]`, and is built from its
config node `probe.<name>` through the `PROBES` registry, which is the list of probe names
`probe.enabled` accepts (besides the output metrics of phases.training.output_metrics). A probe
reads the activations of each probed layer on the images of its `dataset`: OWN_DATASET (the run's
dataset), TRANSFER_PARTNER (the paired dataset of a dataset-switch transfer) or COMPLEMENT_CLASSES (the
run's dataset on the classes outside dataset.class_subset, for a class-switch transfer).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from phases.config.probe_schema import ReconstructionSolver, TransferTask
from phases.config.validation import ConfigError
from phases.training.data import DatasetInfo, complement_classes, transfer_partner
from phases.training.probes.base import (
    COMPLEMENT_CLASSES,
    OWN_DATASET,
    TRANSFER_PARTNER,
    Measurement,
    Probe,
    ProbeData,
)
from phases.training.probes.classification import LBFGSClassifier, SGDClassifier, build_classifier, sgd_recipe
from phases.training.probes.reconstruction import (
    ClosedFormReconstruction,
    ConvolutionalReconstruction,
    GradientReconstruction,
    fit_ridge,
)
from phases.training.probes.representation import CKA, ClassCollapse, EffectiveRank
from phases.training.probes.transfer import TransferProbe

__all__ = ["PROBES", "OWN_DATASET", "TRANSFER_PARTNER", "COMPLEMENT_CLASSES", "Measurement", "Probe", "ProbeData",
           "build_probes", "probe_datasets", "fit_ridge", "ClosedFormReconstruction", "GradientReconstruction",
           "ConvolutionalReconstruction", "LBFGSClassifier", "SGDClassifier", "TransferProbe", "EffectiveRank", "CKA",
           "ClassCollapse"]


def _reconstruction(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    if cfg.solver == ReconstructionSolver.closed_form:
        return [ClosedFormReconstruction(ridge=cfg.ridge)]
    return [_adam_recipe(cfg, seed)]


def _adam_recipe(cfg: DictConfig, seed: int, name: str = "reconstruction") -> GradientReconstruction:
    """The Adam recipe from a node holding its settings: probe.reconstruction (solver sgd) or
    probe.reconstruction_recipe."""
    return GradientReconstruction(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  batch_size=cfg.batch_size, seed=seed, name=name)


def _reconstruction_recipe(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [_adam_recipe(cfg, seed, name="reconstruction_recipe")]


def _reconstruction_conv(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [ConvolutionalReconstruction(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        batch_size=cfg.batch_size, seed=seed)]


def _linear(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [build_classifier(cfg, seed)]


def _linear_recipe(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [sgd_recipe(cfg, seed, name="linear_recipe")]


def _transfer(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    dominance = TransferTask.colour_dominance if info.channels == 3 else TransferTask.quadrant_dominance
    if TransferTask.colour_dominance in cfg.tasks and info.channels != 3:
        raise ConfigError("probe.transfer.tasks", TransferTask.colour_dominance.value,
                          f"colour_dominance needs RGB images; these have {info.channels} channel(s): "
                          "use quadrant_dominance (or dominance, which picks it)")
    tasks = dict.fromkeys(dominance if task == TransferTask.dominance else TransferTask(task) for task in cfg.tasks)
    return [TransferProbe(task, build_classifier(cfg.classifier, seed), cfg.validation_fraction, seed)
            for task in tasks]


def _effective_rank(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [EffectiveRank()]


def _cka(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [CKA(cfg.max_images, seed)]


def _class_collapse(cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    return [ClassCollapse()]


# probe.<name> -> the probes it configures (transfer: one per task). A `_recipe` probe is its fast
# probe's published recipe under its own name, so one run can fit both on the same activations.
# effective_rank, cka and class_collapse fit nothing: measures of the activations to read beside the RL.
PROBES: dict[str, Callable[[DictConfig, int, DatasetInfo], list[Probe]]] = {
    "reconstruction": _reconstruction,
    "reconstruction_recipe": _reconstruction_recipe,
    "reconstruction_conv": _reconstruction_conv,
    "linear": _linear,
    "linear_recipe": _linear_recipe,
    "transfer": _transfer,
    "effective_rank": _effective_rank,
    "cka": _cka,
    "class_collapse": _class_collapse,
}


def build_probes(probe_cfg: DictConfig, seed: int, info: DatasetInfo) -> list[Probe]:
    """The enabled probes, in registry order."""
    return [probe for name, build in PROBES.items() if name in probe_cfg.enabled
            for probe in build(probe_cfg[name], seed, info)]


def probe_datasets(dataset_cfg: DictConfig, probes: list[Probe]) -> tuple[str | None, list[int] | None]:
    """(the transfer partner's name, the complement classes) when a probe reads them, else None each."""
    reads = {probe.dataset for probe in probes}
    # A dataset without a partner fails here, before any folder is written.
    partner = transfer_partner(dataset_cfg.name) if TRANSFER_PARTNER in reads else None
    # So does a class switch without dataset.class_subset, or with one that leaves fewer than 2 classes.
    complement = complement_classes(dataset_cfg) if COMPLEMENT_CLASSES in reads else None
    return partner, complement

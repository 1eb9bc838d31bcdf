"""The schema of a run: dataclasses registered in Hydra's ConfigStore, plus the range checks.

Hydra checks types while composing (`optimizer.lr=abc` fails there, before any code of ours runs);
`validate` checks ranges and cross-references (a probe layer the arch does not declare) before any
data is read or any folder is written. Each YAML file under `conf/` extends one of these schemas
through its defaults list, so a misspelt key in a YAML file or on the command line fails at compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from phases import launcher

launcher.register()  # before Hydra composes anything: conf/hydra/launcher/local.yaml uses it

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"  # the package is used from a checkout


class ConfigError(ValueError):
    """A setting is out of range; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key = key


@dataclass
class DatasetConfig:
    name: str = MISSING  # key of the loader registry in phases.data, e.g. "fashion_mnist"
    image_size: int = 32  # images are resized to image_size x image_size pixels
    mean: list[float] = MISSING  # per-channel mean of pixels scaled to [0, 1], used to normalise
    std: list[float] = MISSING  # per-channel standard deviation, same units
    train_size: int | None = None  # train on a seeded subset of this many images; null = all
    test_size: int | None = None  # evaluate on a seeded subset of this many images; null = all
    download: bool = False  # fetch the official files through torchvision when they are missing


@dataclass
class PrototypesDatasetConfig(DatasetConfig):
    """The paper's data model, generated in memory (phases/prototypes.py): no files, nothing to download
    (except the real dataset a `prototype_source` names, with its own `download` rule)."""

    name: str = "prototypes"
    # Samples are drawn in normalised units: the normalisation is the identity, one 0/1 per channel.
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    train_size: int | None = 5000  # samples drawn for training (required: there is no "whole" generated split)
    test_size: int | None = 2000  # samples drawn for testing, from the same prototypes with fresh noise
    classes: int = 10
    channels: int = 1  # a real prototype_source fixes it (1 for fashion_mnist and mnist, 3 for CIFAR)
    # random (standard Gaussian pixels, seeded by the run's seed) or a real dataset's name, e.g.
    # fashion_mnist: its first `classes` class means over the whole training split, normalised.
    prototype_source: str = "random"
    noise_std: float = 1.0  # standard deviation of the Gaussian noise added to every pixel, normalised units
    atypical_fraction: float = 0.05  # share of every class's samples that are atypical, in [0, 1)
    atypical_kind: str = "other_prototype"  # or random_direction (see phases/prototypes.py)


@dataclass
class ArchConfig:
    name: str = MISSING  # key of the architecture registry in phases.models
    width: float = 1.0  # channel multiplier: 0.25 keeps a quarter of every layer's channels


@dataclass
class MLPArchConfig(ArchConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])  # units per hidden layer, before width


@dataclass
class LinearArchConfig(ArchConfig):
    name: str = "linear"
    # Multiplier on PyTorch's default initial weights (uniform, +-1/sqrt(pixels)); 0 = zero init. The
    # theory's phases depend on how small the start is compared with what training adds.
    init_scale: float = 1.0


@dataclass
class OptimizerConfig:
    # Instantiated with hydra.utils.instantiate(cfg.optimizer, params=...): every other field is a
    # keyword argument of the optimizer class, so no setting is read in one place and ignored in another.
    _target_: str = MISSING
    lr: float = MISSING  # learning rate


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.002  # the paper's learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    max_steps: int = 2048  # optimizer updates; evaluation at 0, every power of two, and max_steps
    batch_size: int = 128  # images per update
    # Besides after every evaluation, checkpoint when this many minutes passed since the last one, so a
    # run killed without warning (SIGKILL, a node failure) loses at most that much; 0 = every step.
    checkpoint_minutes: float = 10.0


@dataclass
class AdamRecipeConfig:
    """The published script's decoder training: Adam on the per-pixel MSE (reconstruction_conv uses it as is)."""

    epochs: int = 20
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-5
    batch_size: int = 128


@dataclass
class ReconstructionProbeConfig(AdamRecipeConfig):
    solver: str = "closed_form"  # closed_form (the exact ridge optimum) or sgd (the Adam recipe above)
    # closed_form: ridge penalty relative to the features' scale, lambda = ridge * trace(X^T X) / features,
    # so the same setting means the same regularisation at step 0 and after activations grew 100-fold.
    ridge: float = 1.0e-3


@dataclass
class LinearProbeConfig:
    solver: str = "lbfgs"  # lbfgs (full batch on cached activations) or sgd (the published recipe)
    l2: float = 1.0e-2  # lbfgs: penalty on the squared weights (standardised features), added to the mean loss
    max_iterations: int = 30  # lbfgs: iterations on the full probe training set
    # sgd: the published recipe, SGD with momentum, lr x0.1 after lr_drop_epoch.
    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    lr_drop_epoch: int = 10
    batch_size: int = 128


@dataclass
class TransferProbeConfig:
    # colour_dominance (RGB), quadrant_dominance (any), dataset_switch (fashion_mnist <-> mnist,
    # cifar10 <-> cifar100), or dominance: colour for RGB datasets, quadrant for grayscale ones.
    tasks: list[str] = field(default_factory=lambda: ["dominance"])
    validation_fraction: float = 0.2  # of the transfer training images, held out and reported as split "val"
    classifier: LinearProbeConfig = field(default_factory=LinearProbeConfig)


@dataclass
class SampleLossProbeConfig:
    quantiles: list[float] = field(default_factory=lambda: [0.5, 0.9, 0.99])  # of the per-sample loss
    worst_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # share of loss they carry


@dataclass
class ProbeConfig:
    # Probe points to measure; null = every point the arch declares; `penultimate` names the input of
    # the final Linear in any arch (block5 in the VGGs, pooled in the ResNets).
    layers: list[str] | None = field(default_factory=lambda: ["penultimate", "logits"])
    train_size: int | None = 5000  # images the probes are fitted on (a seeded subset of the training split); null = all
    test_size: int | None = 5000  # images the probes are scored on (a seeded subset of the test split); null = all
    # Training images the classifier's own train accuracy is measured on; its test accuracy always
    # uses the whole (possibly dataset.test_size-reduced) test split.
    classifier_train_size: int = 5000
    batch_size: int = 256  # images per forward pass when collecting activations (fits CPU caches)
    calibration_size: int = 2000  # precise_eval: probe training images BatchNorm statistics are recomputed on
    # Average-pool feature maps larger than this side (e.g. 4 -> at most C x 4 x 4) before probing;
    # null = probe the maps as they are. Pooling changes what is measured: only set it deliberately.
    spatial_pool: int | None = None
    # The probed layers' activations of one evaluation step (probe train + test images, float32) may
    # use at most this much memory; a larger configuration fails before training, saying what to change.
    max_activation_gb: float = 8.0
    # BatchNorm during extraction: precise_eval (eval mode, statistics recomputed on the probe's train
    # images at the current weights), eval (running statistics as they are) or train (batch statistics
    # in batches of schedule.batch_size: the published script's quirk). See phases/features.py.
    bn_mode: str = "precise_eval"
    # The probe plug-ins that run (phases.probes.PROBES), each configured in the node of its name below.
    enabled: list[str] = field(default_factory=lambda: ["reconstruction", "linear", "sample_loss"])
    reconstruction: ReconstructionProbeConfig = field(default_factory=ReconstructionProbeConfig)
    reconstruction_conv: AdamRecipeConfig = field(default_factory=AdamRecipeConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    transfer: TransferProbeConfig = field(default_factory=TransferProbeConfig)
    sample_loss: SampleLossProbeConfig = field(default_factory=SampleLossProbeConfig)


PROBE_NAMES = ("reconstruction", "reconstruction_conv", "linear", "transfer", "sample_loss")


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:PHASES_DATA_DIR,data}"  # datasets, in torchvision's folder layout
    outputs: str = "outputs"  # runs/, figures/ and tables/ are written below this folder
    # Where Debian's dataset packages put their files (e.g. dataset-fashion-mnist); null = not searched.
    system_data_dir: str | None = "/usr/share/datasets"


@dataclass
class RunConfig:
    dataset: DatasetConfig = MISSING
    arch: ArchConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    probe: ProbeConfig = MISSING
    schedule: ScheduleConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0  # seeds weights, data order and every subset
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    force: bool = False  # rerun even when a finished run with the same config exists
    progress: bool = True  # show the training progress bar


# The schemas a conf/dataset/*.yaml file can extend, by the name its defaults list uses.
DATASET_SCHEMAS = {"dataset_schema": DatasetConfig, "prototypes_schema": PrototypesDatasetConfig}


def register_configs() -> None:
    """Store the schemas so that `conf/**.yaml` can extend them (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name, schema in DATASET_SCHEMAS.items():
        store.store(group="dataset", name=name, node=schema)
    store.store(group="arch", name="arch_schema", node=ArchConfig)
    store.store(group="arch", name="mlp_schema", node=MLPArchConfig)
    store.store(group="arch", name="linear_schema", node=LinearArchConfig)
    store.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    store.store(group="optimizer", name="adam_schema", node=AdamConfig)
    store.store(group="probe", name="probe_schema", node=ProbeConfig)
    store.store(group="schedule", name="schedule_schema", node=ScheduleConfig)


register_configs()


def dataset_option(name: str) -> DictConfig:
    """conf/dataset/<name>.yaml on the schema its defaults list names, without composing a whole run
    (usable inside a Hydra app)."""
    option = OmegaConf.load(CONFIG_DIR / "dataset" / f"{name}.yaml")
    schema = next(DATASET_SCHEMAS[entry] for entry in option.pop("defaults", []) if entry in DATASET_SCHEMAS)
    return OmegaConf.merge(OmegaConf.structured(schema), option)


def optimizer_name(cfg: DictConfig) -> str:
    """`torch.optim.SGD` -> `sgd`: the name used in run ids and in the metrics table."""
    return str(cfg.optimizer._target_).rsplit(".", 1)[-1].lower()


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


def _check_optional_size(key: str, value: int | None) -> None:
    _require(value is None or value >= 1, key, value, "a positive number of images, or null for all")


def _check_recipe(key: str, recipe: DictConfig) -> None:
    _require(recipe.epochs >= 1, f"{key}.epochs", recipe.epochs, "an integer >= 1")
    _require(recipe.lr > 0, f"{key}.lr", recipe.lr, "a positive learning rate")
    _require(recipe.batch_size >= 1, f"{key}.batch_size", recipe.batch_size, "an integer >= 1 (images)")
    if "weight_decay" in recipe:
        _require(recipe.weight_decay >= 0, f"{key}.weight_decay", recipe.weight_decay, "a value >= 0")


def _check_classifier(key: str, classifier: DictConfig) -> None:
    _require(classifier.solver in ("lbfgs", "sgd"), f"{key}.solver", classifier.solver, "lbfgs or sgd")
    _require(classifier.l2 >= 0, f"{key}.l2", classifier.l2, "a value >= 0")
    _require(classifier.max_iterations >= 1, f"{key}.max_iterations", classifier.max_iterations, "an integer >= 1")
    _require(0 <= classifier.momentum < 1, f"{key}.momentum", classifier.momentum, "a value in [0, 1)")
    _check_recipe(key, classifier)


ATYPICAL_KINDS = ("other_prototype", "random_direction")  # phases.prototypes draws them (it imports torch)


def _check_prototypes(dataset: DictConfig) -> None:
    """The generated data model's ranges (its source and shape are checked by phases.data.dataset_info)."""
    _require(dataset.classes >= 2, "dataset.classes", dataset.classes, "an integer >= 2")
    for key in ("train_size", "test_size"):
        _require(dataset[key] is not None and dataset[key] >= dataset.classes, f"dataset.{key}", dataset[key],
                 f"the number of samples to generate, at least one per class (>= {dataset.classes})")
    _require(dataset.noise_std >= 0, "dataset.noise_std", dataset.noise_std,
             "a standard deviation >= 0 (normalised pixel units)")
    _require(0 <= dataset.atypical_fraction < 1, "dataset.atypical_fraction", dataset.atypical_fraction,
             "a fraction in [0, 1) of every class's samples")
    _require(dataset.atypical_kind in ATYPICAL_KINDS, "dataset.atypical_kind", dataset.atypical_kind,
             " or ".join(ATYPICAL_KINDS))


def validate(cfg: DictConfig, probe_points: list[str]) -> None:
    """Fail on the first out-of-range setting; `probe_points` are those the built arch declares."""
    dataset = cfg.dataset
    _require(dataset.image_size >= 8, "dataset.image_size", dataset.image_size, "an integer >= 8 (pixels)")
    _require(len(dataset.mean) == len(dataset.std), "dataset.std", list(dataset.std),
             f"one value per channel, like dataset.mean={list(dataset.mean)}")
    for index, std in enumerate(dataset.std):
        _require(std > 0, f"dataset.std[{index}]", std, "a positive standard deviation")
    _check_optional_size("dataset.train_size", dataset.train_size)
    _check_optional_size("dataset.test_size", dataset.test_size)
    if "atypical_fraction" in dataset:
        _check_prototypes(dataset)

    _require(cfg.arch.width > 0, "arch.width", cfg.arch.width, "a positive channel multiplier, e.g. 0.25 or 1")
    if "init_scale" in cfg.arch:
        _require(cfg.arch.init_scale >= 0, "arch.init_scale", cfg.arch.init_scale,
                 "a multiplier >= 0 on the default initial weights (0 = zero init, 1 = PyTorch's default)")
    if "hidden_sizes" in cfg.arch:
        _require(len(cfg.arch.hidden_sizes) > 0 and all(size >= 1 for size in cfg.arch.hidden_sizes),
                 "arch.hidden_sizes", list(cfg.arch.hidden_sizes), "a non-empty list of positive layer sizes")

    optimizer = cfg.optimizer
    _require(optimizer.lr > 0, "optimizer.lr", optimizer.lr, "a positive learning rate, e.g. 0.002")
    if "momentum" in optimizer:
        _require(0 <= optimizer.momentum < 1, "optimizer.momentum", optimizer.momentum, "a value in [0, 1)")
    if "weight_decay" in optimizer:
        _require(optimizer.weight_decay >= 0, "optimizer.weight_decay", optimizer.weight_decay, "a value >= 0")

    schedule = cfg.schedule
    _require(schedule.max_steps >= 1, "schedule.max_steps", schedule.max_steps, "an integer >= 1 (updates)")
    _require(schedule.batch_size >= 1, "schedule.batch_size", schedule.batch_size, "an integer >= 1 (images)")
    _require(schedule.checkpoint_minutes >= 0, "schedule.checkpoint_minutes", schedule.checkpoint_minutes,
             "minutes >= 0 (0 = every step)")

    probe = cfg.probe
    _check_optional_size("probe.spatial_pool", probe.spatial_pool)
    _require(probe.max_activation_gb > 0, "probe.max_activation_gb", probe.max_activation_gb, "a positive size in GB")
    for key in ("classifier_train_size", "batch_size", "calibration_size"):
        _require(probe[key] >= 1, f"probe.{key}", probe[key], "an integer >= 1 (images)")
    _check_optional_size("probe.test_size", probe.test_size)
    _require(probe.train_size is None or probe.train_size >= 10, "probe.train_size", probe.train_size,
             "at least 10 images to fit a probe, or null for all")
    _require(probe.bn_mode in ("precise_eval", "eval", "train"), "probe.bn_mode", probe.bn_mode,
             "precise_eval, eval or train")
    if probe.layers is not None:
        _require(len(probe.layers) > 0, "probe.layers", list(probe.layers),
                 f"null (all) or a non-empty list of: {', '.join(probe_points)}")
        for layer in probe.layers:
            _require(layer in probe_points, "probe.layers", layer,
                     f"arch {cfg.arch.name} declares the probe points {', '.join(probe_points)}")
    for name in probe.enabled:
        _require(name in PROBE_NAMES, "probe.enabled", name, f"probes from {', '.join(PROBE_NAMES)}")
    reconstruction = probe.reconstruction
    _require(reconstruction.solver in ("closed_form", "sgd"), "probe.reconstruction.solver",
             reconstruction.solver, "closed_form or sgd")
    _require(reconstruction.ridge > 0, "probe.reconstruction.ridge", reconstruction.ridge,
             "a positive relative ridge penalty, e.g. 1e-3")
    _check_recipe("probe.reconstruction", reconstruction)
    _check_recipe("probe.reconstruction_conv", probe.reconstruction_conv)
    _check_classifier("probe.linear", probe.linear)
    if "transfer" in probe.enabled:
        _check_classifier("probe.transfer.classifier", probe.transfer.classifier)
        _require(0 < probe.transfer.validation_fraction < 1, "probe.transfer.validation_fraction",
                 probe.transfer.validation_fraction, "a fraction in (0, 1)")
        known_tasks = ("dominance", "colour_dominance", "quadrant_dominance", "dataset_switch")
        for task in probe.transfer.tasks:
            _require(task in known_tasks, "probe.transfer.tasks", task, f"one of {', '.join(known_tasks)}")
            _require(task != "colour_dominance" or len(cfg.dataset.mean) == 3, "probe.transfer.tasks", task,
                     f"colour_dominance needs RGB images; {cfg.dataset.name} is grayscale: use quadrant_dominance")
    if "sample_loss" in probe.enabled:
        for quantile in probe.sample_loss.quantiles:
            _require(0 <= quantile <= 1, "probe.sample_loss.quantiles", quantile, "quantiles in [0, 1]")
        for fraction in probe.sample_loss.worst_fractions:
            _require(0 < fraction <= 1, "probe.sample_loss.worst_fractions", fraction, "fractions in (0, 1]")

    _require(cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"),
             "device", cfg.device, "auto, cpu, cuda or cuda:N")

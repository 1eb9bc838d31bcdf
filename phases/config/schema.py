"""The schema of a run: every setting's type, default and explaining comment, written once, here.

The YAML files under `conf/` extend these dataclasses and hold only what an option changes (a
dataset's name and normalisation, `probe=paper`'s recipe). Hydra checks types and closed choices
(the Enums below) while composing: `optimizer.lr=abc` or `probe.bn_mode=batch` fails there, naming
the key and the allowed values, before any code of ours runs. Ranges and cross-references are
checked by `phases.config.validation`. No Hydra here: the store computes run ids from this schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from phases.config.probe_schema import ProbeConfig  # the largest node, in a module of its own


class AtypicalKind(str, Enum):
    """Where an atypical sample of the prototypes data model is centred (phases/training/data/prototypes.py)."""

    other_prototype = "other_prototype"  # on another class's prototype
    random_direction = "random_direction"  # on a random direction of its own prototype's norm
    # On one of a few secondary prototypes of its own class, drawn once per seed for train and test: the kinds
    # above cap test accuracy near 1 - atypical_fraction (labels the input cannot tell); fitting these raises it.
    secondary_prototype = "secondary_prototype"


class LoggerName(str, Enum):
    """Where a run mirrors its metrics besides metrics.parquet (phases/training/loggers.py)."""

    none = "none"  # metrics.parquet and run.log only
    tensorboard = "tensorboard"  # also TensorBoard event files in runs/<run_id>/tensorboard/ (pip install tensorboard)


class ResizeMethod(str, Enum):
    """How images are enlarged to dataset.image_size (28x28 MNIST-like images to 32x32)."""

    spline = "spline"  # the published script's scipy.ndimage.zoom: cubic spline (order 3), no antialiasing
    bilinear = "bilinear"  # torchvision's antialiased bilinear resize (this project's first versions)


@dataclass
class DatasetConfig:
    name: str = MISSING  # a dataset of phases.training.data, e.g. "fashion_mnist"
    image_size: int = 32  # images are resized to image_size x image_size pixels
    # How, on pixels in [0, 1] before normalising. It sets how much fine detail a decoder has to rebuild,
    # and so the level of the whole reconstruction-loss curve.
    resize: ResizeMethod = ResizeMethod.spline
    # Optional only so that image_folder can default them to null (computed from its images): Hydra builds
    # a dataset node on this class's field types before an option's schema fills it in.
    mean: list[float] | None = MISSING  # per-channel mean of pixels scaled to [0, 1], used to normalise
    std: list[float] | None = MISSING  # per-channel standard deviation, same units
    train_size: int | None = None  # train on a seeded subset of this many images; null = all
    test_size: int | None = None  # evaluate on a seeded subset of this many images; null = all
    # Train and evaluate on these classes only, relabelled 0..k-1 in this order, before train_size/test_size
    # draw; null = all. The transfer task class_switch probes the other classes (relabelled in ascending order).
    class_subset: list[int] | None = None
    # auto: fetch the official files (checksums verified) when no searched folder holds them; true: the
    # same, said explicitly; false: strictly offline, a missing dataset stops the run naming
    # `python -m phases.fetch`. Any, not an Enum: Hydra reads true/false as booleans, which an Enum field
    # rejects; phases.config.validation checks the value. Not part of the run id (where data comes from).
    download: Any = "auto"


@dataclass
class PrototypesDatasetConfig(DatasetConfig):
    """The paper's data model, generated in memory: no files, nothing to download (except the real
    dataset a `prototype_source` names, with its own `download` rule)."""

    name: str = "prototypes"
    # Samples are drawn in normalised units: the normalisation is the identity, one 0/1 per channel.
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    train_size: int | None = 5000  # samples drawn for training (required: there is no "whole" generated split)
    test_size: int | None = 2000  # samples drawn for testing, from the same prototypes with fresh noise
    classes: int = 10
    channels: int = 1  # a real prototype_source fixes it (1 for fashion_mnist and mnist, 3 for CIFAR)
    # random (standard Gaussian pixels, seeded by the run's seed: per-pixel variance 1, like a normalised
    # image) or a real dataset's name, e.g. fashion_mnist: its first `classes` class means, normalised.
    prototype_source: str = "random"
    noise_std: float = 1.0  # standard deviation of the Gaussian noise added to every pixel, normalised units
    atypical_fraction: float = 0.05  # share of every class's samples that are atypical, in [0, 1)
    atypical_kind: AtypicalKind = AtypicalKind.other_prototype
    # atypical_kind=secondary_prototype: how many per class (random directions of the class prototype's
    # norm); a class's atypical samples take them in turn, so fewer means more samples on each.
    secondary_prototypes: int = 3


@dataclass
class ImageFolderDatasetConfig(DatasetConfig):
    """The user's own images in torchvision's ImageFolder layout (phases/training/data/image_folder.py):
    read from `root`, never downloaded. Class folders in sorted name order are the labels 0..k-1."""

    name: str = "image_folder"
    # The folder: train/<class>/* and test/<class>/*, or <class>/* split by test_fraction. Hashed into the
    # run id as a fingerprint of its image files (names, sizes, times), not as the path.
    root: str = MISSING
    # The share of every class's images held out for testing when root has no train/ and test/ folders
    # (required then, null otherwise): round(test_fraction x n) of a class's n images, at least one in
    # each split, picked by a hash of their file names, not by the seed, so every seed shares one split.
    test_fraction: float | None = None
    # 1 or 3; null = 1 when every image is grayscale (PIL modes 1, L, LA), else 3. Images of the other
    # count are converted (colour to luma, grayscale repeated; alpha and palettes dropped to RGB).
    channels: int | None = None
    # null = the per-channel mean and std of the whole training split after resizing (every class, every
    # image), computed once and cached in <root>/.phases_normalisation.json; or give both, one per channel.
    mean: list[float] | None = None
    std: list[float] | None = None
    # Refuse, before decoding a pixel, a folder whose float32 tensors (images x channels x image_size^2 x 4
    # bytes, both splits, after class_subset, train_size, test_size) would take more than this, in GB.
    max_memory_gb: float = 4.0


@dataclass
class ArchConfig:
    name: str = MISSING  # an architecture of phases.training.models, e.g. "vgg8"
    width: float = 1.0  # channel multiplier: 0.25 keeps a quarter of every layer's channels


@dataclass
class MLPArchConfig(ArchConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])  # units per hidden layer, before width


@dataclass
class LinearArchConfig(ArchConfig):
    name: str = "linear"  # its width is unused: the layer's size is fixed by pixels and classes
    # Multiplier on PyTorch's default initial weights (uniform, +-1/sqrt(pixels)); 0 = zero init. The
    # theory's phases depend on how small the start is compared with what training adds.
    init_scale: float = 1.0


@dataclass
class ExternalArchConfig(ArchConfig):
    """A network built by a library or by the user's own class (phases/training/external_models.py). Its
    `name`, which run ids and the metrics' `arch` column show, is derived (torchvision_resnet18), so it
    never reads as a built-in arch's. Its width must stay 1: set a model's sizes through `kwargs`."""

    # Keyword arguments of the builder or class, e.g. {aux_logits: false}; the dataset sets classes and channels.
    # Any and null, not a typed {}: Hydra merges `arch.kwargs={...}` into a typed dict, which then refuses new keys.
    kwargs: Any = None
    # The points to probe besides `penultimate` and `logits`: {point name: module path} or a list of module
    # paths (each point named by its path); a path ending in `:input` taps that module's input. null = the
    # model's default points (`python -m phases.points arch=...` lists them with their shapes).
    probe_points: Any = None


@dataclass
class TorchvisionArchConfig(ExternalArchConfig):
    name: str = "torchvision_${.model}"
    model: str | None = None  # a classification builder of torchvision.models, e.g. resnet18 (required)
    # Pretrained weights: DEFAULT or a weights name of the model, e.g. IMAGENET1K_V1; null = random init.
    # Missing from torch's hub cache, they are fetched unless dataset.download=false (the run's offline rule).
    weights: str | None = None


@dataclass
class TimmArchConfig(ExternalArchConfig):
    name: str = "timm_${.model}"
    model: str | None = None  # a timm model, e.g. resnet18 (required; pip install timm), random init


@dataclass
class CustomArchConfig(ExternalArchConfig):
    name: str = "custom_${.target}"
    target: str | None = None  # the user's nn.Module class as module.Class, e.g. my_package.MyNet (required)


@dataclass
class OptimizerConfig:
    # Built by phases.training.optimizers from this closed schema: `_target_` names the class (it cannot
    # choose another) and every other field is a keyword argument of it, so no setting is ignored.
    _target_: str = MISSING
    lr: float = MISSING  # learning rate


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.002  # the paper's learning rate (no schedule)
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    # Optimizer updates; evaluated at 0, every power of two and max_steps. 2048 (about 4.4 epochs of
    # Fashion-MNIST) shows the three phases on a CPU; the paper runs 65536 on a GPU.
    max_steps: int = 2048
    batch_size: int = 128  # images per update
    # Besides after every evaluation, checkpoint when this many minutes passed since the last one, so a
    # run killed without warning (SIGKILL, a node failure) loses at most that much; 0 = every step.
    checkpoint_minutes: float = 10.0


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:PHASES_DATA_DIR,data}"  # datasets, in torchvision's folder layout
    outputs: str = "outputs"  # runs/, figures/ and tables/ are written below this folder
    # Where Debian's dataset packages put their files (e.g. dataset-fashion-mnist); null = not searched.
    system_data_dir: str | None = "/usr/share/datasets"
    # A base URL replacing torchvision's official mirrors: every file is fetched as <data_mirror>/<its path
    # below torchvision's data root>, e.g. MNIST/raw/train-images-idx3-ubyte.gz or cifar-10-python.tar.gz
    # (a torchvision data folder served over HTTP is a mirror); null = the official mirrors, in order.
    data_mirror: str | None = None
    # A file of md5sum lines (`<md5>  <file name>`) whose md5s replace the official ones for the files it
    # lists: for a mirror holding re-packaged files, and for the tests' generated ones; null = official md5s.
    data_checksums: str | None = None


@dataclass
class LoggerConfig:
    # The `logger` group's choice (logger=tensorboard); the metrics and the training loss are mirrored
    # there as the run goes. Where results are watched, never what they are.
    name: LoggerName = LoggerName.none


@dataclass
class RunConfig:
    dataset: DatasetConfig = MISSING
    arch: ArchConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    probe: ProbeConfig = MISSING
    schedule: ScheduleConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0  # seeds weights, data order and every subset
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    force: bool = False  # rerun even when a finished run with the same config exists
    progress: bool = True  # show the training progress bar


# The schemas the YAML files extend, by the name their defaults lists use (`/<name>@_here_`). They are
# stored outside the config groups, so `arch=...` can never select a schema and listings show none.
SCHEMAS: dict[str, type] = {
    "run_schema": RunConfig,
    "dataset_schema": DatasetConfig,
    "prototypes_dataset_schema": PrototypesDatasetConfig,
    "image_folder_dataset_schema": ImageFolderDatasetConfig,
    "arch_schema": ArchConfig,
    "mlp_arch_schema": MLPArchConfig,
    "linear_arch_schema": LinearArchConfig,
    "torchvision_arch_schema": TorchvisionArchConfig,
    "timm_arch_schema": TimmArchConfig,
    "custom_arch_schema": CustomArchConfig,
    "sgd_optimizer_schema": SGDConfig,
    "adam_optimizer_schema": AdamConfig,
    "probe_schema": ProbeConfig,
    "schedule_schema": ScheduleConfig,
    "logger_schema": LoggerConfig,
}

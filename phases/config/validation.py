"""Range and cross-reference checks of a composed run config, before any data is read or folder written.

Types and closed choices are Hydra's job at compose time (phases/config/schema.py). `validate` walks
the config and applies to every node the checks of its schema type and of that type's bases, so a
node is checked for what it is (a PrototypesDatasetConfig is also a DatasetConfig), never for which
keys it happens to hold.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from phases.config import probe_schema, schema


class ConfigError(ValueError):
    """A setting is out of range; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key = key


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


# What to give for the settings a schema leaves without a default (`???`), by dotted key.
REQUIRED_SETTINGS = {"dataset.root": "the folder of your images, e.g. dataset.root=/data/flowers, holding "
                                     "train/<class>/* and test/<class>/*, or <class>/* with dataset.test_fraction=0.2"}

# probe.reconstruction.ridge's word for a penalty chosen by generalised cross-validation.
RIDGE_BY_GCV = "gcv"

# dataset.download's values: Hydra reads true/false as booleans; the quoted words are taken too.
DOWNLOAD_VALUES = {"auto": True, "true": True, "false": False}


def download_allowed(value: Any, key: str = "dataset.download") -> bool:
    """Whether `dataset.download=<value>` lets a missing dataset be fetched (auto, true) or not (false)."""
    word = str(value).lower() if isinstance(value, bool | str) else None
    require(word in DOWNLOAD_VALUES, key, value,
            "auto (fetch missing files), true (the same, said explicitly) or false (never fetch: offline)")
    return DOWNLOAD_VALUES[word]


def _optional_size(key: str, value: int | None) -> None:
    require(value is None or value >= 1, key, value, "a positive number of images, or null for all")


def _dataset(node: DictConfig, key: str) -> None:
    require(node.image_size >= 8, f"{key}.image_size", node.image_size, "an integer >= 8 (pixels)")
    if node.mean is not None and node.std is not None:  # null (image_folder): computed from the images
        require(len(node.mean) == len(node.std), f"{key}.std", list(node.std),
                f"one value per channel, like {key}.mean={list(node.mean)}")
    for index, std in enumerate(node.std or []):
        require(std > 0, f"{key}.std[{index}]", std, "a positive standard deviation")
    _optional_size(f"{key}.train_size", node.train_size)
    _optional_size(f"{key}.test_size", node.test_size)
    check_class_subset(node.class_subset, None, f"{key}.class_subset")
    download_allowed(node.download, f"{key}.download")


def check_class_subset(subset: list[int] | None, classes: int | None, key: str = "dataset.class_subset") -> None:
    """dataset.class_subset: null, or at least 2 distinct class numbers in [0, classes). The class count is
    the data module's (phases.training.data): without it (`classes=None`, validate) the upper end is
    left to that module's check, which repeats this one with the count before anything is read."""
    if subset is None:
        return
    values = list(subset)
    repeated = sorted({value for value in values if values.count(value) > 1})
    outside = [value for value in values if value < 0 or (classes is not None and value >= classes)]
    problem = ("fewer than 2 classes leave nothing to classify" if len(values) < 2
               else f"{repeated} listed more than once" if repeated
               else f"{outside} outside the range" if outside else None)
    valid_range = f"[0, {classes})" if classes is not None else "[0, the dataset's number of classes)"
    require(problem is None, key, values,
            f"{problem}; give null (every class) or at least 2 distinct class numbers in {valid_range}, "
            "e.g. [0,1,2,3,4]")


def _prototypes(node: DictConfig, key: str) -> None:
    """The generated data model's ranges (its source and shape are checked by the data module)."""
    require(node.class_subset is None, f"{key}.class_subset", node.class_subset,
            "null: the generated data model draws its own classes (set dataset.classes for fewer of them)")
    require(node.classes >= 2, f"{key}.classes", node.classes, "an integer >= 2")
    for size in ("train_size", "test_size"):
        require(node[size] is not None and node[size] >= node.classes, f"{key}.{size}", node[size],
                f"the number of samples to generate, at least one per class (>= {node.classes})")
    require(node.noise_std >= 0, f"{key}.noise_std", node.noise_std,
            "a standard deviation >= 0 (normalised pixel units)")
    require(0 <= node.atypical_fraction < 1, f"{key}.atypical_fraction", node.atypical_fraction,
            "a fraction in [0, 1) of every class's samples")
    # Checked whatever the kind: the value is hashed into the run id even where it is not used.
    require(node.secondary_prototypes >= 1, f"{key}.secondary_prototypes", node.secondary_prototypes,
            "an integer >= 1 (secondary prototypes per class, for atypical_kind=secondary_prototype)")


def _image_folder(node: DictConfig, key: str) -> None:
    """The settings' ranges; the folder itself is checked by phases/training/data/image_folder.py."""
    require(str(node.root).strip() != "", f"{key}.root", node.root, REQUIRED_SETTINGS["dataset.root"])
    given, absent = ("mean", "std") if node.std is None else ("std", "mean")
    require((node.mean is None) == (node.std is None), f"{key}.{absent}", None, f"a list like {key}.{given}, one "
            "value per channel: give both, or neither (both computed from the training images)")
    require(node.test_fraction is None or 0 < node.test_fraction < 1, f"{key}.test_fraction", node.test_fraction,
            "a fraction in (0, 1) of every class's images to test on (e.g. 0.2), or null with train/ and test/")
    require(node.channels in (None, 1, 3), f"{key}.channels", node.channels,
            "1 (grayscale), 3 (RGB) or null (1 when every image is grayscale, else 3)")
    require(node.max_memory_gb > 0, f"{key}.max_memory_gb", node.max_memory_gb, "a positive size in GB")


def _arch(node: DictConfig, key: str) -> None:
    require(node.width > 0, f"{key}.width", node.width, "a positive channel multiplier, e.g. 0.25 or 1")


def _mlp(node: DictConfig, key: str) -> None:
    require(len(node.hidden_sizes) > 0 and all(size >= 1 for size in node.hidden_sizes), f"{key}.hidden_sizes",
            list(node.hidden_sizes), "a non-empty list of positive layer sizes")


def _linear_arch(node: DictConfig, key: str) -> None:
    require(node.init_scale >= 0, f"{key}.init_scale", node.init_scale,
            "a multiplier >= 0 on the default initial weights (0 = zero init, 1 = PyTorch's default)")


def _optimizer(node: DictConfig, key: str) -> None:
    # `_target_` names the class for readers of config.yaml and for the run id; it cannot choose another
    # (phases.training.optimizers builds the class of the option's schema, never what a string names).
    schema_class = OmegaConf.get_type(node)
    require(node._target_ == schema_class._target_, f"{key}._target_", node._target_,
            f"{schema_class._target_}, the class of this optimizer option (choose another with optimizer=...)")
    require(node.lr > 0, f"{key}.lr", node.lr, "a positive learning rate, e.g. 0.002")
    if "weight_decay" in node:  # a keyword of the optimizer class, present when its schema declares it
        require(node.weight_decay >= 0, f"{key}.weight_decay", node.weight_decay, "a value >= 0")


def _sgd(node: DictConfig, key: str) -> None:
    require(0 <= node.momentum < 1, f"{key}.momentum", node.momentum, "a value in [0, 1)")


def _schedule(node: DictConfig, key: str) -> None:
    require(node.max_steps >= 1, f"{key}.max_steps", node.max_steps, "an integer >= 1 (updates)")
    require(node.batch_size >= 1, f"{key}.batch_size", node.batch_size, "an integer >= 1 (images)")
    require(node.checkpoint_minutes >= 0, f"{key}.checkpoint_minutes", node.checkpoint_minutes,
            "minutes >= 0 (0 = every step)")


def _adam_recipe(node: DictConfig, key: str) -> None:
    require(node.epochs >= 1, f"{key}.epochs", node.epochs, "an integer >= 1")
    require(node.lr > 0, f"{key}.lr", node.lr, "a positive learning rate")
    require(node.batch_size >= 1, f"{key}.batch_size", node.batch_size, "an integer >= 1 (images)")
    require(node.weight_decay >= 0, f"{key}.weight_decay", node.weight_decay, "a value >= 0")


def _reconstruction(node: DictConfig, key: str) -> None:
    ridge = node.ridge
    chosen = ridge == RIDGE_BY_GCV or (isinstance(ridge, int | float) and not isinstance(ridge, bool) and ridge > 0)
    require(chosen, f"{key}.ridge", ridge,
            f"{RIDGE_BY_GCV} (chosen by generalised cross-validation) or a positive relative ridge penalty, e.g. 1e-3")


def _classifier(node: DictConfig, key: str) -> None:
    require(node.l2 >= 0, f"{key}.l2", node.l2, "a value >= 0")
    require(node.max_iterations is None or node.max_iterations >= 1, f"{key}.max_iterations", node.max_iterations,
            "an integer >= 1, or null (the solver's default)")


def _sgd_recipe(node: DictConfig, key: str) -> None:
    require(0 <= node.momentum < 1, f"{key}.momentum", node.momentum, "a value in [0, 1)")
    require(node.epochs >= 1, f"{key}.epochs", node.epochs, "an integer >= 1")
    require(node.lr > 0, f"{key}.lr", node.lr, "a positive learning rate")
    require(node.batch_size >= 1, f"{key}.batch_size", node.batch_size, "an integer >= 1 (images)")


def _transfer(node: DictConfig, key: str) -> None:
    require(0 < node.validation_fraction < 1, f"{key}.validation_fraction", node.validation_fraction,
            "a fraction in (0, 1)")


def _sample_loss(node: DictConfig, key: str) -> None:
    for quantile in node.quantiles:
        require(0 <= quantile <= 1, f"{key}.quantiles", quantile, "quantiles in [0, 1]")
    for fraction in node.worst_fractions:
        require(0 < fraction <= 1, f"{key}.worst_fractions", fraction, "fractions in (0, 1]")


def _cka(node: DictConfig, key: str) -> None:
    # Centring leaves one image nothing and a few images a CKA near 1 whatever the layers: ask for some.
    require(node.max_images >= 10, f"{key}.max_images", node.max_images,
            "an integer >= 10 (images linear CKA is computed on, e.g. 2000)")


def _probe(node: DictConfig, key: str) -> None:
    _optional_size(f"{key}.spatial_pool", node.spatial_pool)
    require(node.max_activation_gb > 0, f"{key}.max_activation_gb", node.max_activation_gb, "a positive size in GB")
    for size in ("classifier_train_size", "batch_size"):
        require(node[size] >= 1, f"{key}.{size}", node[size], "an integer >= 1 (images)")
    # BatchNorm cannot compute statistics of one image whose feature map is 1x1 (the VGGs' last block).
    require(node.calibration_size >= 2, f"{key}.calibration_size", node.calibration_size, "an integer >= 2 (images)")
    _optional_size(f"{key}.test_size", node.test_size)
    require(node.train_size is None or node.train_size >= 10, f"{key}.train_size", node.train_size,
            "at least 10 images to fit a probe, or null for all")
    require(node.min_images_per_feature >= 0, f"{key}.min_images_per_feature", node.min_images_per_feature,
            "a value >= 0 (e.g. 4: a point with d features is fitted on at least 4 x d images; 0 = train_size)")


def _run(node: DictConfig, key: str) -> None:
    require(0 <= node.seed < 2**32, "seed", node.seed, "an integer in [0, 2**32) (numpy's seed range)")
    require(node.device in ("auto", "cpu") or str(node.device).startswith("cuda"), "device", node.device,
            "auto, cpu, cuda or cuda:N")


# Schema type -> the checks of the fields it declares (its bases' checks apply too).
CHECKS: dict[type, Callable[[DictConfig, str], None]] = {
    schema.DatasetConfig: _dataset,
    schema.PrototypesDatasetConfig: _prototypes,
    schema.ImageFolderDatasetConfig: _image_folder,
    schema.ArchConfig: _arch,
    schema.MLPArchConfig: _mlp,
    schema.LinearArchConfig: _linear_arch,
    schema.OptimizerConfig: _optimizer,
    schema.SGDConfig: _sgd,
    schema.ScheduleConfig: _schedule,
    probe_schema.AdamRecipeConfig: _adam_recipe,
    probe_schema.ReconstructionProbeConfig: _reconstruction,
    probe_schema.SGDRecipeConfig: _sgd_recipe,
    probe_schema.LinearProbeConfig: _classifier,
    probe_schema.TransferProbeConfig: _transfer,
    probe_schema.SampleLossConfig: _sample_loss,
    probe_schema.CKAConfig: _cka,
    probe_schema.ProbeConfig: _probe,
    schema.RunConfig: _run,
}


def check_known_keys(node: DictConfig, key: str = "") -> None:
    """Every key is a field of its node's schema: Hydra lets `+key=value` add any key to a structured
    config, so a misspelt `+schedule.max_step=4` would otherwise run the defaults under a new run id,
    and a node added under the optimizer would reach its constructor."""
    node_type = OmegaConf.get_type(node)
    fields = [field.name for field in dataclasses.fields(node_type)] if dataclasses.is_dataclass(node_type) else None
    for child in node:
        dotted = f"{key}.{child}" if key else str(child)
        if fields is not None and child not in fields:
            closest = difflib.get_close_matches(str(child), fields, n=1, cutoff=0.5)
            hint = f"did you mean {key + '.' if key else ''}{closest[0]}? " if closest else ""
            raise ConfigError(dotted, OmegaConf.to_container(node)[child] if isinstance(node[child], DictConfig)
                              else node[child], f"not a setting of {node_type.__name__}; {hint}"
                              f"the settings here are {', '.join(fields)}")
        if OmegaConf.is_missing(node, child):  # `???`: a setting only the user can give (reading it would raise)
            raise ConfigError(dotted, "???", f"required: {REQUIRED_SETTINGS.get(dotted, 'it has no default')}")
        if isinstance(node[child], DictConfig):
            check_known_keys(node[child], dotted)


def check_node(node: DictConfig, key: str) -> None:
    node_type = OmegaConf.get_type(node)
    for base in reversed(getattr(node_type, "__mro__", ())):  # a base's checks before its subclass's
        if base in CHECKS:
            CHECKS[base](node, key)
    for child in node:
        if isinstance(node[child], DictConfig):
            check_node(node[child], f"{key}.{child}" if key else str(child))


def validate(cfg: DictConfig, probe_points: list[str] | None = None) -> None:
    """Fail on the first unknown key or out-of-range setting, before anything is built or read; with
    the `probe_points` the built arch declares, also on a probe layer it does not have."""
    check_known_keys(cfg)
    check_node(cfg, "")
    if probe_points is not None:
        check_probe_layers(cfg, probe_points)


def check_probe_layers(cfg: DictConfig, probe_points: list[str]) -> None:
    probe = cfg.probe
    if probe.layers is not None:
        require(len(probe.layers) > 0, "probe.layers", list(probe.layers),
                f"null (all) or a non-empty list of: {', '.join(probe_points)}")
        for layer in probe.layers:
            require(layer in probe_points, "probe.layers", layer,
                    f"arch {cfg.arch.name} declares the probe points {', '.join(probe_points)}")

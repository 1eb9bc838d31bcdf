"""A run's identity: `<dataset>-<arch>-<optimizer>-s<seed>-<8 hex>`, readable and stable.

The hash covers the settings that differ from their schema's default (as dora's signature does), so
a new setting added with a default leaves every finished run's identity as it was. Left out, as they
cannot change results: where and how fast a run happens (NON_RESULT_KEYS), the nodes of probes that
are not enabled, and BatchNorm's calibration size when statistics are not recomputed. Changing a
default in the schema therefore does not change the ids of runs that used it: do so with a new key,
and when that key's default computes something else than runs did before it existed, list the old
behaviour in BEHAVIOUR_BEFORE_THE_KEY. A name that came to mean another thing (an arch rebuilt) is
listed in REVISIONS: a finished run of the old meaning is then never taken for one of the new.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from phases.config.probe_schema import BatchNormMode, ClassifierSolver, ReconstructionSolver
from phases.store.folder_fingerprint import folder_fingerprint

# Where or how fast a run happens, never its results; also what the analysis never treats as a setting.
# dataset.download says whether missing files may be fetched, not which: the files are checksum-verified.
NON_RESULT_KEYS = ("paths", "device", "force", "progress", "logger", "dataset.download", "probe.batch_size",
                   "probe.max_activation_gb", "schedule.checkpoint_minutes", "dataset.max_memory_gb")
# Settings that name a folder: hashed as a fingerprint of the images it holds (file names, sizes and
# times; phases.store.folder_fingerprint), not as the path, so two folders never share a run id while
# the same folder moved keeps it.
FOLDER_KEYS = {"dataset.root": folder_fingerprint}


# Keys whose default changed what runs compute, with what runs did before the key existed: such a key
# is hashed unless it holds that old behaviour, so old runs keep their ids and new ones get new ids.
BEHAVIOUR_BEFORE_THE_KEY = {
    "dataset.resize": "bilinear",  # issue 14: the published script's spline zoom became the default
    "probe.reconstruction.ridge": 1.0e-3,  # issue 14: chosen by generalised cross-validation (gcv)
    "probe.min_images_per_feature": 0,  # issue 14: wide points fitted on at least 4 images per feature
    "probe.linear.preconditioned": False,  # issue 16: L-BFGS in the features' correlation metric, 15 iterations
    "probe.transfer.classifier.preconditioned": False,
}
# Values that came to mean something else, with their revision, hashed beside them.
REVISIONS = {
    # issue 14: the published script's strided networks; the standard VGGs became vgg11_bn, ...
    ("arch.name", "vgg11"): 2, ("arch.name", "vgg13"): 2, ("arch.name", "vgg16"): 2,
    # issue 16: PreciseBN's statistics from its images in one batch (exact, and shared with their extraction),
    # no longer averaged over batches of probe.batch_size
    ("probe.bn_mode", "precise_eval"): 2,
}


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value.name if isinstance(value, Enum) else value


def _changed_settings(node: DictConfig, prefix: str) -> dict[str, Any]:
    """{dotted key: value} of the node's leaves that differ from its schema's defaults (all of them
    where the schema has no default); `_target_` and `name` always, since they name what is built."""
    node_type = OmegaConf.get_type(node)
    defaults = OmegaConf.structured(node_type) if node_type not in (None, dict) else OmegaConf.create()
    changed: dict[str, Any] = {}
    for key in node:
        dotted = f"{prefix}{key}"
        if any(dotted == skipped or dotted.startswith(f"{skipped}.") for skipped in NON_RESULT_KEYS):
            continue
        if isinstance(node[key], DictConfig):
            changed.update(_changed_settings(node[key], f"{dotted}."))
            continue
        value = _plain(node[key])
        has_default = key in defaults and not OmegaConf.is_missing(defaults, key)
        baseline = BEHAVIOUR_BEFORE_THE_KEY.get(dotted, _plain(defaults[key]) if has_default else None)
        if key in ("_target_", "name") or not has_default or value != baseline:
            changed[dotted] = value
        if isinstance(value, str) and (dotted, value) in REVISIONS:
            changed[f"{dotted}@revision"] = REVISIONS[(dotted, value)]
    return changed


def result_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings that make this run's results differ from the defaults' run."""
    settings = _changed_settings(cfg, "")
    enabled = set(cfg.probe.enabled)
    for name, node in cfg.probe.items():
        if isinstance(node, DictConfig) and name not in enabled:
            settings = {key: value for key, value in settings.items() if not key.startswith(f"probe.{name}.")}
    if cfg.probe.reconstruction.solver != ReconstructionSolver.closed_form:  # the penalty of a decoder not fitted
        settings.pop("probe.reconstruction.ridge", None)
    for node in ("linear", "transfer.classifier"):  # how L-BFGS is solved, for a classifier trained by SGD
        if OmegaConf.select(cfg.probe, f"{node}.solver") != ClassifierSolver.lbfgs:
            settings.pop(f"probe.{node}.preconditioned", None)
    if cfg.probe.bn_mode != BatchNormMode.precise_eval:
        settings.pop("probe.calibration_size", None)
    for key, fingerprint in FOLDER_KEYS.items():
        if key in settings:
            settings[key] = fingerprint(settings[key])
    return settings


def config_hash(cfg: DictConfig) -> str:
    """8 hex digits over every setting that can change results."""
    return hashlib.sha256(json.dumps(result_settings(cfg), sort_keys=True).encode()).hexdigest()[:8]


def optimizer_name(cfg: DictConfig) -> str:
    """`torch.optim.SGD` -> `sgd`: the name used in run ids and in the metrics table."""
    return str(cfg.optimizer._target_).rsplit(".", 1)[-1].lower()


def run_id(cfg: DictConfig) -> str:
    """Readable and stable, e.g. `fashion_mnist-vgg8-sgd-s0-1a2b3c4d`."""
    return f"{cfg.dataset.name}-{cfg.arch.name}-{optimizer_name(cfg)}-s{cfg.seed}-{config_hash(cfg)}"

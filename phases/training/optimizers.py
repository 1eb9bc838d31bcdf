"""The optimizer of a run, built from its closed schema: never `hydra.utils.instantiate`.

instantiate would call whatever a `_target_` names, in any nested node too, so an override or a
sweep file could run code (`+optimizer.x={_target_:torch.load,...}` unpickles a file). Here the class
comes from this table, keyed by the node's schema, and only the schema's own fields (numbers, checked
at compose time) become its keyword arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from phases.config.schema import AdamConfig, SGDConfig
from phases.config.validation import ConfigError, check_known_keys, check_node

OPTIMIZERS: dict[type, type[torch.optim.Optimizer]] = {SGDConfig: torch.optim.SGD, AdamConfig: torch.optim.Adam}


def build_optimizer(optimizer_cfg: DictConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    schema = OmegaConf.get_type(optimizer_cfg)
    if schema not in OPTIMIZERS:
        known = ", ".join(f"{option.__name__} ({option._target_})" for option in OPTIMIZERS)
        raise ConfigError("optimizer", schema.__name__ if schema else None, f"an optimizer option of {known}")
    check_known_keys(optimizer_cfg, "optimizer")  # what a caller hands in unvalidated is checked all the same
    check_node(optimizer_cfg, "optimizer")
    keywords = {field.name: optimizer_cfg[field.name] for field in dataclasses.fields(schema)
                if field.name != "_target_"}
    return OPTIMIZERS[schema](parameters, **keywords)

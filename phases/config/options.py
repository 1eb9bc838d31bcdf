"""Where the YAML configs live, and one option file read on its schema without composing a run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from phases.config.schema import SCHEMAS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"  # the package is used from a checkout


def schema_of(option: DictConfig) -> type:
    """The schema an option file extends: the `/<name>@_here_` entry of its defaults list."""
    for entry in option.get("defaults", []):
        name = str(entry).removeprefix("/").split("@")[0]
        if name in SCHEMAS:
            return SCHEMAS[name]
    raise ValueError(f"the option's defaults list {list(option.get('defaults', []))} names no schema")


def load_option(group: str, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml on its schema (usable inside a running Hydra app, unlike compose)."""
    option = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    schema = schema_of(option)
    option.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(schema), option)


def dataset_option(name: str) -> DictConfig:
    return load_option("dataset", name)

"""Where the YAML configs live, and one option file read on its schema without composing a run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from phases.config.schema import SCHEMAS


def config_dir() -> Path:
    """The YAML configs: `phases/conf/`, in a checkout a link to the top-level `conf/`, which a wheel
    ships as the folder itself (pyproject.toml's package-data); else a checkout's `conf/`, for a copy
    of the tree whose link was lost (an archive tool that drops links)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONFIG_DIR = config_dir()


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

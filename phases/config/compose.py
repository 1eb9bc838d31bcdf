"""Registration with Hydra and one way to compose a run's config outside `python -m phases.run`.

The front doors call `register_configs()` before Hydra composes anything; nothing registers at import.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from phases.config import launcher
from phases.config.options import CONFIG_DIR
from phases.config.schema import SCHEMAS
from phases.config.validation import check_known_keys


def register_configs() -> None:
    """Store the schemas the YAML files extend, and the launcher's (idempotent)."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=name, node=schema, provider="phases")
    launcher.register()


def compose(overrides: Sequence[str] = (), hydra_config: bool = False) -> DictConfig:
    """The run config `python -m phases.run <overrides>` would get (with `hydra` too, if asked); a key
    that is no setting (`+schedule.max_step=4`) fails here as it does in a run (ConfigError)."""
    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside `python -m phases.run` (a sweep's callback): its
        # search path is this one, and Hydra refuses to initialise a second time in one process
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)
    if not hydra_config:  # Hydra's own node is no setting of the run's schema
        check_known_keys(cfg)
    return cfg

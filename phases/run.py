"""Train one classifier and measure its learning phases; the Hydra entry point.

    python -m phases.run                                   # Fashion-MNIST, VGG-8, 2048 steps on CPU
    python -m phases.run schedule.max_steps=256 seed=1     # overrides
    python -m phases.run -m seed=0,1,2                     # a sweep: one run per seed
    python -m phases.run --cfg job                         # print the composed config, run nothing

Results go to <paths.outputs>/runs/<run_id>/ (metrics.parquet, config.yaml, run.json). This module
is the error policy; phases.training.execute does the run.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from phases.config.compose import register_configs
from phases.config.options import CONFIG_DIR
from phases.config.validation import ConfigError
from phases.training.data import DataFormatError, DataNotFoundError
from phases.training.execute import execute, record_failure
from phases.training.run_log import run_logging
from phases.training.train import Interrupted

register_configs()  # before Hydra composes: conf/*.yaml extend the schemas it stores
LOGGER = logging.getLogger("phases.run")  # not __name__, which is __main__ here: a child of the run's logger


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # In a sweep one job's failure must not stop the others: it is recorded in its run.json and the
    # sweep goes on (phases.sweep reports it at the end); a single run exits non-zero instead (2: the
    # input, 3: interrupted, 1: anything else).
    # Each message says what became of the failure in run.json (record_failure), as it happened.
    sweeping = in_sweep()
    with run_logging():  # the run.log that execute opens stays open for the messages below
        try:
            execute(cfg, job_number=HydraConfig.get().job.num if sweeping else 0)
        except (ConfigError, DataNotFoundError, DataFormatError) as error:
            # Input errors are the user's to fix: the message says what and how; a traceback would bury it.
            outcome = record_failure(cfg, error, write=sweeping)
            # In a sweep the job's run.log keeps the traceback (exc_info), as its run.json does.
            LOGGER.error(f"error: {error}" + (f" ({outcome})" if outcome else ""), exc_info=error if sweeping else None)
            if not sweeping:
                sys.exit(2)
        except (Interrupted, KeyboardInterrupt) as error:
            # A signal stops the whole process, sweep included; the last checkpoint stands either way.
            LOGGER.warning(f"interrupted: {str(error) or 'Ctrl-C'}; run the same command again to resume")
            sys.exit(3)
        except Exception as error:
            # The traceback goes to run.log in every case (exc_info); the terminal shows it only for a
            # single run's unexpected error, when Hydra prints the error re-raised here.
            outcome = record_failure(cfg, error, write=sweeping)
            message = f"error: run failed ({type(error).__name__}: {error})" + (f"; {outcome}" if outcome else "")
            if sweeping:
                LOGGER.error(message, exc_info=error)
                return
            if isinstance(error, OSError):  # a full disk, a lost permission: the machine's state, not a bug to trace
                LOGGER.error(message, exc_info=error)
                sys.exit(1)
            LOGGER.error(f"{message}; its traceback:", exc_info=error)
            raise


if __name__ == "__main__":
    main()

"""The ``tfmq-exp`` command: a Hydra app whose user errors end in one line, not a traceback.

Before Hydra runs, the command-line overrides are composed once (every combination for ``--multirun``) with
Hydra's compose API and validated against the schemas, so an unknown option, a typo'd key or an
out-of-range value fails at once with exit code 2 and one message that names the valid choices.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from tfmq_exp.config.schema import register_configs
from tfmq_exp.config.validate import explain, to_config
from tfmq_exp.errors import UserError
from tfmq_exp.paths import config_dir
from tfmq_exp.quiet import quiet_libraries

log = logging.getLogger(__name__)
EXIT_USAGE = 2
_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--cfg", "-c", "--shell-completion"}


def fail(message: str) -> None:
    """Print one error line and exit with the usage error code."""
    print(f"tfmq-exp: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _override_combinations(arguments: list[str], multirun: bool) -> list[list[str]]:
    """Every override list that Hydra will compose (one per job for ``--multirun``)."""
    overrides = [a for a in arguments if not a.startswith("hydra.") and not a.startswith("hydra/")]
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [combo for batch in batches for combo in batch]


def validate_arguments(arguments: list[str]) -> str | None:
    """Compose and validate the configs the command line asks for; return an error line or None."""
    flags = {a.split("=")[0] for a in arguments if a.startswith("-")}
    if flags & _HYDRA_INFO_FLAGS:
        return None
    multirun = bool(flags & {"-m", "--multirun"})
    overrides = [a for a in arguments if not a.startswith("-")]
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            for combination in _override_combinations(overrides, multirun):
                to_config(compose(config_name="config", overrides=combination))
    except Exception as error:  # every composition failure becomes one line
        return explain(error)
    finally:
        GlobalHydra.instance().clear()
    return None


def run_task(cfg: DictConfig) -> float | None:
    """Dispatch the composed config to its task; returns the metric a sweeper would optimise (FID)."""
    quiet_libraries()  # again: launcher workers (joblib, SLURM) are fresh processes
    try:
        config = to_config(cfg)
    except ValueError as error:
        fail(explain(error))
    os.environ.setdefault("OMP_NUM_THREADS", str(config.runtime.threads))
    import torch

    torch.set_num_threads(config.runtime.threads)
    try:
        if config.task == "train_digits":
            from tfmq_exp.models.tasks import run_train_digits

            run_train_digits(config)
            return None
        if config.task == "train_extractor":
            from tfmq_exp.models.tasks import run_train_extractor

            run_train_extractor(config)
            return None
        from tfmq_exp.pipeline import run_pipeline

        summary = run_pipeline(cfg, config)
        return summary.get("metrics", {}).get("fid")
    except UserError as error:
        if _in_multirun():
            log.error("run failed: %s", error)  # recorded as failed in its summary.json; the sweep goes on
            return None
        fail(str(error))
    except Exception:
        if not _in_multirun():
            raise
        log.exception("run failed; recorded as failed in its summary.json, the sweep goes on")
    return None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def main() -> None:
    """Console entry point of ``tfmq-exp`` (also ``python -m tfmq_exp``)."""
    quiet_libraries()
    error = validate_arguments(sys.argv[1:])
    if error is not None:
        fail(error)
    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(run_task)
    app()

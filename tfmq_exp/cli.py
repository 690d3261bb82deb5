"""The ``tfmq-exp`` command: a Hydra app whose user errors end in one line, not a traceback.

Before Hydra runs, the command-line overrides are composed once (every combination for ``--multirun``) with
Hydra's compose API and validated against the schemas, so an unknown option, a typo'd key or an
out-of-range value fails at once with exit code 2 and one message that names the valid choices. Only
configuration errors get this treatment: an internal error keeps its traceback (exit 1). A failed job of a
multirun is recorded as ``failed`` in its ``summary.json`` and the sweep goes on; at the end the sweep lists
the failed jobs and exits 1 (:mod:`tfmq_exp.tracking.sweep_exit`). A single run ends with its result table.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tfmq_exp.config.schema import register_configs
from tfmq_exp.config.validate import explain, to_config
from tfmq_exp.errors import UserError
from tfmq_exp.paths import config_dir
from tfmq_exp.quiet import quiet_libraries

log = logging.getLogger(__name__)
EXIT_USAGE = 2
# What a bad command line or config raises while composing and validating (ValueError: the schemas'
# __post_init__ range checks). Anything else is a bug and keeps its traceback.
CONFIG_ERRORS = (OmegaConfBaseException, ConfigCompositionException, MissingConfigException, OverrideParseException,
                 ValueError)
_CONFIG_ROOT_CAUSES = (*CONFIG_ERRORS, KeyError)  # KeyError: oc.env's "Environment variable 'X' not found"
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


def is_config_error(error: BaseException) -> bool:
    """Whether ``error`` says the configuration is wrong (and not that the code is, e.g. a bug in a resolver)."""
    if isinstance(error, OverrideParseException):  # caused by the parser's own exception types
        return True
    root = error  # OmegaConf chains a resolver's own exception as the context, not the cause
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    return isinstance(error, CONFIG_ERRORS) and isinstance(root, _CONFIG_ROOT_CAUSES)


def validate_arguments(arguments: list[str]) -> str | None:
    """Compose and validate the configs the command line asks for; return an error line or None.

    Raises:
        Exception: anything that is not a configuration error (a bug), with its traceback.
    """
    flags = {a.split("=")[0] for a in arguments if a.startswith("-")}
    if flags & _HYDRA_INFO_FLAGS:
        return None
    multirun = bool(flags & {"-m", "--multirun"})
    overrides = [a for a in arguments if not a.startswith("-")]
    try:
        conf = config_dir()
    except FileNotFoundError as error:
        return str(error)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            for combination in _override_combinations(overrides, multirun):
                to_config(compose(config_name="config", overrides=combination))
    except CONFIG_ERRORS as error:
        if not is_config_error(error):
            raise
        return explain(error)
    finally:
        GlobalHydra.instance().clear()
    return None


def run_task(cfg: DictConfig) -> float | None:
    """Dispatch the composed config to its task; returns the metric a sweeper would optimise (FID)."""
    quiet_libraries()  # again: launcher workers (joblib, SLURM) are fresh processes
    try:
        config = to_config(cfg)
    except ValueError as error:  # e.g. a sweep value from an experiment file, which pre-validation does not see
        if _in_multirun():
            _record_failure(explain(error))
            return None
        fail(explain(error))
    os.environ.setdefault("OMP_NUM_THREADS", str(config.runtime.threads))
    import torch

    torch.set_num_threads(config.runtime.threads)
    try:
        from tfmq_exp.models.tasks import TASKS

        return TASKS[config.task](cfg, config)
    except UserError as error:
        if _in_multirun():
            log.error("run failed: %s", error)  # recorded as failed in its summary.json; the sweep goes on
            _record_failure(f"{type(error).__name__}: {error}")
            return None
        fail(str(error))
    except Exception as error:
        if not _in_multirun():
            raise
        log.exception("run failed; recorded as failed in its summary.json, the sweep goes on")
        _record_failure(f"{type(error).__name__}: {error}")
    return None


def _record_failure(error: str) -> None:
    """Make this multirun job's ``summary.json`` say ``failed`` (the end of the sweep reads it): keep the
    pipeline's own record of this error, else (a failure before the pipeline, in a training task, or a stale
    summary of an earlier sweep) write a short one."""
    from hydra.core.hydra_config import HydraConfig

    from tfmq_exp.tracking.summary import SUMMARY_FILE, read_summary, write_summary

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        existing = read_summary(run_dir)
    except (OSError, ValueError):
        existing = {}
    if existing.get("status") == "failed" and existing.get("error") == error:
        (run_dir / SUMMARY_FILE).touch()  # dated from this sweep, whoever wrote it
        return
    write_summary(run_dir, {"status": "failed", "error": error, "run_dir": str(run_dir)})


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

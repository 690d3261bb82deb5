"""The tasks ``tfmq-exp task=...`` runs, one registry: the pipeline (``run``, the default) and the two that build
the embedded benchmark (``train_digits``, ``train_extractor``). Each takes the composed and the validated config and
returns the number a sweeper would optimise (FID), or ``None``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from tfmq_exp.config.schema import TASKS as SCHEMA_TASKS
from tfmq_exp.config.schema import Config
from tfmq_exp.paths import WEIGHTS_DIR

log = logging.getLogger(__name__)


def run_train_digits(config: Config) -> Path:
    """Train the embedded DDPM named by ``model.embedded`` and write it to ``train.out_dir`` (default: ship it)."""
    from tfmq_exp.models.train_digits import train_digits

    if config.model.embedded is None:
        raise ValueError(f"model={config.model.name} is not an embedded model; use model=digits or model=digits_ss")
    out_dir = Path(config.train.out_dir) if config.train.out_dir else WEIGHTS_DIR / config.model.embedded
    train_digits(config.model, config.train, config.seed, out_dir, progress=config.runtime.progress)
    log.info("wrote %s", out_dir)
    return out_dir


def run_train_extractor(config: Config) -> Path:
    """Train the digits feature extractor and write it to ``train.out_dir`` (default: ship it)."""
    from tfmq_exp.eval.classifier import train_and_save

    out_dir = Path(config.train.out_dir) if config.train.out_dir else WEIGHTS_DIR / "digits_classifier"
    train_and_save(out_dir, seed=config.seed, command=f"tfmq-exp task=train_extractor seed={config.seed}")
    log.info("wrote %s", out_dir)
    return out_dir


def _run(cfg: DictConfig, config: Config) -> Optional[float]:
    from tfmq_exp.pipeline import run_pipeline

    summary = run_pipeline(cfg, config)
    if not _in_multirun():
        from tfmq_exp.tracking.result_table import format_result_table

        print(format_result_table(summary), flush=True)
    return summary.get("metrics", {}).get("fid")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def _training(task: Callable[[Config], Any]) -> Callable[[DictConfig, Config], None]:
    def run(_cfg: DictConfig, config: Config) -> None:
        task(config)

    return run


TASKS: dict[str, Callable[[DictConfig, Config], Optional[float]]] = {  # names: tfmq_exp.config.schema.TASKS
    "run": _run,
    "train_digits": _training(run_train_digits),
    "train_extractor": _training(run_train_extractor),
}
assert set(TASKS) == set(SCHEMA_TASKS), "schema.TASKS and TASKS must list the same tasks"

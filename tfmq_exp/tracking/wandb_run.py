"""W&B logging conventions: one run per job, grouped by sweep, tagged by method / bits / model / seed.

Offline by default (``logger.mode=offline``; files under ``<run_dir>/wandb/``, uploadable later with
``wandb sync <run_dir>/wandb/offline-run-*``); ``logger.mode=online`` after ``wandb login``; ``logger=none`` or
``logger.mode=disabled`` logs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfmq_exp.config.schema import Config


class TrackingRun:
    """A thin wrapper around a W&B run that is a no-op when tracking is off."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(values)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def image(self, key: str, path: Path, caption: str = "") -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def run_tags(config: Config) -> list[str]:
    """Tags that let the W&B UI filter and group runs of an ablation."""
    return [
        f"method:{config.method.name}",
        f"quant:{config.quant.name}",
        f"w{config.quant.w_bits}",
        f"a{config.quant.a_bits if config.quant.a_bits is not None else 32}",
        f"model:{config.model.name}",
        f"seed:{config.seed}",
        *config.logger.tags,
    ]


def start_run(config: Config, resolved: dict[str, Any], run_dir: Path, group: Optional[str] = None) -> TrackingRun:
    """Start the W&B run of a job (or a no-op run when tracking is off)."""
    logger = config.logger
    if logger.name == "none" or logger.mode == "disabled":
        return TrackingRun(None)
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=logger.project,
        entity=logger.entity,
        mode=logger.mode,
        dir=str(run_dir),
        group=logger.group or group,
        job_type=logger.job_type or config.method.name,
        name=f"{config.model.name}-{config.method.name}-{config.quant.name}-s{config.seed}",
        tags=run_tags(config),
        config=resolved,
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    return TrackingRun(run)


def to_python(value: Any) -> Any:
    """Convert numpy / torch scalars into plain Python numbers for logging."""
    if isinstance(value, (np.generic,)):
        return value.item()
    return value

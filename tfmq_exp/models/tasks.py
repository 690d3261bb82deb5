"""Tasks that build the embedded benchmark: ``task=train_digits`` and ``task=train_extractor``."""

from __future__ import annotations

import logging
from pathlib import Path

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

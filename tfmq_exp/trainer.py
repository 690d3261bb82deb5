"""The project's one Lightning ``Trainer`` factory: no logger, no checkpoints, no model summary, one device.

Used by the predict loops (sampling, calibration capture, activation calibration) and by every fit (block
reconstruction, the digits DDPM, the digits feature extractor); each passes what differs (steps, determinism).
"""

from __future__ import annotations

from typing import Any

import lightning as L


def make_trainer(device: str = "cpu", progress: bool = True, **settings: Any) -> L.Trainer:
    """A Trainer on ``device`` (``cpu``, ``cuda`` or ``auto``) with the project's defaults plus ``settings``."""
    return L.Trainer(
        accelerator="auto" if device == "auto" else device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **settings,
    )

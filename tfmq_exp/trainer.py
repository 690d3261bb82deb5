"""The project's one Lightning ``Trainer`` factory: no logger, no checkpoints, no model summary.

Used by the predict loops (sampling, calibration capture, activation calibration) and by every fit (block
reconstruction, the digits DDPM, the digits feature extractor); each passes what differs (steps, determinism).
Only sampling runs on several devices (:func:`sampling_strategy`); every fit runs on one.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def sampling_strategy(device: str, devices: int) -> str:
    """The Lightning strategy of a predict loop on ``devices`` devices.

    One device: ``auto``. Several: DDP with processes that inherit the parent's models by ``fork`` on the CPU
    (nothing is pickled: the quantized UNet carries hooks and closures), and ``spawn`` on CUDA, where a forked
    child cannot use a CUDA context its parent created.
    """
    if devices == 1:
        return "auto"
    return "ddp_fork" if device == "cpu" else "ddp_spawn"


def make_trainer(device: str = "cpu", progress: bool = True, devices: int = 1, **settings: Any) -> L.Trainer:
    """A Trainer on ``devices`` x ``device`` (``cpu``, ``cuda`` or ``auto``) with the project's defaults plus
    ``settings``."""
    settings.setdefault("strategy", sampling_strategy(device, devices))
    return L.Trainer(
        accelerator="auto" if device == "auto" else device,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **settings,
    )

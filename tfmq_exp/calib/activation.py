"""Activation range calibration over every calibration step, optionally with per-timestep ranges (FSC).

The quantized UNet (weights quantized) runs over all ``S x N`` calibration inputs (DESIGN 1.2: activation
calibration uses all steps) in a Lightning predict loop, the same engine that samples, while every activation
quantizer observes (:func:`~tfmq_exp.quant.observing_activations`). Each batch holds a single timestep, so the
UNet's timestep pre-hook can publish it to the shared :class:`~tfmq_exp.quant.TimestepContext`.

FSC (DESIGN 1.4): the quantizers inside ``per_timestep_modules`` first get per-timestep parameters for the
finite set ``data.timesteps``; each then keeps the plain min / max of the batches seen at ``t`` and ends with
its own ``(s_t, z_t)`` for every ``t``. The other quantizers keep one per-tensor range (EMA over batches,
whose order is shuffled with a fixed seed so the EMA does not favour the last sampling steps).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tfmq_exp.conditioning import nest
from tfmq_exp.calib.trajectories import CalibrationData
from tfmq_exp.quant.switches import quant_state
from tfmq_exp.calib.quiet import quiet_lightning
from tfmq_exp.calib.steps import select_steps
from tfmq_exp.config.schema import Config
from tfmq_exp.trainer import make_trainer
from tfmq_exp.quant import (
    TimestepContext,
    enable_per_timestep,
    iter_act_quantizers,
    observing_activations,
)


class CalibrationBatches(Dataset):
    """The calibration inputs as ready-made single-timestep batches (use with ``DataLoader(batch_size=None)``).

    Args:
        data: the calibration data.
        batch_size: trajectories per batch (a step's last batch may be smaller).
        seed: seed of the batch order (``None``: sampling order).
    """

    def __init__(self, data: CalibrationData, batch_size: int, seed: Optional[int] = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.data = data
        self.batches = [
            (step, start, min(start + batch_size, data.num_samples))
            for step in range(data.num_steps)
            for start in range(0, data.num_samples, batch_size)
        ]
        if seed is not None:
            order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(seed))
            self.batches = [self.batches[i] for i in order.tolist()]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        step, start, end = self.batches[index]
        return {
            "sample": self.data.x[step, start:end],  # [B, C, H, W]
            "timestep": torch.full((end - start,), self.data.timesteps[step], dtype=torch.long),  # [B], one value
            "conditioning": {name: value[start:end] for name, value in self.data.conditioning.items()},
        }


class ActivationObserver(L.LightningModule):
    """Predict loop body: one UNet forward per batch; the observing quantizers do the work.

    Args:
        unet: the quantized UNet (its quantizers' switches are set by the caller).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> None:
        self.unet(batch["sample"], batch["timestep"], **nest(batch["conditioning"]), return_dict=False)
        return None


def calibrate_activations(
    unet_q: nn.Module,
    data: CalibrationData,
    context: TimestepContext,
    per_timestep_modules: Optional[Sequence[nn.Module]],
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
    seed: int = 0,
    fsc_range: str = "minmax",
    lenient: Sequence[nn.Module] = (),
) -> None:
    """Calibrate every activation quantizer of ``unet_q`` on all calibration steps (FSC where requested).

    Args:
        unet_q: the quantized UNet; its weights are quantized during the pass; its switches are restored after.
        data: the calibration data (all ``S`` steps and ``N`` trajectories are used).
        context: the timestep context the per-timestep quantizers read; it is attached to the UNet for the pass
            if it was not already (and then detached after).
        per_timestep_modules: modules whose quantizers get per-timestep parameters for ``data.timesteps``
            (see :func:`fsc_modules`); ``None`` or empty for none.
        batch_size: trajectories per forward.
        device: ``cpu``, ``cuda`` or ``auto`` (Lightning accelerator).
        progress: show the predict progress bar.
        seed: seed of the batch order.
        fsc_range: range statistic of the per-timestep quantizers, ``minmax`` (the paper's) or ``mse``.
        lenient: modules whose quantizers keep their earlier parameters where this pass sees too little of them
            (a cache's fallback TIB, calibrated on every timestep by ``calibrate_tib_activations``).

    Raises:
        RuntimeError: a quantizer (or a timestep of a per-timestep quantizer) observed nothing.
    """
    if all(quantizer.is_identity for _, quantizer in iter_act_quantizers(unet_q)):
        return  # full-precision activations (e.g. W4A32): nothing to calibrate
    if per_timestep_modules:
        enable_per_timestep(list(per_timestep_modules), data.timesteps, context, fsc_range)
    loader = DataLoader(CalibrationBatches(data, batch_size, seed), batch_size=None, shuffle=False)
    training, place = unet_q.training, next(unet_q.parameters()).device
    unet_q.eval()
    try:
        with quiet_lightning(), context.attached_to(unet_q), quant_state(unet_q, weight=True, act=False), \
                observing_activations(unet_q, lenient=lenient):
            make_trainer(device, progress).predict(ActivationObserver(unet_q), loader, return_predictions=False)
    finally:
        unet_q.to(place).train(training)  # Lightning's teardown leaves the module on the CPU


def activation_calibration_data(data: CalibrationData, config: Config) -> CalibrationData:
    """The steps activation ranges are computed on (``method.act_calib_steps``).

    ``all``: every sampling step (DESIGN 1.2; TFMQ-DM calibrates on all of them). ``recon_set``: the steps
    ``method.calib_steps`` selects for reconstruction, with every recorded trajectory at each, as Q-Diffusion
    initialises activations on its calibration steps (``scripts/sample_diffusion_ldm.py:537, 548`` at 715783d:
    there the first 64 samples of its set) and PTQ4DM calibrates its quantizers on its NDTC steps
    (``quant_image_sample.py:264-273`` at 180a4d1). The steps are taken once each (PTQ4DM's draw counts, which
    weight its reconstruction set, do not weight the ranges).
    """
    if config.method.act_calib_steps == "all":
        return data
    steps = select_steps(config.method.calib_steps, data.num_steps, config.calib)
    return CalibrationData(data.x[steps], [data.timesteps[i] for i in steps], dict(data.conditioning))

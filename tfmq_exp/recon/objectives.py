"""Reconstruction objectives and the rounding regulariser, built before the optimisation starts.

An objective maps ``(unit, batch)`` to a per-sample loss ``[B]``; the optimisation minimises its batch mean
plus the regulariser. Batches are dicts ``{"inputs": {key: Tensor[B, ...]}, "target": Tensor | dict}``.

- :class:`BlockOutputObjective` (BRECQ / Q-Diffusion, DESIGN 1.3): the published ``lp_loss``,
  ``|out_q - out_fp|^p`` summed over the channel dimension and averaged over the spatial positions (tokens)
  of each sample; its batch mean is ``lp_loss(..., reduction='none')`` exactly.
- TIAR's objective lives in :mod:`tfmq_exp.recon.tiar`.
- :class:`RoundingRegulariser`: ``lambda * sum(1 - |2 h(a) - 1|^beta)`` on the unit's AdaRound variables, with
  the warmup / beta schedule of :class:`~tfmq_exp.quant.RoundingSchedule`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from tfmq_exp.quant import RoundingSchedule, TimestepContext, WeightQuantizer
from tfmq_exp.recon.capture_buffer import CaptureBuffer
from tfmq_exp.recon.unit_io import CallTemplate, first_tensor

Batch = dict[str, Any]
Rows = Tensor | CaptureBuffer  # ``[M, ...]`` rows held in memory, or spilled to a file


class Objective(Protocol):
    """A reconstruction loss: per-sample values ``[B]`` for a batch, and their mean (what is minimised)."""

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor: ...

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor: ...


def lp_per_sample(output: Tensor, target: Tensor, p: float = 2.0) -> Tensor:
    """Per-sample ``lp_loss``: ``|output - target|^p`` summed over dim 1 (channels), averaged over the rest.

    The batch mean of this is the published block loss, ``(pred - tgt).abs().pow(p).sum(1).mean()``
    (BRECQ ``quant/quant_layer.py:23-30`` at e455d62; Q-Diffusion ``qdiff/quant_layer.py:26-33`` at 715783d;
    TFMQ-DM ``quant/quant_layer.py:146-156`` at d551eac): averaging over batch *and* spatial positions keeps the
    balance with the rounding regulariser (``lambda = 0.01``) independent of the resolution.

    Args:
        output: ``[B, C, ...]`` (``[B, C]`` for vectors).
        target: same shape.
        p: the exponent (2.0 for weight reconstruction, 2.4 for the activation pass).

    Returns:
        ``[B]``.
    """
    error = (output.float() - target.float()).abs().pow(p).sum(dim=1)  # [B, ...] channels summed
    return error.flatten(1).mean(dim=1) if error.dim() > 1 else error


class BlockOutputObjective:
    """BRECQ's block output loss ``lp_loss(out_q, out_fp, p)`` per sample (see :func:`lp_per_sample`).

    Args:
        template: how to call the unit from the batch's captured input tensors.
        p: the loss exponent.
        context: when given, the unit is called within ``context.for_samples(batch["timesteps"])``, so modules
            that depend on ``t`` (a temporal-feature cache) see each sample's own timestep.
    """

    def __init__(self, template: CallTemplate, p: float = 2.0, context: Optional[TimestepContext] = None) -> None:
        self.template = template
        self.p = p
        self.context = context

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor:
        if self.context is not None and "timesteps" in batch:
            with self.context.for_samples(batch["timesteps"]):
                output = first_tensor(self.template(unit, batch["inputs"]))  # [B, C, ...]
        else:
            output = first_tensor(self.template(unit, batch["inputs"]))
        return lp_per_sample(output, batch["target"], self.p)

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor:
        """The batch mean of :meth:`per_sample`."""
        return self.per_sample(unit, batch).mean()


class RoundingRegulariser:
    """The AdaRound regulariser of the unit's (not frozen) weight quantizers at a given step.

    Args:
        schedule: warmup and ``beta`` annealing over the unit's iterations.
        quantizers: the weight quantizers being optimised.
        reg_lambda: ``lambda``.
    """

    def __init__(self, schedule: RoundingSchedule, quantizers: Sequence[WeightQuantizer], reg_lambda: float) -> None:
        self.schedule = schedule
        self.quantizers = list(quantizers)
        self.reg_lambda = reg_lambda

    def __call__(self, step: int) -> Tensor:
        return self.schedule.loss(step, self.quantizers, self.reg_lambda)


class UnitDataset(Dataset):
    """Captured inputs and targets of one unit, indexed by a list of sample indices (a whole batch at once).

    Use with ``DataLoader(dataset, batch_size=None, sampler=<yields index lists>)``.

    Args:
        inputs: key -> ``[M, ...]`` rows the unit is called with (tensors, or spilled buffers read per batch).
        target: ``[M, ...]``, or name -> ``[M, ...]`` for several outputs.
        timesteps: ``[M]`` the timestep of each sample (batches then carry ``"timesteps"``), or ``None``.
    """

    def __init__(
        self, inputs: dict[str, Rows], target: Rows | dict[str, Rows], timesteps: Optional[Tensor] = None
    ) -> None:
        sizes = {v.shape[0] for v in inputs.values()}
        sizes |= {v.shape[0] for v in (target.values() if isinstance(target, dict) else [target])}
        if len(sizes) != 1:
            raise ValueError(f"inputs and targets disagree on the number of samples: {sorted(sizes)}")
        self.inputs = inputs
        self.target = target
        self.size = sizes.pop()
        if timesteps is not None and timesteps.shape[0] != self.size:
            raise ValueError(f"{timesteps.shape[0]} timesteps for {self.size} samples")
        self.timesteps = timesteps

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        target = (
            {name: value[index] for name, value in self.target.items()}
            if isinstance(self.target, dict)
            else self.target[index]
        )
        batch: Batch = {"inputs": {key: value[index] for key, value in self.inputs.items()}, "target": target}
        if self.timesteps is not None:
            batch["timesteps"] = self.timesteps[index]
        return batch


def move_batch(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (nested dicts)."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: move_batch(value, device) for key, value in batch.items()}
    return batch


@torch.no_grad()
def evaluate_objective(unit: nn.Module, objective: Objective, dataset: UnitDataset, batch_size: int) -> float:
    """The objective's mean per-sample loss over the whole dataset (no regulariser, no gradients).

    Args:
        unit: the unit, in its current rounding mode.
        objective: the reconstruction objective.
        dataset: all captured samples.
        batch_size: samples per evaluation batch.
    """
    device = next(unit.parameters()).device
    total = 0.0
    for start in range(0, len(dataset), batch_size):
        batch = move_batch(dataset[list(range(start, min(start + batch_size, len(dataset))))], device)
        total += float(objective.per_sample(unit, batch).sum())
    return total / len(dataset)

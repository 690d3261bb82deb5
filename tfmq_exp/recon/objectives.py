"""Reconstruction objectives and the rounding regulariser, built before the optimisation starts.

An objective maps ``(unit, batch)`` to a per-sample loss ``[B]``; the optimisation minimises its batch mean
plus the regulariser. Batches are dicts ``{"inputs": {key: Tensor[B, ...]}, "target": Tensor | dict}``.

- :class:`BlockOutputObjective` (BRECQ / Q-Diffusion, DESIGN 1.3): ``sum (out_q - out_fp)^2`` per sample.
- :class:`TemporalFeatureObjective` (TIAR, DESIGN 1.4): ``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep.
- :class:`RoundingRegulariser`: ``lambda * sum(1 - |2 h(a) - 1|^beta)`` on the unit's AdaRound variables, with
  the warmup / beta schedule of :class:`~tfmq_exp.quant.RoundingSchedule`.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import RoundingSchedule, WeightQuantizer
from tfmq_exp.recon.capture import CallTemplate, first_tensor

Batch = dict[str, Any]


class Objective(Protocol):
    """A reconstruction loss: per-sample values ``[B]`` for a batch, and their mean (what is minimised)."""

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor: ...

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor: ...


class BlockOutputObjective:
    """``sum over the output's elements of (out_q - out_fp)^2`` per sample (BRECQ's block output MSE).

    Args:
        template: how to call the unit from the batch's captured input tensors.
    """

    def __init__(self, template: CallTemplate) -> None:
        self.template = template

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor:
        output = first_tensor(self.template(unit, batch["inputs"]))  # [B, ...]
        return (output.float() - batch["target"].float()).pow(2).flatten(1).sum(dim=1)

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor:
        """The batch mean of :meth:`per_sample`."""
        return self.per_sample(unit, batch).mean()


class TemporalFeatureUnit(nn.Module):
    """The TIB as one unit: timesteps ``t [B]`` -> temporal features ``{i: e_i(t) [B, C_i]}`` (DESIGN 1.4).

    Runs the UNet's own time path (``time_proj``, ``time_embedding``, each ResNet's nonlinearity and
    ``time_emb_proj``) through its adapter, so quantized replacements of those layers are used.

    Args:
        unet: the UNet whose TIB is evaluated (registered as a submodule; nothing is copied).

    Raises:
        NotImplementedError: the UNet's temporal features depend on more than ``t`` (class labels, SD-XL
            added conditioning); TIAR over ``t`` alone does not describe them.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.adapter = get_adapter(unet)
        if not self.adapter.tib().depends_only_on_t:
            raise NotImplementedError(
                f"TIAR needs temporal features that depend on t alone; {type(unet).__name__} mixes in "
                f"{list(self.adapter.tib().conditioning_modules)}"
            )

    def forward(self, timesteps: Tensor) -> dict[str, Tensor]:
        return self.adapter.temporal_features(timesteps)


class TemporalFeatureObjective:
    """``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep ``t`` (TIAR's loss without the regulariser)."""

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor:
        features = unit(batch["inputs"]["timesteps"])
        total = None
        for name, target in batch["target"].items():
            error = (features[name].float() - target.float()).pow(2).sum(dim=1)  # [B]
            total = error if total is None else total + error
        assert total is not None
        return total

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
        inputs: key -> ``[M, ...]`` tensors the unit is called with.
        target: ``[M, ...]``, or name -> ``[M, ...]`` for several outputs.
    """

    def __init__(self, inputs: dict[str, Tensor], target: Tensor | dict[str, Tensor]) -> None:
        sizes = {v.shape[0] for v in inputs.values()}
        sizes |= {v.shape[0] for v in (target.values() if isinstance(target, dict) else [target])}
        if len(sizes) != 1:
            raise ValueError(f"inputs and targets disagree on the number of samples: {sorted(sizes)}")
        self.inputs = inputs
        self.target = target
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        target = (
            {name: value[index] for name, value in self.target.items()}
            if isinstance(self.target, dict)
            else self.target[index]
        )
        return {"inputs": {key: value[index] for key, value in self.inputs.items()}, "target": target}


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

"""TIAR (DESIGN 1.4): the Temporal Information Block reconstructed as one unit against the full-precision temporal
features over the sampler's finite timestep set.

- :class:`TemporalFeatureUnit`: the TIB as a module, ``t [B] -> {i: e_i(t) [B, C_i]}``;
- :class:`TemporalFeatureObjective`: ``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep;
- :func:`tiar_dataset`: the timesteps of the calibration set (with the conditioning they were sampled under,
  where the features depend on it) and the full-precision features at them.

The runner optimises it like any unit (:mod:`tfmq_exp.recon.runner`), before every block; later ResNet units keep
the rounding TIAR learned for their projections.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tfmq_exp.conditioning import nest
from tfmq_exp.conditioning import rows as rows_of
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.recon.objectives import Batch, UnitDataset, lp_per_sample

CONDITION_KEY = "condition:"  # input keys of conditioning rows in a TIAR dataset
TARGET_CHUNK = 256  # pairs per full-precision feature evaluation


class TemporalFeatureUnit(nn.Module):
    """The TIB as one unit: timesteps ``t [B]`` -> temporal features ``{i: e_i(t) [B, C_i]}`` (DESIGN 1.4).

    Runs the UNet's own time path (``time_proj``, ``time_embedding``, each ResNet's nonlinearity and
    ``time_emb_proj``) through its adapter, so quantized replacements of those layers are used.

    Args:
        unet: the UNet whose TIB is evaluated (registered as a submodule; nothing is copied).

    Where the features also depend on conditioning (class labels, SD-XL's pooled text and size), the unit takes
    it too, row by row: TIAR then fits ``e_i(t, c)`` over the calibration set's ``(t, c)`` pairs.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.adapter = get_adapter(unet)

    def forward(self, timesteps: Tensor, conditioning: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        return self.adapter.temporal_features(timesteps, nest(conditioning) if conditioning else None)


class TemporalFeatureObjective:
    """``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep ``t`` (TIAR's loss without the regulariser).

    As TFMQ-DM's ``LossFuncTimeEmbedding`` (``quant/reconstruction_util.py:132-136`` at d551eac): ``lp_loss``
    with ``p = 2`` on each ``[B, C_i]`` feature, summed over the features.
    """

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor:
        inputs = batch["inputs"]
        conditioning = {k[len(CONDITION_KEY):]: v for k, v in inputs.items() if k.startswith(CONDITION_KEY)}
        features = unit(inputs["timesteps"], conditioning or None)
        total = None
        for name, target in batch["target"].items():
            error = lp_per_sample(features[name], target)  # [B]: features are [B, C_i], so sum over C_i
            total = error if total is None else total + error
        assert total is not None
        return total

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor:
        """The batch mean of :meth:`per_sample`."""
        return self.per_sample(unit, batch).mean()


def conditioned_pairs(
    timesteps: Sequence[int], conditioning: dict[str, Tensor], count: int, seed: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """``count`` distinct (timestep, conditioning row) pairs of the calibration set, drawn with ``seed``.

    Every timestep comes first once (pairs ``0 .. S - 1`` cover the finite set), then the rest at random.
    """
    steps = len(timesteps)
    rows = next(iter(conditioning.values())).shape[0]
    order = torch.randperm(steps * rows, generator=torch.Generator().manual_seed(seed))
    first = torch.randint(rows, (steps,), generator=torch.Generator().manual_seed(seed + 1))
    chosen = [s * rows + int(first[s]) for s in range(steps)]
    chosen_set = set(chosen)
    chosen += [int(i) for i in order if int(i) not in chosen_set][: max(count - steps, 0)]
    index = torch.tensor(chosen, dtype=torch.long)
    step_of, row_of = index // rows, index % rows
    t = torch.tensor(list(timesteps), dtype=torch.long)[step_of]
    return t, {name: value[row_of] for name, value in conditioning.items()}


@torch.no_grad()
def tiar_dataset(
    unet_fp: nn.Module,
    timesteps: Sequence[int],
    device: str | torch.device,
    conditioning: dict[str, Tensor] | None = None,
    pairs: int = 1024,
    seed: int = 0,
) -> UnitDataset:
    """The TIAR unit's data and the full-precision ``e_i`` at it (on the CPU).

    Features of ``t`` alone: every calibration timestep once. Conditioned features: ``pairs`` (timestep,
    conditioning row) pairs of the calibration set (:func:`conditioned_pairs`), ``conditioning`` flat.
    """
    steps = torch.tensor(list(timesteps), dtype=torch.long)
    inputs: dict[str, Tensor] = {"timesteps": steps}
    unit = TemporalFeatureUnit(unet_fp)
    if not unit.adapter.tib().depends_only_on_t:
        if not conditioning:
            raise ValueError("the temporal features depend on conditioning, but the calibration data has none")
        steps, rows = conditioned_pairs(timesteps, conditioning, pairs, seed)
        inputs = {"timesteps": steps, **{CONDITION_KEY + k: v for k, v in rows.items()}}
    cond = {k[len(CONDITION_KEY):]: v.to(device) for k, v in inputs.items() if k.startswith(CONDITION_KEY)}
    target: dict[str, Tensor] = {}
    for start in range(0, steps.shape[0], TARGET_CHUNK):
        part = unit(steps[start : start + TARGET_CHUNK].to(device), rows_of(cond, start, start + TARGET_CHUNK) or None)
        for name, value in part.items():
            target.setdefault(name, []).append(value.cpu())  # type: ignore[attr-defined]
    return UnitDataset(inputs, {name: torch.cat(parts) for name, parts in target.items()})  # type: ignore[arg-type]

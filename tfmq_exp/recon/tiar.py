"""TIAR (DESIGN 1.4): the Temporal Information Block reconstructed as one unit against the full-precision temporal
features over the sampler's finite timestep set.

- :class:`TemporalFeatureUnit`: the TIB as a module, ``t [B] -> {i: e_i(t) [B, C_i]}``;
- :class:`TemporalFeatureObjective`: ``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep;
- :func:`tiar_dataset`: the timesteps of the calibration set and the full-precision features at them.

The runner optimises it like any unit (:mod:`tfmq_exp.recon.runner`), before every block; later ResNet units keep
the rounding TIAR learned for their projections.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.recon.objectives import Batch, UnitDataset, lp_per_sample


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
    """``sum_i ||e_i(t) - e_hat_i(t)||^2`` per timestep ``t`` (TIAR's loss without the regulariser).

    As TFMQ-DM's ``LossFuncTimeEmbedding`` (``quant/reconstruction_util.py:132-136`` at d551eac): ``lp_loss``
    with ``p = 2`` on each ``[B, C_i]`` feature, summed over the features.
    """

    def per_sample(self, unit: nn.Module, batch: Batch) -> Tensor:
        features = unit(batch["inputs"]["timesteps"])
        total = None
        for name, target in batch["target"].items():
            error = lp_per_sample(features[name], target)  # [B]: features are [B, C_i], so sum over C_i
            total = error if total is None else total + error
        assert total is not None
        return total

    def __call__(self, unit: nn.Module, batch: Batch) -> Tensor:
        """The batch mean of :meth:`per_sample`."""
        return self.per_sample(unit, batch).mean()


@torch.no_grad()
def tiar_dataset(unet_fp: nn.Module, timesteps: Sequence[int], device: str | torch.device) -> UnitDataset:
    """The TIAR unit's data: every calibration timestep ``t`` and the full-precision ``e_i(t)`` (on the CPU)."""
    steps = torch.tensor(list(timesteps), dtype=torch.long)
    target = {name: value.cpu() for name, value in TemporalFeatureUnit(unet_fp)(steps.to(device)).items()}
    return UnitDataset({"timesteps": steps}, target)

"""Temporal features as the denoiser really consumes them, observed with forward hooks.

Whatever maintenance is active (the quantized TIB, per-timestep FSC parameters, or a cache that replaced the
TIB), the ResNet blocks read ``e_i(t)`` from the output of their ``time_emb_proj`` slot. Hooking those outputs
during a real UNet call at each sampling timestep measures the features the sampler actually uses, the same
way for every method, so the diagnostics compare like with like.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from tfmq_exp.conditioning import nest
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.temporal.features import TemporalFeatureSet


@torch.no_grad()
def observe_temporal_features(
    unet: nn.Module,
    timesteps: Sequence[int],
    feature_spec_unet: nn.Module | None = None,
    conditioning: Mapping[str, torch.Tensor] | None = None,
) -> TemporalFeatureSet:
    """Record ``e_i(t)`` (one row per timestep) at the outputs of every ResNet's time-embedding slot.

    Args:
        unet: the (possibly quantized or cache-maintained) denoiser.
        timesteps: the sampling timesteps, in sampling order.
        feature_spec_unet: a float twin whose adapter names the features (defaults to ``unet`` itself).
        conditioning: one row of the UNet's conditioning, flat (e.g. from the reference trajectory); by default
            the adapter's example conditioning. Temporal features of t alone do not depend on it.

    Returns:
        The features, ``[T, C_i]`` each, named by the adapter's temporal features.
    """
    adapter = get_adapter(feature_spec_unet if feature_spec_unet is not None else unet)
    features = adapter.tib().features
    sample, _, kwargs = adapter.example_inputs(batch_size=1)
    if conditioning:
        kwargs = nest(dict(conditioning))
    rows: dict[str, list[torch.Tensor]] = {feature.name: [] for feature in features}
    handles = []
    for feature in features:
        module = unet.get_submodule(feature.proj_name)

        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = feature.name) -> None:
            rows[name].append(output.detach().reshape(output.shape[0], -1)[0].float().cpu())

        handles.append(module.register_forward_hook(record))
    try:
        for t in timesteps:
            unet(sample, torch.tensor([t], dtype=torch.long), **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return TemporalFeatureSet(
        timesteps=list(timesteps), features={name: torch.stack(values) for name, values in rows.items()}
    )

"""Cache-based temporal maintenance for deployment (DESIGN 1.5): the temporal features become graph inputs.

The TIB maps ``t`` to one feature per ResNet block, ``e_i(t) = time_emb_proj_i(act(h(t)))`` (DESIGN 1.4).
For a fixed sampler the timesteps form a finite set, so the core's
:class:`~tfmq_exp.temporal.features.TemporalFeatureSet` holds every ``e_i(t)`` (:func:`fp_feature_table`: the
full-precision TIB, optionally quantized per ``(t, i)``; :func:`quantized_tib_table`: an artifact's quantized
TIB; :func:`cache_table`: an artifact's cache tables), its ``rows`` looks a batch up, and
:class:`FeatureInputUNet` runs the UNet with the TIB bypassed: a forward hook on each ``time_emb_proj``
returns the supplied feature instead of the layer's output. The exported graph then takes
``(sample, {feature name: e_i})`` and contains no TIB computation (its nodes are dead and removed).

Feature names are the dotted names of the consuming ResNet blocks (``down_blocks.0.resnets.0``), as in
``tfmq_exp.models.adapters.spec.TemporalFeature.name``. Supported: ``UNet2DModel``-style denoisers whose
time embedding depends on ``t`` alone (no class embedding). The TIB is the core's (the model adapter's
``TIBSpec``, :func:`tib_layout`); the per-``(t, i)`` quantization and its size are the core cache's
(:mod:`tfmq_exp.temporal.feature_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import TimestepContext, timestep_context_of
from tfmq_exp.temporal.feature_cache import CachedTemporalFeature, quantized_feature_set
from tfmq_exp.temporal.features import (
    TemporalFeatureSet,
    collect_quantized_temporal_features,
    collect_temporal_features,
)


@dataclass(frozen=True)
class TIBLayout:
    """Where the TIB lives in a UNet.

    Attributes:
        projections: feature name (ResNet block) -> name of its ``time_emb_proj`` Linear (``g_i``).
        layer_names: every Conv2d / Linear of the TIB (time-embedding MLP and projections); the cache removes them.
    """

    projections: Dict[str, str]
    layer_names: List[str]


def tib_layout(unet: nn.Module) -> TIBLayout:
    """Find the TIB of a diffusers UNet and check that cache-based maintenance applies to it.

    The TIB is the one the core finds (the model adapter's :class:`~tfmq_exp.models.adapters.TIBSpec`); this
    only renames it for the deployment graph.

    Raises:
        ValueError: the UNet has no temporal features, or other inputs than ``t`` join the embedding.
    """
    tib = get_adapter(unet).tib()
    if not tib.depends_only_on_t:
        raise ValueError(
            "cache-based maintenance needs temporal features that depend on t alone; this UNet mixes "
            f"{', '.join(tib.conditioning_modules)} into the time embedding"
        )
    if not tib.features:
        raise ValueError("no ResNet block with a time_emb_proj Linear found: nothing to cache")
    projections = {feature.resnet_name: feature.proj_name for feature in tib.features}
    return TIBLayout(projections=projections, layer_names=tib.layer_names())


def as_float_timesteps(timestep: torch.Tensor | float | int, batch_size: int) -> torch.Tensor:
    """Timesteps as a float32 ``[batch_size]`` tensor (integer timesteps break PT2E's histogram observers)."""
    timesteps = torch.as_tensor(timestep).to(torch.float32).reshape(-1)
    if timesteps.numel() == 1:
        return timesteps.expand(batch_size).contiguous()
    if timesteps.numel() != batch_size:
        raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {batch_size}")
    return timesteps


class SampleTimestepUNet(nn.Module):
    """``forward(sample, timesteps) -> eps`` returning a tensor, as the exported graph's signature."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timesteps).sample


class FeatureInputUNet(nn.Module):
    """``forward(sample, temporal_features) -> eps``: the UNet with its TIB replaced by given features.

    Forward hooks on every ``time_emb_proj`` return ``temporal_features[feature name]`` (``[B, C_i]``) instead
    of the Linear's output; the timestep passed to the UNet is a dummy whose embedding is never used. The
    hooks are registered on ``unet`` at construction (pass a copy if the original is used elsewhere) and
    removed by :meth:`remove_hooks`.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.layout = tib_layout(unet)
        self._supplied: Optional[Dict[str, torch.Tensor]] = None
        self._handles = [
            unet.get_submodule(projection).register_forward_hook(self._make_hook(feature))
            for feature, projection in self.layout.projections.items()
        ]

    def _make_hook(self, feature: str):
        def hook(_module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> torch.Tensor:
            if self._supplied is None:
                raise RuntimeError("FeatureInputUNet's hooks fired outside its forward")
            return self._supplied[feature]

        return hook

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, sample: torch.Tensor, temporal_features: Dict[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(set(self.layout.projections) - set(temporal_features))
        if missing:
            raise KeyError(f"temporal features missing for {missing}")
        dummy_timesteps = torch.zeros(sample.shape[0], dtype=sample.dtype, device=sample.device)
        self._supplied = temporal_features
        try:
            return self.unet(sample, dummy_timesteps).sample
        finally:
            self._supplied = None


class FeatureArgsUNet(nn.Module):
    """``forward(sample, *features) -> eps``: :class:`FeatureInputUNet` with positional feature inputs.

    For exporters that take positional graph inputs (ONNX); ``names`` fixes their order.
    """

    def __init__(self, unet: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.inner = FeatureInputUNet(unet)
        self.names = list(names)

    def arguments(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """The features in input order."""
        return [features[name] for name in self.names]

    def forward(self, sample: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.inner(sample, dict(zip(self.names, features)))


def fp_feature_table(
    unet: nn.Module, timesteps: Sequence[int] | torch.Tensor, bits: Optional[int] = None
) -> TemporalFeatureSet:
    """Every ``e_i(t)`` of ``unet``'s full-precision TIB at the sampler's ``timesteps`` (the core's collection).

    Args:
        unet: the denoiser.
        timesteps: the sampler's timesteps.
        bits: store each ``e_i(t)`` as the core cache does (per-``(t, i)`` min/max, DESIGN 1.5); ``None`` keeps fp32.
    """
    tib_layout(unet)  # cache-based deployment applies (features of t alone)
    features = collect_temporal_features(get_adapter(unet), [int(t) for t in torch.as_tensor(timesteps).flatten()])
    return features if bits is None else quantized_feature_set(features, bits)


def quantized_tib_table(unet_q: nn.Module, unet_fp: nn.Module, timesteps: Sequence[int]) -> TemporalFeatureSet:
    """The temporal features a quantized UNet computes, one timestep at a time: its quantized TIB, or the mix that
    disturbance-aware selection installed (cache rows where selected, the quantized TIB elsewhere).

    ``e_i(t)`` depends on ``t`` alone, so evaluating the model's own temporal path (its per-timestep FSC
    parameters and cache rows selected through the model's timestep context) once per sampling timestep gives
    exactly the features the fake-quant model uses; the deployed graph then takes them as inputs and holds no
    per-timestep parameter. Nothing is calibrated: the artifact's own TIB and tables are run.
    """
    tib_layout(unet_fp)
    return collect_quantized_temporal_features(get_adapter(unet_q), _timestep_context(unet_q), [int(t) for t in timesteps])


def _timestep_context(unet_q: nn.Module) -> TimestepContext:
    """The one context ``unet_q``'s per-timestep quantizers and temporal-feature cache modules read (a fresh one
    when nothing in it reads the timestep)."""
    from tfmq_exp.temporal.maintenance import iter_cache_modules

    readers = [timestep_context_of(unet_q), *(module.context for _, module in iter_cache_modules(unet_q))]
    contexts = {id(context): context for context in readers if context is not None}
    if len(contexts) > 1:
        raise ValueError(f"the quantized UNet's per-timestep parts read {len(contexts)} different timestep contexts")
    return next(iter(contexts.values()), None) or TimestepContext()


def _is_table(module: nn.Module) -> bool:
    return isinstance(module, CachedTemporalFeature) and module.fallback is None


def serves_features_from_tables(unet_q: nn.Module, unet_fp: nn.Module) -> bool:
    """Whether every temporal feature of ``unet_q`` comes from a core cache table with no TIB behind it
    (``method.maintenance=cache`` without fallback): :func:`cache_table` then reads them as they are. A selected
    mix (``method.maintenance=select``) or a cache with the TIB as fallback is read by :func:`quantized_tib_table`."""
    return all(_is_table(unet_q.get_submodule(name)) for name in tib_layout(unet_fp).projections.values())


def cache_table(unet_q: nn.Module, unet_fp: nn.Module) -> TemporalFeatureSet:
    """The table a cache-maintained quantized UNet holds: the core cache modules' dequantized rows.

    Nothing is recomputed: each ``time_emb_proj`` of ``unet_q`` must be a core
    :class:`~tfmq_exp.temporal.feature_cache.CachedTemporalFeature` (``method.maintenance=cache``) serving every
    timestep itself, without the TIB as fallback.

    Raises:
        ValueError: a projection is not such a table, or the tables hold different timesteps.
    """
    features: Dict[str, torch.Tensor] = {}
    timesteps: Optional[List[int]] = None
    for feature, projection in tib_layout(unet_fp).projections.items():
        module = unet_q.get_submodule(projection)
        if not _is_table(module):
            raise ValueError(f"{projection} is not a temporal-feature cache table without TIB fallback "
                             "(method.maintenance=cache, method.cache_fallback=false)")
        order = module.cached_timesteps()
        timesteps = order if timesteps is None else timesteps
        if sorted(order) != sorted(timesteps):
            raise ValueError(f"{projection} caches other timesteps than the other tables")
        features[feature] = module.dequantized()[[order.index(t) for t in timesteps]].detach().float().cpu()
    return TemporalFeatureSet(list(timesteps or []), features)

"""Cache-based temporal maintenance for deployment (DESIGN 1.5): the temporal features become graph inputs.

The TIB maps ``t`` to one feature per ResNet block, ``e_i(t) = time_emb_proj_i(act(h(t)))`` (DESIGN 1.4).
For a fixed sampler the timesteps form a finite set, so :class:`TemporalFeatureCache` computes every
``e_i(t)`` once with the full-precision TIB (optionally quantized per ``(t, i)``), and
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

from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.temporal.feature_cache import dequantize_rows, quantize_rows, row_bytes



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


@dataclass
class TemporalFeatureCache:
    """Temporal features ``e_i(t)`` for one sampler's timestep set (DESIGN 1.5).

    Attributes:
        timesteps: ``[T]`` int64, the cached timesteps.
        features: feature name -> ``[T, C_i]`` float32 (already dequantized when ``bits`` is set).
        bits: bits of the per-``(t, i)`` quantization applied to the features, or ``None`` (full precision).
    """

    timesteps: torch.Tensor
    features: Dict[str, torch.Tensor]
    bits: Optional[int] = None

    def __post_init__(self) -> None:
        self.timesteps = torch.as_tensor(self.timesteps).to(torch.int64).reshape(-1)
        for name, values in self.features.items():
            if values.dim() != 2 or values.shape[0] != self.timesteps.numel():
                raise ValueError(f"feature {name} must be [T={self.timesteps.numel()}, C], got {tuple(values.shape)}")

    @classmethod
    @torch.no_grad()
    def from_unet(
        cls,
        unet: nn.Module,
        timesteps: Sequence[int] | torch.Tensor,
        sample_shape: Sequence[int],
        bits: Optional[int] = None,
    ) -> "TemporalFeatureCache":
        """Compute every ``e_i(t)`` with ``unet``'s (full-precision) TIB.

        Args:
            unet: the denoiser; the features are read from its ``time_emb_proj`` outputs (forward hooks).
            timesteps: the sampler's timesteps.
            sample_shape: ``(C, H, W)`` of one sample (only used to run a forward pass).
            bits: quantize each ``e_i(t)`` to ``bits`` (asymmetric min/max per ``(t, i)``); ``None`` keeps fp32.
        """
        layout = tib_layout(unet)
        timesteps = torch.as_tensor(timesteps).to(torch.int64).reshape(-1)
        captured: Dict[str, torch.Tensor] = {}

        def make_hook(feature: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                captured[feature] = output.detach().float()

            return hook

        handles = [
            unet.get_submodule(projection).register_forward_hook(make_hook(feature))
            for feature, projection in layout.projections.items()
        ]
        try:
            sample = torch.zeros(timesteps.numel(), *sample_shape)
            unet(sample, timesteps.to(torch.float32))
        finally:
            for handle in handles:
                handle.remove()
        if bits is not None:  # the core cache's per-(t, i) quantization, bit for bit
            captured = {name: dequantize_rows(*quantize_rows(values, bits)) for name, values in captured.items()}
        return cls(timesteps=timesteps, features=captured, bits=bits)

    @classmethod
    @torch.no_grad()
    def from_quantized_tib(
        cls, unet_q: nn.Module, timesteps: Sequence[int], sample_shape: Sequence[int]
    ) -> "TemporalFeatureCache":
        """The temporal features a TIB-maintained quantized UNet computes, one timestep at a time.

        ``e_i(t)`` depends on ``t`` alone, so evaluating the quantized TIB (its per-timestep FSC parameters
        selected through the model's timestep context) once per sampling timestep gives exactly the features the
        fake-quant model uses; the deployed graph then takes them as inputs and holds no per-timestep parameter.
        Nothing is calibrated: the artifact's own TIB is run.
        """
        parts = [cls.from_unet(unet_q, [int(t)], sample_shape) for t in timesteps]
        features = {name: torch.cat([part.features[name] for part in parts]) for name in parts[0].features}
        return cls(timesteps=torch.tensor([int(t) for t in timesteps]), features=features)

    @classmethod
    def from_quantized(cls, unet_q: nn.Module, unet_fp: nn.Module) -> "TemporalFeatureCache":
        """The cache a cache-maintained quantized UNet holds: the core cache modules' dequantized rows.

        Nothing is recomputed: each ``time_emb_proj`` of ``unet_q`` must be a core
        :class:`~tfmq_exp.temporal.feature_cache.CachedTemporalFeature` (``method.maintenance=cache``) serving every
        timestep itself, without the TIB as fallback.

        Raises:
            ValueError: a projection is not such a table, or the tables hold different timesteps.
        """
        from tfmq_exp.temporal.feature_cache import CachedTemporalFeature

        features: Dict[str, torch.Tensor] = {}
        timesteps: Optional[List[int]] = None
        bits = set()
        for feature, projection in tib_layout(unet_fp).projections.items():
            module = unet_q.get_submodule(projection)
            if not isinstance(module, CachedTemporalFeature) or module.fallback is not None:
                raise ValueError(f"{projection} is not a temporal-feature cache table without TIB fallback "
                                 "(method.maintenance=cache, method.cache_fallback=false)")
            order = module.cached_timesteps()
            timesteps = order if timesteps is None else timesteps
            if sorted(order) != sorted(timesteps):
                raise ValueError(f"{projection} caches other timesteps than the other tables")
            features[feature] = module.dequantized()[[order.index(t) for t in timesteps]].detach().float().cpu()
            bits.add(module.bits)
        return cls(timesteps=torch.tensor(timesteps), features=features, bits=bits.pop() if len(bits) == 1 else None)

    def lookup(self, timesteps: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features for a batch of timesteps: ``{name: [B, C_i]}``.

        Raises:
            CacheMismatchError: a timestep is not in the cache (the cache belongs to one sampler).
        """
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        matches = torch.isclose(timesteps.double()[:, None], self.timesteps.double()[None, :], rtol=0, atol=1e-4)
        found = matches.any(dim=1)
        if not bool(found.all()):
            unknown = sorted({float(t) for t in timesteps[~found]})
            raise CacheMismatchError(
                f"timesteps {unknown} are not in the temporal-feature cache (it holds {self.timesteps.numel()} "
                "timesteps of one sampler); rebuild the cache for this sampler"
            )
        index = matches.to(torch.int64).argmax(dim=1)
        return {name: values[index] for name, values in self.features.items()}

    def nbytes(self) -> int:
        """Storage bytes, as the core cache counts them (:func:`~tfmq_exp.temporal.feature_cache.row_bytes`);
        without ``bits``, 4 bytes (float32) per value."""
        if self.bits is None:
            return sum(values.numel() * 4 for values in self.features.values())
        return sum(values.shape[0] * row_bytes(values.shape[1], self.bits) for values in self.features.values())

"""Temporal maintenance of a calibrated quantized UNet: the cache (DESIGN 1.5) or the selected mix (DESIGN 1.6).

:func:`apply_maintenance` is what the PTQ orchestrator calls before block reconstruction (a cache right after
quantization, a selection right after TIAR); :func:`install_cache` does the
module replacement; :func:`iter_cache_modules`, :func:`check_cache_timesteps` (fail before sampling on timesteps
the cache lacks) and :func:`set_cache_context` inspect a maintained model.

For a TIB that depends on ``t`` alone, every chosen ``e_i(t)`` is computed once with the full-precision TIB (the
adapter of ``unet_fp``), quantized per ``(t, i)`` and put in place of the ResNet block's ``time_emb_proj``; on
timesteps where every feature is cached, ``time_proj`` and ``time_embedding`` are replaced by zero placeholders,
so none of the TIB runs. The original quantized modules are kept inside the replacements only where they may
still run (routed timesteps of a per-timestep selection, or ``method.cache_fallback``); otherwise no TIB weights
remain. The fallback covers the TIB's own FSC parameters (nearest calibrated timestep); quantizers elsewhere
with per-timestep parameters (``fsc_scope=all``) still need the timestep calibrated.

Models whose embedding is not a function of ``t`` alone (SD-XL's ``add_embedding`` of pooled text and size
ids, class labels): **we cache the t-only part** ``h(t) = time_embedding(time_proj(t))`` in place of
``time_embedding`` and run the rest online (the conditioning embeddings, their sum, and the quantized
projections ``g_i`` with their FSC parameters), as DESIGN 1.4 prescribes ("cache-based maintenance then applies
only to the part that is"). Refusing would leave SD-XL without any cache; caching ``h(t)`` keeps the
t-dependent MLP out of the sampling loop and removes its quantization error, while the per-block projections
cannot be cached because ``SiLU(h(t) + a)`` mixes ``t`` with the conditioning ``a``. A time embedding that
itself takes conditioning (``timestep_cond`` through ``time_embedding.cond_proj``) has no t-only part: refused.
With ``cache_fallback`` a missing timestep runs the quantized MLP, but the online projections still need FSC
parameters for it when they have per-timestep ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.config.schema import MAINTENANCES as SCHEMA_MAINTENANCES, Config
from tfmq_exp.errors import CacheMismatchError, UserError
from tfmq_exp.models.adapters import TIBSpec, get_adapter
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.layout import replace_module
from tfmq_exp.stage_results import CacheReport, MaintenanceReport
from tfmq_exp.temporal.feature_cache import (
    PARAM_BYTES_PER_ROW,
    CachedTemporalFeature,
    TimeEmbeddingPlaceholder,
    TimestepKeyedModule,
    listing,
)
from tfmq_exp.temporal.features import collect_temporal_features
from tfmq_exp.temporal.disturbance_selection import select_maintenance

DEFAULT_CACHE_BITS = 8
CONDITIONED_TIME_EMBEDDING = "time_embedding.cond_proj"


def cache_bits_for(config: Config) -> int:
    """``method.cache_bits``, else the temporal activation bit-width, else 8 (activations off)."""
    if config.method.cache_bits is not None:
        return int(config.method.cache_bits)
    temporal = config.quant.effective_temporal_a_bits
    return int(temporal) if temporal is not None else DEFAULT_CACHE_BITS


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _linear_macs(unet_fp: nn.Module, names: Sequence[str]) -> int:
    """Multiply-accumulates of one sample through the named full-precision Linears (``in x out`` each)."""
    return sum(unet_fp.get_submodule(name).in_features * unet_fp.get_submodule(name).out_features for name in names)


def _tib_cost(unet_fp: nn.Module, tib: TIBSpec) -> Dict[str, int]:
    modules = [tib.time_proj, tib.time_embedding] + [feature.proj_name for feature in tib.features]
    return {
        "tib_parameters": sum(_parameters(unet_fp.get_submodule(name)) for name in modules),
        "tib_macs_per_step": _linear_macs(unet_fp, tib.layer_names()),
    }


def _wrap(original: nn.Module, keep: bool) -> Optional[nn.Module]:
    return original if keep else None


def install_cache(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    context: TimestepContext,
    timesteps: Sequence[int],
    bits: int,
    fallback: bool = False,
    cached: Optional[Mapping[str, Sequence[int]]] = None,
) -> CacheReport:
    """Replace TIB modules of ``unet_q`` by quantized caches of full-precision features (in place).

    Args:
        unet_q: the calibrated quantized UNet (with ``context`` attached by ``attach_timestep_context``).
        unet_fp: its full-precision twin (computes the cached values).
        context: the shared timestep context the cache modules read.
        timesteps: the sampler's timesteps (the cache belongs to this set).
        bits: code bit-width of the cache.
        fallback: send timesteps outside ``timesteps`` to the quantized TIB instead of failing.
        cached: feature name -> timesteps to cache (from a selection); default every feature at every timestep.
            Features or timesteps left out keep the quantized TIB path.

    Returns:
        The ``cache`` report: sizes in bytes, the TIB parameters and multiply-accumulates it removes.

    Raises:
        UserError: ``cached`` given for a model whose features are not a function of ``t`` alone, or a time
            embedding without a t-only part.
        ValueError: ``unet_q`` already holds cache modules, or ``cached`` names unknown features / timesteps.
    """
    timesteps = [int(t) for t in timesteps]
    if not timesteps or len(set(timesteps)) != len(timesteps):
        raise ValueError(f"timesteps must be a non-empty list of distinct integers, got {timesteps}")
    if next(iter_cache_modules(unet_q), None) is not None:
        raise ValueError("unet_q already holds temporal-feature cache modules: maintenance was applied before")
    adapter = get_adapter(unet_fp)
    tib = adapter.tib()
    if not tib.depends_only_on_t:
        if cached is not None:
            raise UserError(
                f"a per-feature cache needs temporal features of t alone, but {', '.join(tib.conditioning_modules)} "
                "join the embedding; only the t-only part h(t) can be cached (method.maintenance=cache)"
            )
        return _install_time_embedding_cache(unet_q, unet_fp, tib, context, timesteps, bits, fallback)
    names = tib.feature_names()
    if cached is None:
        cached = {name: timesteps for name in names}
    plan = {name: {int(t) for t in chosen} for name, chosen in cached.items()}
    unknown = sorted(set(plan) - set(names))
    stray = sorted({t for chosen in plan.values() for t in chosen} - set(timesteps))
    if unknown or stray:
        raise ValueError(f"cached names unknown features {unknown} or timesteps outside the sampler's {stray}")
    device = _device(unet_q)
    with torch.no_grad():
        features = collect_temporal_features(adapter, timesteps)  # e_i(t) of the full-precision TIB, [T, C_i]
        embedding_width = adapter.time_only_embedding(timesteps[:1]).shape[-1]
        first = torch.tensor(timesteps[:1], device=adapter.device)
        projection_width = unet_fp.get_submodule(tib.time_proj)(first).shape[-1]
    removed_parameters, per_feature = 0, {}
    macs_at = {t: 0 for t in timesteps}
    for feature in tib.features:
        chosen = [t for t in timesteps if t in plan.get(feature.name, set())]
        per_feature[feature.name] = {"channels": features[feature.name].shape[1], "cached_timesteps": len(chosen)}
        if not chosen:
            continue
        routed = [t for t in timesteps if t not in chosen]
        keep = bool(routed) or fallback
        rows = [features.index(t) for t in chosen]
        module = CachedTemporalFeature.from_values(
            features[feature.name][rows].to(device), chosen, bits, routed_timesteps=routed,
            fallback=_wrap(unet_q.get_submodule(feature.proj_name), keep), fallback_all=fallback, context=context,
        )  # fmt: skip
        replace_module(unet_q, feature.proj_name, module)
        removed_parameters += 0 if keep else _parameters(unet_fp.get_submodule(feature.proj_name))
        for t in chosen:
            macs_at[t] += _linear_macs(unet_fp, [feature.proj_name])
    skipped = [t for t in timesteps if all(t in plan.get(name, set()) for name in names)]
    if skipped:  # the TIB's embedding is needed by no block at these timesteps
        routed = [t for t in timesteps if t not in skipped]
        keep = bool(routed) or fallback
        for slot, width in ((tib.time_proj, projection_width), (tib.time_embedding, embedding_width)):
            placeholder = TimeEmbeddingPlaceholder(
                width, skipped, routed_timesteps=routed, fallback=_wrap(unet_q.get_submodule(slot), keep),
                fallback_all=fallback, context=context,
            )  # fmt: skip
            replace_module(unet_q, slot, placeholder.to(device))
            removed_parameters += 0 if keep else _parameters(unet_fp.get_submodule(slot))
        for t in skipped:
            macs_at[t] += _linear_macs(unet_fp, tib.embedding_linear_names)
    removed_macs = sum(macs_at.values()) / len(timesteps)
    return CacheReport(
        **_size_summary(unet_q, bits, timesteps, fallback, "features"),
        features=per_feature, tib_skipped_timesteps=len(skipped), **_tib_cost(unet_fp, tib),
        removed_parameters=removed_parameters, removed_macs_per_step=removed_macs,
        removed_flops_per_step=2 * removed_macs,
    )  # fmt: skip


def _install_time_embedding_cache(
    unet_q: nn.Module, unet_fp: nn.Module, tib: TIBSpec, context: TimestepContext, timesteps: List[int], bits: int,
    fallback: bool,
) -> CacheReport:  # fmt: skip
    """Cache ``h(t)`` in place of ``time_embedding`` when conditioning joins the embedding after it."""
    if CONDITIONED_TIME_EMBEDDING in tib.conditioning_modules:
        raise UserError(
            "cache-based maintenance needs a t-only part of the time embedding, but this model's time_embedding "
            "takes timestep_cond (time_embedding.cond_proj); use method.maintenance=tib"
        )
    adapter = get_adapter(unet_fp)
    with torch.no_grad():
        values = adapter.time_only_embedding(timesteps)  # h(t) of the full-precision MLP, [T, C_emb]
    original = unet_q.get_submodule(tib.time_embedding)
    module = CachedTemporalFeature.from_values(
        values.to(_device(unet_q)), timesteps, bits, fallback=_wrap(original, fallback), fallback_all=fallback,
        context=context,
    )  # fmt: skip
    replace_module(unet_q, tib.time_embedding, module)
    removed_macs = _linear_macs(unet_fp, tib.embedding_linear_names)
    return CacheReport(
        **_size_summary(unet_q, bits, timesteps, fallback, "time_embedding"),
        conditioning_modules=list(tib.conditioning_modules), **_tib_cost(unet_fp, tib),
        removed_parameters=0 if fallback else _parameters(unet_fp.get_submodule(tib.time_embedding)),
        removed_macs_per_step=removed_macs, removed_flops_per_step=2 * removed_macs,
    )  # fmt: skip


def _size_summary(unet_q: nn.Module, bits: int, timesteps: List[int], fallback: bool, scope: str) -> Dict[str, Any]:
    """The :class:`CacheReport` fields that describe the installed tables (scope, sizes, counts)."""
    tables = [module for _, module in iter_cache_modules(unet_q) if isinstance(module, CachedTemporalFeature)]
    rows = [(len(module.cached_timesteps()), module.num_channels) for module in tables]
    code_bytes = sum(count * math.ceil(channels * bits / 8) for count, channels in rows)
    param_bytes = sum(count * PARAM_BYTES_PER_ROW for count, _ in rows)
    stored = sum(buffer.nbytes for module in tables for _, buffer in module.named_buffers(recurse=False))
    return {
        "scope": scope,
        "bits": bits,
        "timesteps": len(timesteps),
        "fallback": fallback,
        "modules": len(tables),
        "cache_bytes": code_bytes + param_bytes,
        "code_bytes": code_bytes,
        "param_bytes": param_bytes,
        "stored_bytes": stored,
    }


def iter_cache_modules(model: nn.Module) -> Iterator[Tuple[str, TimestepKeyedModule]]:
    """``(name, module)`` of every cache module in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, TimestepKeyedModule):
            yield name, module


def set_cache_context(model: nn.Module, context: TimestepContext) -> int:
    """Attach ``context`` to every cache module of ``model``; returns how many."""
    modules = [module for _, module in iter_cache_modules(model)]
    for module in modules:
        module.set_context(context)
    return len(modules)


def check_cache_timesteps(model: nn.Module, timesteps: Sequence[int]) -> None:
    """Fail before sampling when the cache of ``model`` does not serve every one of ``timesteps``.

    Raises:
        CacheMismatchError: naming every missing timestep and the cached ones.
    """
    modules = [module for _, module in iter_cache_modules(model)]
    missing = [int(t) for t in timesteps if not all(module.serves(int(t)) for module in modules)]
    if missing:
        cached = sorted({t for module in modules for t in module.cached_timesteps()}, reverse=True)
        raise CacheMismatchError(
            f"the temporal-feature cache does not cover timesteps {listing(missing)} of this sampler; cached "
            f"timesteps: {listing(cached)}. Rebuild the cache for this sampler, or set method.cache_fallback=true"
        )


def _keep_tib(request: "MaintenanceRequest") -> MaintenanceReport:
    """``tib``: the quantized TIB runs at inference (TIAR / FSC already fitted it); nothing to install."""
    return MaintenanceReport()


def _cache_every_feature(request: "MaintenanceRequest") -> MaintenanceReport:
    """``cache`` (DESIGN 1.5): every temporal feature from the full-precision TIB, quantized per ``(t, i)``."""
    from tfmq_exp.calib.fsc import calibrate_tib_activations

    method = request.config.method
    if method.cache_fallback and get_adapter(request.unet_fp).tib().depends_only_on_t:
        # the TIB kept as the fallback runs off the sampler's set only: calibrate it on every t now
        calibrate_tib_activations(request.unet_q, request.timesteps, request.context, method.fsc, method.fsc_range)
    cache = install_cache(
        request.unet_q, request.unet_fp, request.context, request.timesteps, request.bits, method.cache_fallback
    )
    return MaintenanceReport(cache=cache)


def _select_per_feature(request: "MaintenanceRequest") -> MaintenanceReport:
    """``select`` (DESIGN 1.6): per feature (or feature and timestep), the option with the smaller error."""
    from tfmq_exp.calib.fsc import calibrate_tib_activations

    unet_q, unet_fp, context, timesteps, bits = (
        request.unet_q, request.unet_fp, request.context, request.timesteps, request.bits
    )
    method = request.config.method
    if not get_adapter(unet_fp).tib().depends_only_on_t:
        from tfmq_exp.temporal.conditioned_selection import select_time_embedding

        chosen = select_time_embedding(
            unet_q, unet_fp, context, timesteps, request.conditioning, method.select, bits, request.config.calib.seed
        )
        cache = None
        if chosen.choice == "cache":
            cache = install_cache(unet_q, unet_fp, context, timesteps, bits, method.cache_fallback)
        return MaintenanceReport(cache=cache, selection=chosen)
    calibrate_tib_activations(unet_q, timesteps, context, method.fsc, method.fsc_range)
    selection = select_maintenance(unet_q, unet_fp, context, timesteps, method.select, bits)
    cache = install_cache(
        unet_q, unet_fp, context, timesteps, bits, method.cache_fallback, cached=selection.cached_timesteps()
    )
    return MaintenanceReport(cache=cache, selection=selection.report())


@dataclass(frozen=True)
class MaintenanceRequest:
    """What a maintenance strategy gets: the two UNets, the run config, the timestep context and set, the cache
    bit-width (:func:`cache_bits_for`) and the calibration data's conditioning rows (flat; ``{}`` for none)."""

    unet_q: nn.Module
    unet_fp: nn.Module
    config: Config
    context: TimestepContext
    timesteps: list[int]
    bits: int
    conditioning: Mapping[str, torch.Tensor]


MAINTENANCES: Dict[str, Callable[[MaintenanceRequest], MaintenanceReport]] = {  # names: schema.MAINTENANCES
    "tib": _keep_tib,
    "cache": _cache_every_feature,
    "select": _select_per_feature,
}
assert tuple(MAINTENANCES) == SCHEMA_MAINTENANCES, "schema.MAINTENANCES and MAINTENANCES must agree"


def apply_maintenance(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    config: Config,
    context: TimestepContext,
    timesteps: list[int],
    conditioning: Optional[Mapping[str, torch.Tensor]] = None,
) -> MaintenanceReport:
    """Install ``config.method.maintenance`` (one of :data:`MAINTENANCES`) in the quantized UNet (in place),
    before block reconstruction.

    The maintenance that runs at inference is in place before the blocks are reconstructed and the activations
    calibrated, so both are fitted to the temporal features the model will see (DESIGN 1.5, 1.6):

    - ``cache``: called right after ``quantize_``: every temporal feature comes from the full-precision TIB,
      quantized per ``(t, i)``; no TIAR or FSC is needed for it.
    - ``select``: called after TIAR: the TIB's activation quantizers are calibrated first (FSC where the method
      has it), so the TIB option is measured as it will run; then the option with the smaller temporal-feature
      error (``method.select``) is installed per feature (or per feature and timestep).

    Args:
        unet_q: the quantized UNet, ``context`` attached.
        unet_fp: the full-precision UNet.
        config: the run config (``method.maintenance``, ``cache_bits``, ``cache_fallback``, ``select``, ``fsc``).
        context: the shared timestep context.
        timesteps: the sampler's timesteps.
        conditioning: the calibration data's conditioning rows (flat); selection measures conditioned
            temporal features on them (:mod:`tfmq_exp.temporal.conditioned_selection`).

    Returns:
        What was installed: the cache for ``cache``, plus the selection decision for ``select``; an empty
        report for ``tib`` (nothing to do).
    """
    request = MaintenanceRequest(
        unet_q, unet_fp, config, context, timesteps, cache_bits_for(config), conditioning or {}
    )
    return MAINTENANCES[config.method.maintenance](request)

"""Disturbance-aware selection between TIB-based and cache-based maintenance (DESIGN 1.6; criterion ours).

For every temporal feature ``i`` and sampling timestep ``t``, two options give ``e_hat_i(t)``:

- ``tib``: the calibrated quantized TIB (TIAR rounding, FSC parameters selected with ``context.at(t)``);
- ``cache``: the full-precision ``e_i(t)`` quantized per ``(t, i)`` (what :mod:`tfmq_exp.temporal.feature_cache`
  stores, bit for bit).

Their disturbance against the full-precision ``e_i(t)`` is measured on the feature (MSE, relative MSE,
``1 - cos``) and at the output of the ResNet block that consumes it: the full-precision block runs on a fixed
probe input (its input captured during one full-precision forward on the adapter's example inputs at the
middle sampling timestep) once with ``e_i(t)`` and once with each option (a forward hook substitutes the
feature for its ``time_emb_proj`` output). Scores **(ours)**: ``feature_mse`` and ``block_output_mse`` use the
*relative* MSE (MSE over the reference's mean square), so features and blocks of different scale compete fairly
for one memory budget; ``feature_cos`` uses ``1 - cos``. Per feature (mean over t) or per ``(feature, t)`` the
option with the smaller score wins (ties keep the TIB: no memory). With ``cache_budget_bytes`` the items where
the cache wins are taken greedily by score reduction per byte while they fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from tfmq_exp.config.schema import SelectConfig
from tfmq_exp.errors import UserError
from tfmq_exp.models.adapters import TIBSpec, UNetAdapter, get_adapter
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.stage_results import FeatureSelection
from tfmq_exp.temporal.feature_cache import quantized_feature_set, row_bytes
from tfmq_exp.temporal.diagnostics import temporal_feature_errors
from tfmq_exp.temporal.features import collect_quantized_temporal_features, collect_temporal_features

OPTIONS = ("tib", "cache")
METRIC_KEYS = ("feature_mse", "feature_rel_mse", "feature_cos_distance", "block_output_mse", "block_output_rel_mse")
SCORE_KEY = {  # SelectConfig.metric -> the error that decides
    "feature_mse": "feature_rel_mse",
    "feature_cos": "feature_cos_distance",
    "block_output_mse": "block_output_rel_mse",
}
BLOCK_CHUNK = 16  # timesteps per block evaluation (bounds memory on large models)


@dataclass
class Disturbance:
    """Errors of both options: ``errors[feature][option][metric key]`` is a ``[T]`` float64 tensor."""

    timesteps: List[int]
    channels: Dict[str, int]
    errors: Dict[str, Dict[str, Dict[str, Tensor]]]
    probe_timestep: int


def _block_inputs(unet_fp: nn.Module, adapter: UNetAdapter, tib: TIBSpec, timestep: int) -> Dict[str, Tensor]:
    """The input of every feature's ResNet block during one full-precision forward (the fixed probes)."""
    sample, _, kwargs = adapter.example_inputs(batch_size=1)
    probes: Dict[str, Tensor] = {}
    handles = []
    for feature in tib.features:

        def capture(_module: nn.Module, args: tuple, kw: dict, name: str = feature.name) -> None:
            probes.setdefault(name, (args[0] if args else kw["input_tensor"]).detach().clone())

        block = unet_fp.get_submodule(feature.resnet_name)
        handles.append(block.register_forward_pre_hook(capture, with_kwargs=True))
    try:
        unet_fp(sample, torch.tensor([timestep], device=adapter.device), **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return probes


def _block_outputs(block: nn.Module, probe: Tensor, features: Tensor) -> Tensor:
    """Block output on ``probe`` with ``features [T, C]`` substituted for its ``time_emb_proj`` output."""
    outputs = []
    projection = block.time_emb_proj
    for start in range(0, features.shape[0], BLOCK_CHUNK):
        chunk = features[start : start + BLOCK_CHUNK].to(probe.device, probe.dtype)
        handle = projection.register_forward_hook(lambda _m, _a, _o, value=chunk: value)
        try:
            batch = probe.expand(chunk.shape[0], *probe.shape[1:])  # [t, C_in, H, W]: one probe per timestep
            temb = torch.zeros(chunk.shape[0], projection.in_features, device=probe.device, dtype=probe.dtype)
            outputs.append(block(batch, temb).detach().double().cpu())
        finally:
            handle.remove()
    return torch.cat(outputs)


def require_t_only(tib: TIBSpec) -> None:
    """Raise ``UserError`` unless the temporal features are a function of ``t`` alone (else nothing to choose)."""
    if not tib.depends_only_on_t:
        raise UserError(
            "disturbance-aware selection chooses per temporal feature, but this model's features also depend on "
            f"{', '.join(tib.conditioning_modules)}; use method.maintenance=cache (caches the t-only part h(t)) or tib"
        )


@torch.no_grad()
def measure_disturbance(
    unet_q: nn.Module, unet_fp: nn.Module, context: TimestepContext, timesteps: Sequence[int], bits: int
) -> Disturbance:
    """Feature and block-output errors of the TIB and the cache option for every feature and timestep.

    Raises:
        UserError: the temporal features are not a function of ``t`` alone (nothing to choose per feature).
    """
    timesteps = [int(t) for t in timesteps]
    adapter_fp = get_adapter(unet_fp)
    tib = adapter_fp.tib()
    require_t_only(tib)
    reference = collect_temporal_features(adapter_fp, timesteps)
    quantized = collect_quantized_temporal_features(get_adapter(unet_q), context, timesteps)
    options = {"tib": quantized, "cache": quantized_feature_set(reference, bits)}
    probe_timestep = timesteps[len(timesteps) // 2]
    probes = _block_inputs(unet_fp, adapter_fp, tib, probe_timestep)
    errors: Dict[str, Dict[str, Dict[str, Tensor]]] = {name: {} for name in reference.names}
    for option, features in options.items():
        feature_errors = temporal_feature_errors(reference, features)
        for row, name in enumerate(feature_errors.feature_names):
            errors[name][option] = {
                "feature_mse": feature_errors.mse[row],
                "feature_rel_mse": feature_errors.rel_mse[row],
                "feature_cos_distance": 1.0 - feature_errors.cosine[row],
            }
    for feature in tib.features:
        block = unet_fp.get_submodule(feature.resnet_name)
        target = _block_outputs(block, probes[feature.name], reference[feature.name]).flatten(1)
        power = target.pow(2).mean(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        for option, features in options.items():
            output = _block_outputs(block, probes[feature.name], features[feature.name]).flatten(1)
            mse = (output - target).pow(2).mean(dim=1)
            errors[feature.name][option]["block_output_mse"] = mse
            errors[feature.name][option]["block_output_rel_mse"] = mse / power
    channels = {name: int(reference[name].shape[1]) for name in reference.names}
    return Disturbance(timesteps, channels, errors, probe_timestep)


@dataclass
class Selection:
    """What :func:`choose` decided, and the errors behind it.

    Attributes:
        metric: the ``SelectConfig.metric`` used.
        per_timestep: the choice is per ``(feature, t)``.
        cached: feature name -> cached timesteps (empty: the feature keeps the TIB).
        cache_bytes / full_cache_bytes / budget_bytes: size of the chosen cache, of caching everything, the budget.
        disturbance: the measured errors.
    """

    metric: str
    per_timestep: bool
    cached: Dict[str, List[int]]
    cache_bytes: int
    full_cache_bytes: int
    budget_bytes: Optional[int]
    disturbance: Disturbance

    def cached_timesteps(self) -> Dict[str, List[int]]:
        """Feature name -> timesteps to cache (for :func:`~tfmq_exp.temporal.maintenance.install_cache`)."""
        return {name: list(timesteps) for name, timesteps in self.cached.items()}

    def report(self) -> FeatureSelection:
        """The ``selection`` section: choice map, mean errors per option, sizes."""
        timesteps = self.disturbance.timesteps
        if self.per_timestep:
            choice = {
                name: {str(t): "cache" if t in set(chosen) else "tib" for t in timesteps}
                for name, chosen in self.cached.items()
            }
        else:
            choice = {name: "cache" if chosen else "tib" for name, chosen in self.cached.items()}
        errors = {
            name: {option: {key: float(values[key].mean()) for key in METRIC_KEYS} for option, values in per.items()}
            for name, per in self.disturbance.errors.items()
        }
        per_step = None
        if self.per_timestep:
            per_step = {
                name: {option: {key: values[key].tolist() for key in METRIC_KEYS} for option, values in per.items()}
                for name, per in self.disturbance.errors.items()
            }
        return FeatureSelection(
            metric=self.metric, score=SCORE_KEY[self.metric], per_timestep=self.per_timestep, choice=choice,
            errors=errors, cache_bytes=self.cache_bytes, full_cache_bytes=self.full_cache_bytes,
            budget_bytes=self.budget_bytes, probe_timestep=self.disturbance.probe_timestep,
            timesteps=list(timesteps), errors_per_timestep=per_step,
        )  # fmt: skip


def choose(disturbance: Disturbance, select: SelectConfig, bits: int) -> Selection:
    """Pick the option with the smaller score per feature (or per ``(feature, t)``), within the budget.

    Args:
        disturbance: the measured errors.
        select: metric, per-timestep switch and memory budget.
        bits: cache bit-width (sets the cost of each cached row).
    """
    key = SCORE_KEY[select.metric]
    timesteps = disturbance.timesteps
    candidates: List[Tuple[float, int, str, List[int]]] = []  # (gain, cost, feature, timesteps)
    for name, per in disturbance.errors.items():
        tib, cache = per["tib"][key], per["cache"][key]
        cost = row_bytes(disturbance.channels[name], bits)
        if select.per_timestep:
            for index, t in enumerate(timesteps):
                candidates.append((float(tib[index] - cache[index]), cost, name, [t]))
        else:
            candidates.append((float(tib.mean() - cache.mean()), cost * len(timesteps), name, list(timesteps)))
    beneficial = [item for item in candidates if item[0] > 0]
    budget = select.cache_budget_bytes
    if budget is not None:
        beneficial.sort(key=lambda item: -item[0] / item[1])  # stable: ties keep feature / timestep order
        taken, spent = [], 0
        for item in beneficial:
            if spent + item[1] <= budget:
                taken.append(item)
                spent += item[1]
        beneficial = taken
    cached: Dict[str, List[int]] = {name: [] for name in disturbance.errors}
    for _, _, name, chosen in beneficial:
        cached[name].extend(chosen)
    order = {t: index for index, t in enumerate(timesteps)}
    cached = {name: sorted(chosen, key=order.__getitem__) for name, chosen in cached.items()}
    full = sum(row_bytes(channels, bits) * len(timesteps) for channels in disturbance.channels.values())
    spent_total = sum(row_bytes(disturbance.channels[name], bits) * len(chosen) for name, chosen in cached.items())
    return Selection(select.metric, select.per_timestep, cached, spent_total, full, budget, disturbance)


def select_maintenance(
    unet_q: nn.Module, unet_fp: nn.Module, context: TimestepContext, timesteps: Sequence[int], select: SelectConfig,
    bits: int,
) -> Selection:  # fmt: skip
    """Measure both options and choose (DESIGN 1.6); the caller installs the result with ``install_cache``."""
    return choose(measure_disturbance(unet_q, unet_fp, context, timesteps, bits), select, bits)

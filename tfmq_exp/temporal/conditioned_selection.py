"""Disturbance-aware selection where the temporal features also depend on conditioning (DESIGN 1.6; ours).

With class labels or SD-XL's added conditioning, ``e_i(t, c) = proj_i(act(h(t) + a(c)))``: only ``h(t)`` depends
on ``t`` alone, so the cache can hold ``h(t)`` and nothing per feature. The choice is then one decision for the
whole time embedding: the quantized time MLP (``tib``) or the full-precision ``h(t)`` quantized per row
(``cache``). Both are measured on the calibration set's ``(t, c)`` pairs as the relative error of every temporal
feature against the full-precision ``e_i(t, c)`` (``feature_mse``: relative MSE; ``feature_cos``: ``1 - cos``),
averaged over the features; the smaller wins (ties keep the TIB). The activation quantizers are not calibrated
at this point of the pipeline (they are fitted after the blocks), so both options are measured with quantized
weights and floating-point activations: like with like.
"""

from __future__ import annotations

import copy
from typing import Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from tfmq_exp.quant.switches import quant_state
from tfmq_exp.conditioning import nest
from tfmq_exp.config.schema import SelectConfig
from tfmq_exp.stage_results import TimeEmbeddingSelection
from tfmq_exp.errors import UserError
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant.context import TimestepContext

PAIRS = 256  # (t, c) pairs measured: every timestep, then random rows
SCORES = {"feature_mse": "rel_mse", "feature_cos": "cos_distance"}


@torch.no_grad()
def _features(unet: nn.Module, context: TimestepContext, steps: Tensor, conditioning: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    adapter = get_adapter(unet)
    rows: Dict[str, list[Tensor]] = {}
    for index, t in enumerate(steps.tolist()):
        with context.at(int(t)):
            values = adapter.temporal_features([int(t)], nest({k: v[index : index + 1] for k, v in conditioning.items()}))
        for name, value in values.items():
            rows.setdefault(name, []).append(value.double().cpu())
    return {name: torch.cat(parts) for name, parts in rows.items()}


def _errors(reference: Dict[str, Tensor], option: Dict[str, Tensor]) -> Dict[str, float]:
    rel, cos = [], []
    for name, target in reference.items():
        diff = (option[name] - target).pow(2).mean(dim=1)
        rel.append(diff / target.pow(2).mean(dim=1).clamp_min(1e-30))
        cos.append(1.0 - torch.nn.functional.cosine_similarity(option[name], target, dim=1))
    return {"rel_mse": float(torch.cat(rel).mean()), "cos_distance": float(torch.cat(cos).mean())}


def select_time_embedding(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    context: TimestepContext,
    timesteps: Sequence[int],
    conditioning: Mapping[str, Tensor],
    select: SelectConfig,
    bits: int,
    seed: int = 0,
) -> TimeEmbeddingSelection:
    """Measure the quantized time MLP against the cached ``h(t)`` on calibration ``(t, c)`` pairs and choose.

    Raises:
        UserError: per-timestep selection or a memory budget is asked for (one decision covers every feature
            and timestep here), or ``select.metric`` is ``block_output_mse``.
    """
    from tfmq_exp.recon.tiar import conditioned_pairs
    from tfmq_exp.temporal.maintenance import install_cache

    if select.per_timestep or select.cache_budget_bytes is not None or select.metric not in SCORES:
        raise UserError(
            "with conditioned temporal features the selection is one choice for the whole time embedding: use "
            "method.select.per_timestep=false, no cache_budget_bytes, and metric feature_mse or feature_cos"
        )
    if not conditioning:
        raise UserError("the temporal features depend on conditioning, but the calibration data has none")
    steps, rows = conditioned_pairs(timesteps, dict(conditioning), PAIRS, seed)
    reference = _features(unet_fp, TimestepContext(), steps, rows)
    cached = copy.deepcopy(unet_q)
    install_cache(cached, unet_fp, context, timesteps, bits)
    with quant_state(unet_q, weight=True, act=False), quant_state(cached, weight=True, act=False):
        options = {"tib": _features(unet_q, context, steps, rows), "cache": _features(cached, context, steps, rows)}
    errors = {option: _errors(reference, values) for option, values in options.items()}
    key = SCORES[select.metric]
    choice = "cache" if errors["cache"][key] < errors["tib"][key] else "tib"
    return TimeEmbeddingSelection(select.metric, choice, errors, int(steps.shape[0]))

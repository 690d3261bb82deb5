"""Per-timestep (FSC) activation parameters in deployment: timestep groups with equal parameters.

FSC gives each activation quantizer one ``(s_t, z_t)`` per sampling timestep (``LayerQParams.act_per_timestep``,
filled from the core's :class:`~tfmq_exp.quant.ActQuantizer` tables by :func:`~tfmq_exp.deploy.from_quantized.
deployment_inputs`). One static QDQ graph holds one scale per tensor, so the deployed model is one graph per
*group* of timesteps whose parameters are equal on every layer (one group per timestep when they all differ),
all groups sharing the same int8 weights (:mod:`tfmq_exp.deploy.grouped_onnx`). Nothing is re-calibrated: a
group's static parameters are the FSC table's entry at its timesteps.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

from tfmq_exp.deploy.qparams import LayerQParams

ActKey = Tuple[Tuple[str, float, int], ...]


def per_timestep_layers(qparams: Dict[str, LayerQParams]) -> List[str]:
    """Names of the layers with per-timestep activation parameters."""
    return sorted(name for name, params in qparams.items() if params.is_per_timestep)


def fsc_timesteps(qparams: Dict[str, LayerQParams]) -> List[int]:
    """The timesteps every per-timestep layer was calibrated on, in decreasing (sampling) order.

    Raises:
        ValueError: no per-timestep layer, or the layers' timestep sets differ.
    """
    sets = {frozenset(qparams[name].act_per_timestep) for name in per_timestep_layers(qparams)}
    if len(sets) != 1:
        raise ValueError(f"expected one common FSC timestep set, found {len(sets)}")
    return sorted(next(iter(sets)), reverse=True)


def _key(qparams: Dict[str, LayerQParams], names: Sequence[str], timestep: int) -> ActKey:
    return tuple((name, *qparams[name].act_per_timestep[timestep]) for name in names)


def timestep_groups(qparams: Dict[str, LayerQParams]) -> List[Tuple[int, ...]]:
    """Timesteps grouped by equal activation parameters on every per-timestep layer (groups in sampling order)."""
    names = per_timestep_layers(qparams)
    groups: Dict[ActKey, List[int]] = {}
    for timestep in fsc_timesteps(qparams):
        groups.setdefault(_key(qparams, names, timestep), []).append(timestep)
    return [tuple(members) for members in groups.values()]


def qparams_at(qparams: Dict[str, LayerQParams], timestep: int) -> Dict[str, LayerQParams]:
    """Static parameters for one timestep: each FSC layer's ``(s_t, z_t)``, the other layers unchanged."""
    static: Dict[str, LayerQParams] = {}
    for name, params in qparams.items():
        if params.is_per_timestep:
            scale, zero_point = params.act_per_timestep[timestep]
            params = dataclasses.replace(params, act_scale=scale, act_zero_point=zero_point, act_per_timestep=None)
        static[name] = params
    return static

"""FSC (DESIGN 1.4): which activation quantizers get per-timestep parameters ``(s_t, z_t)`` over the sampler's
finite timestep set, and the TIB-only calibration that disturbance-aware selection needs before block
reconstruction.

The per-timestep parameters themselves live in :class:`~tfmq_exp.quant.ActQuantizer` (``enable_per_timestep``);
the full calibration pass that fills them is :func:`tfmq_exp.calib.activation.calibrate_activations`.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn

from tfmq_exp.quant.switches import quant_state
from tfmq_exp.config.schema import MethodConfig
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import QuantModule, TimestepContext, enable_per_timestep, observing_activations
from tfmq_exp.quant.layout import find_submodule


def fsc_modules(unet_q: nn.Module, method: MethodConfig) -> Optional[list[nn.Module]]:
    """The modules whose activation quantizers get per-timestep parameters under ``method`` (DESIGN 1.4).

    Args:
        unet_q: the quantized UNet.
        method: ``fsc`` and ``fsc_scope`` are used.

    Returns:
        ``None`` without FSC; ``[unet_q]`` for ``fsc_scope=all``; for ``tib`` the quantized TIB layers (the
        time-embedding MLP's Linears and every ResNet's ``time_emb_proj``, whose inputs are the temporal
        activations).
    """
    if not method.fsc:
        return None
    if method.fsc_scope == "all":
        return [unet_q]
    return tib_layers(unet_q)


def tib_layers(unet_q: nn.Module) -> list[nn.Module]:
    """The quantized TIB layers of ``unet_q`` (whose inputs are the temporal activations)."""
    modules = [find_submodule(unet_q, name) for name in get_adapter(unet_q).tib().layer_names()]
    return [module for module in modules if isinstance(module, QuantModule)]


@torch.no_grad()
def calibrate_tib_activations(
    unet_q: nn.Module, timesteps: Sequence[int], context: TimestepContext, per_timestep: bool, fsc_range: str = "minmax"
) -> None:
    """Calibrate the TIB's activation quantizers alone, from the TIB's own forward at each timestep.

    The TIB's activations depend on ``t`` alone (and its weights), so one evaluation per ``t`` gives exactly the
    ranges the full calibration pass gives them with FSC. Disturbance-aware selection needs them before block
    reconstruction (DESIGN 1.6); the full pass later recomputes the same values.

    Args:
        unet_q: the quantized UNet (TIAR done).
        timesteps: the sampler's finite timestep set.
        context: the shared timestep context.
        per_timestep: FSC (per-timestep parameters) on the TIB's quantizers.
        fsc_range: FSC's range statistic.
    """
    layers = tib_layers(unet_q)
    if not layers:
        return
    if per_timestep:
        enable_per_timestep(layers, timesteps, context, fsc_range)
    adapter = get_adapter(unet_q)
    with contextlib.ExitStack() as stack:
        stack.enter_context(quant_state(unet_q, weight=True, act=False))
        for layer in layers:
            stack.enter_context(observing_activations(layer))
        for t in timesteps:
            with context.at(t):
                adapter.temporal_features([t])

"""Bridge from a calibrated fake-quant UNet (``tfmq_exp.quant``) to the deployment format.

Lowering uses the project's own calibration: the reconstructed (AdaRound) weight codes and the calibrated
activation scales / zero points, exported with :func:`tfmq_exp.quant.export_layer_qparams` - nothing is
re-calibrated. Supported: static activation parameters on every lowered layer, and per-timestep (FSC)
parameters on the TIB's layers, which cache-based deployment removes from the graph, or on every layer
(``allow_per_timestep=True``: one graph per timestep group, :mod:`tfmq_exp.deploy.grouped_onnx`). Not supported
(clear errors): activations off (W4A32 has no integer kernel), Q-Diffusion's split activation / weight
quantizers (two sets of parameters for one layer).
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.errors import UserError
from tfmq_exp.quant import export_layer_qparams
from tfmq_exp.temporal.maintenance import iter_cache_modules


OperandQParams = Tuple[float, int, int]  # (scale, zero_point, bits) of one static per-tensor activation quantizer
ATTENTION_OPERANDS = ("query", "key", "softmax", "value")


def attention_inputs(unet_q: nn.Module) -> Dict[str, Dict[str, OperandQParams]]:
    """The calibrated parameters of the attention matmuls' operands (q, k, softmax(q k^T), v), for deployment.

    The fake-quant model quantizes both products of every attention (:class:`~tfmq_exp.quant.attention.
    QuantAttnProcessor`, as Q-Diffusion's ``quant_act_attn``); an int8 graph that does the same runs them as
    integer matmuls. Only static per-tensor operands of at most 8 bits are returned (uint8 kernels); per-timestep
    (FSC) operands, identity ones and wider probabilities (e.g. ``quant.softmax_bits=16``) stay in float.

    Returns:
        Attention module name -> operand name -> ``(scale, zero_point, bits)``; attentions with no such
        operand are left out.
    """
    operands: Dict[str, Dict[str, OperandQParams]] = {}
    for name, entry in export_layer_qparams(unet_q).items():
        if "weight" in entry:
            continue
        static = {
            operand: (float(act["scale"]), int(act["zero_point"]), int(act["bits"]))
            for operand in ATTENTION_OPERANDS
            if (act := entry.get(operand)) is not None and act["timesteps"] is None and act["bits"] <= 8
        }
        if static:
            operands[name] = static
    return operands


def _float_name(name: str, wrappers: Iterable[str]) -> str:
    """The full-precision model's name of a quantized layer: a TIB layer that a temporal-feature cache module keeps
    as its fallback (``<module>.fallback[.<child>]``, selected per timestep) is ``<module>[.<child>]`` there."""
    for wrapper in wrappers:
        prefix = f"{wrapper}.fallback"
        if name == prefix or name.startswith(prefix + "."):
            return wrapper + name[len(prefix):]
    return name


def deployment_inputs(
    unet_q: nn.Module, unet_fp: nn.Module, removed_by_cache: Iterable[str] = (), allow_per_timestep: bool = False
) -> Tuple[nn.Module, Dict[str, LayerQParams]]:
    """Return a float UNet holding the quantized weights on their grid, and its per-layer parameters.

    Args:
        unet_q: a calibrated quantized UNet (weights frozen or round-to-nearest).
        unet_fp: its full-precision twin (copied; not modified).
        removed_by_cache: names of layers a temporal-feature cache removes from the deployed graph; their
            per-timestep (FSC) activation parameters are allowed and ignored.
        allow_per_timestep: allow per-timestep (FSC) activation parameters on every layer (kept in
            ``act_per_timestep``; the static ``act_scale`` is then the widest one, a placeholder).

    Returns:
        ``(float_unet, qparams)`` for :func:`tfmq_exp.deploy.lower_to_int8`. The float UNet's quantized layers
        carry ``s (q - z)`` exactly, so re-quantizing them with ``qparams`` reproduces the codes.

    Raises:
        UserError: the quantized model uses a feature the integer kernels cannot run.
    """
    removed = set(removed_by_cache)
    float_unet = copy.deepcopy(unet_fp).eval()
    qparams: Dict[str, LayerQParams] = {}
    wrappers = [name for name, _ in iter_cache_modules(unet_q)]
    for wrapped_name, entry in export_layer_qparams(unet_q).items():
        name = _float_name(wrapped_name, wrappers)
        if "weight" not in entry:  # attention processors: their matmuls stay in floating point
            continue
        if entry.get("act_split") is not None or entry.get("weight_split") is not None:
            raise UserError(f"{name} uses split activation / weight quantizers (split_shortcut); lower a model "
                            "quantized with method.split_shortcut=false")
        act = entry["act"]
        if act is None:
            raise UserError(f"{name} has full-precision activations; integer kernels need a_bits <= 8 (e.g. w4a8)")
        per_timestep: Optional[Dict[int, Tuple[float, int]]] = None
        if act["timesteps"] is not None:
            if name not in removed and not allow_per_timestep:
                raise UserError(f"{name} has per-timestep (FSC) activation parameters; deployment supports them "
                                "only on the TIB with cache-based maintenance (method=tfmq_cache), or one graph per "
                                "timestep group (allow_per_timestep=True)")
            per_timestep = {int(t): (float(s), int(z)) for t, s, z in zip(act["timesteps"], act["scale"], act["zero_point"])}
            scale, zero_point = float(act["scale"].max()), int(act["zero_point"][int(act["scale"].argmax())])
        else:
            scale, zero_point = float(act["scale"]), int(act["zero_point"])
        weight = entry["weight"]
        with torch.no_grad():
            float_unet.get_submodule(name).weight.copy_(weight["dequantized"])
        qparams[name] = LayerQParams(
            weight_scale=weight["scale"], weight_zero_point=weight["zero_point"], w_bits=weight["bits"],
            act_scale=scale, act_zero_point=zero_point, a_bits=act["bits"], act_per_timestep=per_timestep,
        )
    return float_unet, qparams

"""Export of the calibrated quantization parameters per layer (for lowering to real integer kernels)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.adaround import WeightQuantizer
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.modules import QuantModule

PROCESSOR_SUFFIX = ".processor"


def act_qparams(quantizer: Optional[ActQuantizer]) -> Optional[Dict[str, Any]]:
    """Parameters of one activation quantizer.

    Args:
        quantizer: the quantizer, or ``None`` (no split quantizer).

    Returns:
        ``None`` for a missing or identity (``bits=None``) quantizer; else ``{"bits", "unsigned",
        "calibrated", "scale", "zero_point", "timesteps"}``: per tensor, ``scale`` is a 0-d float tensor,
        ``zero_point`` a 0-d int64 tensor and ``timesteps`` ``None``; per timestep (FSC) they are ``[T]``
        tensors aligned with the ``timesteps`` list.
    """
    if quantizer is None or quantizer.is_identity:
        return None
    if quantizer.per_timestep:
        scale, zero_point = quantizer.timestep_scale, quantizer.timestep_zero_point
    else:
        scale, zero_point = quantizer.scale, quantizer.zero_point
    return {
        "bits": quantizer.bits,
        "unsigned": quantizer.unsigned,
        "calibrated": quantizer.is_calibrated,
        "scale": scale.detach().cpu().clone(),
        "zero_point": zero_point.detach().cpu().round().to(torch.int64),
        "timesteps": quantizer.calibrated_timesteps() if quantizer.per_timestep else None,
    }


def weight_qparams(quantizer: WeightQuantizer, weight: torch.Tensor) -> Dict[str, Any]:
    """Parameters of one weight quantizer on the part of the weight it quantizes.

    Returns:
        ``{"bits", "axis" (0), "scale" [C], "zero_point" [C] int64, "rounding", "codes", "dequantized"}``:
        ``codes`` are the integer codes ``q`` (int64, shaped like ``weight``, from the rounding in use),
        ``dequantized`` is ``s (q - z)``, what the fake-quant forward multiplies with.
    """
    dequantized = quantizer(weight).detach()
    scale, zero_point = quantizer.scale_for(dequantized), quantizer.zero_point_for(dequantized)
    codes = torch.round(dequantized / scale + zero_point).to(torch.int64)
    return {
        "bits": quantizer.bits,
        "axis": 0,
        "scale": quantizer.scale.detach().cpu().clone(),
        "zero_point": quantizer.zero_point.detach().cpu().round().to(torch.int64),
        "rounding": quantizer.rounding,
        "codes": codes.cpu(),
        "dequantized": dequantized.cpu().clone(),
    }


@torch.no_grad()
def layer_qparams(module: QuantModule) -> Dict[str, Any]:
    """Weight and input parameters of one quantized layer.

    Args:
        module: a :class:`QuantModule`.

    Returns:
        ``{"type", "split", "weight": {...}, "weight_split": {...} | None, "act": {...} | None,
        "act_split": {...} | None}``; ``weight`` / ``weight_split`` are :func:`weight_qparams` dicts. Without
        a split ``weight`` covers the whole weight; with a split (Q-Diffusion) ``weight`` covers
        ``weight[:, :split]`` and ``weight_split`` ``weight[:, split:]``, each with its own per-channel scale.
    """
    parts = {name: weight_qparams(quantizer, part) for name, quantizer, part in module.weight_parts()}
    return {
        "type": type(module).__name__,
        "split": module.split,
        "weight": parts["weight_quantizer"],
        "weight_split": parts.get("weight_quantizer_split"),
        "act": act_qparams(module.act_quantizer),
        "act_split": act_qparams(module.act_quantizer_split),
    }


def export_layer_qparams(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """Quantization parameters of every quantized layer and attention processor in ``model``.

    Args:
        model: a quantized (and calibrated) model.

    Returns:
        Module name -> dict. Layers: see :func:`layer_qparams`. Attention modules (keyed by the
        ``Attention`` module's name): ``{"type": "QuantAttnProcessor", "query", "key", "softmax",
        "value"}``, each an :func:`act_qparams` dict (``None`` when activations are off).
    """
    params: Dict[str, Dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            params[name] = layer_qparams(module)
        elif isinstance(module, QuantAttnProcessor):
            key = name[: -len(PROCESSOR_SUFFIX)] if name.endswith(PROCESSOR_SUFFIX) else name
            params[key] = {
                "type": type(module).__name__,
                "query": act_qparams(module.query_quantizer),
                "key": act_qparams(module.key_quantizer),
                "softmax": act_qparams(module.softmax_quantizer),
                "value": act_qparams(module.value_quantizer),
            }
    return params

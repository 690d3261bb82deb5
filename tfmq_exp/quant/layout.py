"""Where the quantized parts of a model are, and its layout as a serialisable map.

:func:`quantization_map` records the current layout (per layer: spec, weight rounding state, per-timestep
timestep sets); :func:`apply_quantization_map` rebuilds that layout on a fresh float model so a saved state
dict can be loaded into it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from diffusers.models.attention_processor import Attention
from torch import nn

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.modules import QuantModule, quant_module_class_by_name
from tfmq_exp.quant.spec import AttnQuantSpec, LayerQuantSpec, QuantizationMap

PROCESSOR_SUFFIX = ".processor"


def iter_quant_modules(model: nn.Module) -> Iterator[Tuple[str, QuantModule]]:
    """``(name, module)`` for every quantized Conv2d / Linear in ``model`` (``model`` itself included)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            yield name, module


def iter_attn_processors(model: nn.Module) -> Iterator[Tuple[str, QuantAttnProcessor]]:
    """``(attention module name, processor)`` for every :class:`QuantAttnProcessor` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QuantAttnProcessor):
            yield (name[: -len(PROCESSOR_SUFFIX)] if name.endswith(PROCESSOR_SUFFIX) else name), module


def iter_act_quantizers(model: nn.Module) -> Iterator[Tuple[str, ActQuantizer]]:
    """``(name, quantizer)`` for every :class:`ActQuantizer` in ``model`` (layers and attention)."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            yield name, module


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted path ``name`` of ``model`` (replacing the module there)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _act_timesteps(pairs: Iterable[Tuple[str, ActQuantizer]]) -> Dict[str, List[int]]:
    return {name: quantizer.calibrated_timesteps() for name, quantizer in pairs if quantizer.per_timestep}


def quantization_map(model: nn.Module) -> QuantizationMap:
    """Record the current quantization layout of ``model`` (specs, rounding state, per-timestep sets).

    Args:
        model: a model quantized by :func:`quantize_` (or rebuilt by :func:`apply_quantization_map`).

    Returns:
        The map, in module order.
    """
    layers: Dict[str, Dict[str, object]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            layers[name] = {
                "type": type(module).__name__,
                **module.spec.to_dict(),
                "weight_rounding": module.weight_quantizer.rounding,
                "act_timesteps": _act_timesteps(module.act_quantizers()),
            }
    for name, processor in iter_attn_processors(model):
        layers[name] = {
            "type": type(processor).__name__,
            **processor.spec.to_dict(),
            "act_timesteps": _act_timesteps(processor.act_quantizers()),
        }
    return QuantizationMap(layers=layers)


def apply_quantization_map(
    model: nn.Module, quant_map: QuantizationMap, context: Optional[TimestepContext] = None
) -> None:
    """Rebuild a quantized layout on a float model, without calibration (to load a state dict into).

    Args:
        model: a fresh float model of the same architecture (modified in place).
        quant_map: the map saved with the quantized model.
        context: timestep context for per-timestep quantizers (may be attached later).

    Raises:
        ValueError: the model lacks a mapped module or has a different layer type there (all listed).
    """
    problems: List[str] = []
    plans: List[Tuple[str, Dict[str, object], nn.Module]] = []
    for name, entry in quant_map.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: missing in the model")
            continue
        if entry["type"] == QuantAttnProcessor.__name__:
            if not isinstance(module, Attention):
                problems.append(f"{name}: expected a diffusers Attention, found {type(module).__name__}")
        else:
            try:
                expected = quant_module_class_by_name(str(entry["type"])).float_type
            except KeyError as error:
                problems.append(f"{name}: {error.args[0]}")
                continue
            if type(module) is not expected:
                problems.append(f"{name}: expected {expected.__name__}, found {type(module).__name__}")
        plans.append((name, entry, module))
    if problems:
        raise ValueError("the model does not match the quantization map:\n  " + "\n  ".join(problems))
    for name, entry, module in plans:
        if entry["type"] == QuantAttnProcessor.__name__:
            processor = QuantAttnProcessor.for_attention(module, AttnQuantSpec.from_dict(entry))
            module.set_processor(processor)
            pairs = processor.act_quantizers()
        else:
            quantized = quant_module_class_by_name(str(entry["type"])).from_float(
                module, LayerQuantSpec.from_dict(entry), init_weight_range=False
            )
            rounding = entry.get("weight_rounding", "nearest")
            if rounding == "adaround":
                quantized.weight_quantizer.allocate_adaround(quantized.weight.shape)
            elif rounding == "frozen":
                quantized.weight_quantizer.allocate_frozen(quantized.weight.shape)
            replace_module(model, name, quantized)
            pairs = quantized.act_quantizers()
        timesteps = entry.get("act_timesteps", {})
        for quantizer_name, quantizer in pairs:
            if quantizer_name in timesteps:
                quantizer.enable_per_timestep(timesteps[quantizer_name], context)

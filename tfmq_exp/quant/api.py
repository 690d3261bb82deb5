"""Model-level quantization API: ``quantize_`` (in-place module replacement), quantization maps, and the
switches other stages use (quant state, activation calibration, AdaRound, freezing, per-timestep mode).

Layer choice is data: a Conv2d / Linear is quantized when its dotted module name matches one of
``model_cfg.quant_patterns`` and none of ``model_cfg.fp_patterns`` (``fnmatch``, case-sensitive); the
replacement class comes from the registry in :mod:`tfmq_exp.quant.modules`. Attention modules (diffusers
``Attention``) matching the same patterns get a :class:`QuantAttnProcessor`.
"""

from __future__ import annotations

import contextlib
from fnmatch import fnmatchcase
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from diffusers.models.attention_processor import Attention
from torch import nn

from tfmq_exp.config.schema import MethodConfig, ModelConfig, QuantConfig
from tfmq_exp.quant.adaround import WeightQuantizer
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.context import TimestepContext
from tfmq_exp.quant.export import export_layer_qparams
from tfmq_exp.quant.layout import (
    apply_quantization_map,
    iter_act_quantizers,
    iter_attn_processors,
    iter_quant_modules,
    quantization_map,
    replace_module,
)
from tfmq_exp.quant.modules import QuantModule, quant_module_class
from tfmq_exp.quant.spec import AttnQuantSpec, LayerQuantSpec, QuantizationMap

__all__ = [
    "adaround_parameters",
    "apply_quantization_map",
    "enable_adaround",
    "enable_per_timestep",
    "export_layer_qparams",
    "freeze_weights",
    "is_selected",
    "iter_act_quantizers",
    "iter_attn_processors",
    "iter_quant_modules",
    "observing_activations",
    "quantization_map",
    "quantize_",
    "set_quant_state",
    "set_soft_rounding",
    "set_timestep_context",
    "timestep_context_of",
]


def matches_patterns(name: str, quant_patterns: Sequence[str], fp_patterns: Sequence[str]) -> bool:
    """Whether module ``name`` matches a ``quant_patterns`` entry and no ``fp_patterns`` one (fnmatch, case-sensitive)."""
    if any(fnmatchcase(name, pattern) for pattern in fp_patterns):
        return False
    return any(fnmatchcase(name, pattern) for pattern in quant_patterns)


def is_selected(name: str, model_cfg: ModelConfig) -> bool:
    """Whether module ``name`` matches a ``quant_patterns`` entry and no ``fp_patterns`` / ``extra_fp_patterns`` one."""
    return matches_patterns(name, model_cfg.quant_patterns, [*model_cfg.fp_patterns, *model_cfg.extra_fp_patterns])


def quantize_(
    unet: nn.Module,
    quant_cfg: QuantConfig,
    model_cfg: ModelConfig,
    method_cfg: MethodConfig,
    split_points: Optional[Dict[str, int]] = None,
    temporal_names: Optional[Set[str]] = None,
) -> QuantizationMap:
    """Replace the selected layers of ``unet`` in place by quantized ones (DESIGN 1.1).

    Weights get per-channel ranges now (``method_cfg.weight_init``); activation quantizers are created
    uncalibrated (calibrate with :func:`observing_activations`).

    Args:
        unet: the float denoiser (modified in place).
        quant_cfg: bit-widths and quantizer settings.
        model_cfg: ``quant_patterns`` / ``fp_patterns`` select the layers.
        method_cfg: ``weight_init``, ``split_shortcut``, ``act_range`` and ``attention_matmuls``; with
            ``quantize=False`` nothing is changed.
        split_points: layer name -> channel count of the first half of a concatenated input; used when
            ``method_cfg.split_shortcut`` (names of full-precision layers are skipped). A split layer gets
            separate activation and weight quantizers for input channels ``[:split]`` and ``[split:]``.
        temporal_names: names of the TIB's layers; their activations use
            ``quant_cfg.effective_temporal_a_bits``.

    Returns:
        The :class:`QuantizationMap` of what was replaced.

    Raises:
        ValueError: ``unet`` is already quantized, or ``split_points`` / ``temporal_names`` name modules
            that do not exist.
    """
    if not method_cfg.quantize:
        return QuantizationMap()
    if next(iter_quant_modules(unet), None) is not None or next(iter_attn_processors(unet), None) is not None:
        raise ValueError("the model is already quantized")
    split_points = dict(split_points or {})
    temporal_names = set(temporal_names or ())
    known = {name for name, _ in unet.named_modules()}
    unknown = sorted((set(split_points) | temporal_names) - known)
    if unknown:
        raise ValueError(f"split_points / temporal_names name modules that do not exist: {unknown}")

    act_range = method_cfg.act_range or quant_cfg.act_range
    replacements: List[Tuple[str, nn.Module]] = []
    attentions: List[Tuple[str, Attention]] = []
    for name, module in unet.named_modules():
        if not name or not is_selected(name, model_cfg):
            continue
        quant_class = quant_module_class(module)
        if quant_class is not None:
            temporal = name in temporal_names
            spec = LayerQuantSpec(
                w_bits=quant_cfg.w_bits,
                a_bits=quant_cfg.effective_temporal_a_bits if temporal else quant_cfg.a_bits,
                weight_init=method_cfg.weight_init,
                weight_lp=quant_cfg.weight_lp,
                weight_shrink_steps=quant_cfg.weight_shrink_steps,
                act_range=act_range,
                ema_momentum=quant_cfg.ema_momentum,
                split=split_points.get(name, 0) if method_cfg.split_shortcut else 0,
                temporal=temporal,
            )
            replacements.append((name, quant_class.from_float(module, spec)))
        elif isinstance(module, Attention) and method_cfg.attention_matmuls and quant_cfg.a_bits is not None:
            attentions.append((name, module))
    for name, new in replacements:
        replace_module(unet, name, new)
    attn_spec = AttnQuantSpec(quant_cfg.a_bits, act_range, quant_cfg.ema_momentum, quant_cfg.softmax_bits)
    for _, attention in attentions:
        attention.set_processor(QuantAttnProcessor.for_attention(attention, attn_spec))
    return quantization_map(unet)


def set_quant_state(model: nn.Module, weight: bool, act: bool) -> None:
    """Switch weight and activation quantization on or off in every quantized layer and attention processor.

    Args:
        model: a quantized model.
        weight: quantize weights.
        act: quantize activations (layer inputs and q, k, probabilities, v).
    """
    for _, module in iter_quant_modules(model):
        module.set_quant_state(weight, act)
    for _, processor in iter_attn_processors(model):
        processor.set_quant_state(act)


@contextlib.contextmanager
def observing_activations(
    model: nn.Module, reset: bool = True, strict: bool = True, lenient: Sequence[nn.Module] = ()
) -> Iterator[nn.Module]:
    """Calibrate activation ranges: inside the block, every activation quantizer observes and passes through.

    On exit the previous ``observing`` / ``enabled`` flags are restored (also on an exception); after a
    normal exit each quantizer is finalized (``(s, z)`` computed from what it observed).

    Args:
        model: a quantized model.
        reset: forget earlier observations first.
        strict: raise when a quantizer (or a timestep of a per-timestep one) saw no batch; else leave it
            uncalibrated.
        lenient: modules whose quantizers may see too little (the TIB kept inside a temporal-feature cache as its
            fallback runs only on routed timesteps): they keep the parameters they had instead of failing.

    Returns:
        A context manager yielding ``model``.
    """
    quantizers = [(name, q) for name, q in iter_act_quantizers(model) if not q.is_identity]
    saved = [(q.observing, q.enabled) for _, q in quantizers]
    for _, quantizer in quantizers:
        if reset:
            quantizer.reset_observation()
        quantizer.observing, quantizer.enabled = True, False
    try:
        yield model
    finally:
        for (_, quantizer), (observing, enabled) in zip(quantizers, saved):
            quantizer.observing, quantizer.enabled = observing, enabled
    tolerated = {id(q) for module in lenient for _, q in iter_act_quantizers(module)}
    failures = []
    for name, quantizer in quantizers:
        try:
            quantizer.finalize()
        except RuntimeError as error:
            if id(quantizer) not in tolerated:
                failures.append(f"{name}: {error}")
    if failures and strict:
        raise RuntimeError("activation calibration incomplete:\n  " + "\n  ".join(failures))


def _quant_modules_in(module_or_model: nn.Module) -> List[QuantModule]:
    return [module for _, module in iter_quant_modules(module_or_model)]


def enable_adaround(module_or_model: nn.Module, soft: bool = True) -> List[WeightQuantizer]:
    """Start AdaRound on every quantized layer in ``module_or_model`` (a layer, a block or a whole model).

    Args:
        module_or_model: where to look for quantized layers.
        soft: soft rounding ``h(a)`` (for optimisation).

    Returns:
        The weight quantizers now using AdaRound (their ``alpha`` are the variables to optimise; pass them
        to :meth:`RoundingSchedule.loss` for the regulariser).
    """
    quantizers = []
    for module in _quant_modules_in(module_or_model):
        module.enable_adaround(soft=soft)
        quantizers.extend(module.weight_quantizers())
    return quantizers


def adaround_parameters(module_or_model: nn.Module) -> List[nn.Parameter]:
    """The AdaRound variables ``alpha`` of every quantized layer in ``module_or_model`` that has them."""
    quantizers = [q for module in _quant_modules_in(module_or_model) for q in module.weight_quantizers()]
    return [quantizer.alpha for quantizer in quantizers if quantizer.alpha is not None]


def set_soft_rounding(module_or_model: nn.Module, soft: bool) -> None:
    """Switch AdaRound layers between soft ``h(a)`` and hard ``1[a >= 0]`` rounding."""
    for module in _quant_modules_in(module_or_model):
        for quantizer in module.weight_quantizers():
            quantizer.soft = soft


def freeze_weights(module_or_model: nn.Module) -> int:
    """Store the hard-rounded weight codes of every AdaRound layer (drops ``alpha``; float weights kept).

    A layer with a shortcut split freezes both weight halves.

    Returns:
        The number of layers frozen.
    """
    frozen = 0
    for module in _quant_modules_in(module_or_model):
        if any(quantizer.alpha is not None for quantizer in module.weight_quantizers()):
            module.freeze_weight()
            frozen += 1
    return frozen


def enable_per_timestep(
    modules: Union[nn.Module, Sequence[nn.Module]],
    timesteps: Sequence[int],
    context: TimestepContext,
    range_method: str = "minmax",
) -> int:
    """Give every (non-identity) activation quantizer inside ``modules`` per-timestep parameters (FSC).

    Args:
        modules: a module (e.g. the whole UNet for ``fsc_scope=all``) or the TIB's layers.
        timesteps: the sampler's finite timestep set.
        context: the shared context (attach it to the UNet with ``attach_timestep_context``).
        range_method: per-timestep range statistic, ``minmax`` (the paper's) or ``mse``.

    Returns:
        The number of quantizers switched.
    """
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    count = 0
    for module in modules:
        for _, quantizer in iter_act_quantizers(module):
            if not quantizer.is_identity:
                quantizer.enable_per_timestep(timesteps, context, range_method)
                count += 1
    return count


def timestep_context_of(model: nn.Module) -> Optional[TimestepContext]:
    """The context the per-timestep (FSC) quantizers of ``model`` read, or ``None`` when none has per-timestep
    parameters."""
    contexts = {id(q.context): q.context for _, q in iter_act_quantizers(model) if q.per_timestep and q.context}
    if len(contexts) > 1:
        raise ValueError(f"the per-timestep quantizers of this model read {len(contexts)} different timestep contexts")
    return next(iter(contexts.values()), None)


def set_timestep_context(model: nn.Module, context: TimestepContext) -> int:
    """Attach ``context`` to every per-timestep quantizer in ``model`` (after loading); returns the count."""
    count = 0
    for _, quantizer in iter_act_quantizers(model):
        if quantizer.per_timestep:
            quantizer.set_context(context)
            count += 1
    return count

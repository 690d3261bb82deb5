"""Quantization core: quantizers, AdaRound, quantized layers and attention, the quantize / calibrate /
freeze API, per-timestep (FSC) support and self-describing artifacts (DESIGN 1.1, 1.4, 3)."""

from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.adaround import RoundingSchedule, WeightQuantizer, alpha_for_fraction, rectified_sigmoid
from tfmq_exp.quant.api import (
    adaround_parameters,
    apply_quantization_map,
    enable_adaround,
    enable_per_timestep,
    export_layer_qparams,
    freeze_weights,
    is_selected,
    iter_act_quantizers,
    iter_attn_processors,
    iter_quant_modules,
    observing_activations,
    quantization_map,
    quantize_,
    set_quant_state,
    set_soft_rounding,
    set_timestep_context,
    timestep_context_of,
)
from tfmq_exp.quant.artifact import ArtifactError, LoadedArtifact, load_artifact, save_artifact
from tfmq_exp.quant.attention import QuantAttnProcessor
from tfmq_exp.quant.context import TimestepContext, attach_timestep_context, timestep_value
from tfmq_exp.quant.modules import QuantConv2d, QuantLinear, QuantModule, register_quant_module
from tfmq_exp.quant.quantizer import UniformAffineQuantizer, fake_quantize, range_to_qparams, round_ste
from tfmq_exp.quant.spec import AttnQuantSpec, LayerQuantSpec, QuantizationMap
from tfmq_exp.quant.weight_range import minmax_range, shrink_search

__all__ = [
    "ActQuantizer",
    "ArtifactError",
    "AttnQuantSpec",
    "LayerQuantSpec",
    "LoadedArtifact",
    "QuantAttnProcessor",
    "QuantConv2d",
    "QuantLinear",
    "QuantModule",
    "QuantizationMap",
    "RoundingSchedule",
    "TimestepContext",
    "UniformAffineQuantizer",
    "WeightQuantizer",
    "adaround_parameters",
    "alpha_for_fraction",
    "apply_quantization_map",
    "attach_timestep_context",
    "enable_adaround",
    "enable_per_timestep",
    "export_layer_qparams",
    "fake_quantize",
    "freeze_weights",
    "is_selected",
    "iter_act_quantizers",
    "iter_attn_processors",
    "iter_quant_modules",
    "load_artifact",
    "minmax_range",
    "observing_activations",
    "quantization_map",
    "quantize_",
    "range_to_qparams",
    "rectified_sigmoid",
    "register_quant_module",
    "round_ste",
    "save_artifact",
    "set_quant_state",
    "set_soft_rounding",
    "set_timestep_context",
    "timestep_context_of",
    "shrink_search",
    "timestep_value",
]

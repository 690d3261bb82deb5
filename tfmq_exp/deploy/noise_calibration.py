"""Parameters for models without a calibration run (the speed benchmark's): the core's quantizers on noise.

The benchmark times denoisers with random or embedded weights (the CIFAR-10 architecture, the digits model) for
which no calibrated artifact exists. Their parameters come from the same objects as a real run's:
:func:`~tfmq_exp.quant.quantize_` places the core's weight quantizers (per-channel min/max ranges, round to
nearest) and activation quantizers (EMA min/max, DESIGN 1.1) on the layers the model config selects,
:func:`~tfmq_exp.quant.observing_activations` calibrates them on ``(sample, timestep)`` batches of Gaussian noise,
and :func:`~tfmq_exp.deploy.from_quantized.deployment_inputs` hands them to deployment. With
``attention_matmuls=True`` the core's attention processor (:class:`~tfmq_exp.quant.attention.QuantAttnProcessor`,
the project's default ``method.attention_matmuls``) quantizes q, k, the softmax probabilities and v as well, and
:func:`~tfmq_exp.deploy.from_quantized.attention_inputs` hands their parameters to the QDQ export. Nothing here
computes a scale, a zero point or a layer selection of its own.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, NamedTuple, Sequence, Tuple

import torch
from torch import nn

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS, MethodConfig, ModelConfig, QuantConfig
from tfmq_exp.deploy.from_quantized import OperandQParams, attention_inputs, deployment_inputs
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.quant import observing_activations, quantize_


class NoiseCalibration(NamedTuple):
    """What :func:`noise_calibrated` returns.

    Attributes:
        float_unet: a float copy holding the quantized weights on their grid.
        qparams: the Conv2d / Linear layers' parameters (:func:`~tfmq_exp.deploy.from_quantized.deployment_inputs`).
        attention: the attention matmuls' operand parameters (:func:`~tfmq_exp.deploy.from_quantized.
            attention_inputs`); empty unless ``attention_matmuls=True``.
    """

    float_unet: nn.Module
    qparams: Dict[str, LayerQParams]
    attention: Dict[str, Dict[str, OperandQParams]]


@torch.no_grad()
def noise_calibrated(
    unet: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    w_bits: int = 8,
    a_bits: int = 8,
    fp_patterns: Sequence[str] = PUBLISHED_FP_PATTERNS,
    quant_patterns: Sequence[str] = ("*",),
    attention_matmuls: bool = False,
) -> NoiseCalibration:
    """Quantize a copy of ``unet`` with the core's quantizers, calibrate it on ``batches`` and export it.

    Args:
        unet: a denoiser called as ``unet(sample, timestep)`` (not modified).
        batches: ``(sample, timestep)`` pairs (float timesteps).
        w_bits / a_bits: bit-widths.
        fp_patterns / quant_patterns: layer selection, as in ``ModelConfig``.
        attention_matmuls: also quantize the attention matmuls' operands (``MethodConfig.attention_matmuls``).
    """
    unet_q = copy.deepcopy(unet).eval()
    quantize_(
        unet_q,
        QuantConfig(name=f"w{w_bits}a{a_bits}", w_bits=w_bits, a_bits=a_bits),
        ModelConfig(name="noise", quant_patterns=list(quant_patterns), fp_patterns=list(fp_patterns)),
        MethodConfig(name="noise_minmax", weight_init="minmax", act_range="minmax",
                     attention_matmuls=attention_matmuls),
    )
    with observing_activations(unet_q):
        for sample, timestep in batches:
            unet_q(sample, timestep)
    float_unet, qparams = deployment_inputs(unet_q, unet)
    return NoiseCalibration(float_unet, qparams, attention_inputs(unet_q))

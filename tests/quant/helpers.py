"""Helpers shared by the quantization-core tests: SQNR, tiny real diffusers models, configs."""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import UNet2DConditionModel

from tfmq_exp.config.schema import MethodConfig, ModelConfig, QuantConfig
from tfmq_exp.models.digits import build_digits_unet

DIGITS_FP_PATTERNS = ["conv_in", "conv_out", "time_embedding.linear_1", "*.conv_shortcut", "*.downsamplers.*"]


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(E[x^2] / E[(x - x_hat)^2])`` in dB."""
    reference, approximation = reference.detach().float(), approximation.detach().float()
    noise = (reference - approximation).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def digits_model_config() -> ModelConfig:
    return ModelConfig(name="digits", fp_patterns=list(DIGITS_FP_PATTERNS))


def digits_unet(seed: int = 0) -> torch.nn.Module:
    """The real digits UNet architecture with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return build_digits_unet().eval()


def tiny_condition_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny SD-like UNet with cross attention (random weights)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def quant_config(w_bits: int = 8, a_bits: Optional[int] = 8, **overrides) -> QuantConfig:
    return QuantConfig(name=f"w{w_bits}a{a_bits}", w_bits=w_bits, a_bits=a_bits, **overrides)


def method_config(**overrides) -> MethodConfig:
    overrides.setdefault("weight_init", "minmax")
    return MethodConfig(name="test", **overrides)

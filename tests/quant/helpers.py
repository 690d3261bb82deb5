"""Helpers shared by the quantization-core tests: SQNR, tiny real diffusers models, configs."""

from __future__ import annotations

import torch

from tests.helpers import FP_PATTERNS, digits_unet, method_config, model_config, quant_config
from tfmq_exp.config.schema import ModelConfig
from tfmq_exp.models.tiny import build_tiny_unet

__all__ = [
    "digits_model_config", "digits_split_model_config", "digits_unet", "method_config", "quant_config", "sqnr_db",
    "tiny_condition_unet",
]  # fmt: skip


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(E[x^2] / E[(x - x_hat)^2])`` in dB."""
    reference, approximation = reference.detach().float(), approximation.detach().float()
    noise = (reference - approximation).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def digits_model_config() -> ModelConfig:
    return model_config("digits")


def digits_split_model_config(**overrides: object) -> ModelConfig:
    """The digits config with the shortcut convolutions quantized: where Q-Diffusion's shortcut split acts."""
    return model_config("digits", fp_patterns=[p for p in FP_PATTERNS if p != "*.conv_shortcut"], **overrides)


def tiny_condition_unet(seed: int = 0) -> torch.nn.Module:
    """A tiny SD-like UNet with cross attention of width 16 (random weights): four transformer blocks."""
    return build_tiny_unet("sd_shallow", seed)

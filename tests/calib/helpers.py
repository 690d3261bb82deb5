"""Shared by the calibration and reconstruction tests: configs, the tiny digits UNet, quantized copies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from tfmq_exp.config.schema import (
    CalibConfig,
    Config,
    EvalConfig,
    LoggerConfig,
    MethodConfig,
    ModelConfig,
    QuantConfig,
    ReconConfig,
    RuntimeConfig,
    SamplerConfig,
)
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.quant import quantize_

DIGITS_FP_PATTERNS = ["conv_in", "conv_out", "time_embedding.linear_1", "*.conv_shortcut", "*.downsamplers.*"]


def digits_unet(seed: int = 0) -> nn.Module:
    """The real digits UNet architecture with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return build_digits_unet().eval()


def make_config(
    cache_dir: Path,
    *,
    tiar: bool = False,
    fsc: bool = False,
    recon: bool = False,
    iters: int = 40,
    lr: float = 1e-3,
    calib_steps: str = "all",
    quant_patterns: Optional[Sequence[str]] = None,
    num_steps: int = 4,
    num_samples: int = 16,
    recon_samples: int = 32,
    w_bits: int = 4,
    a_bits: Optional[int] = 8,
    seed: int = 0,
    calib_seed: int = 1234,
) -> Config:
    """A small, fast run config on the digits model (DDIM with ``num_steps`` steps)."""
    return Config(
        model=ModelConfig(
            name="digits", fp_patterns=list(DIGITS_FP_PATTERNS), quant_patterns=list(quant_patterns or ["*"])
        ),
        sampler=SamplerConfig(num_steps=num_steps),
        quant=QuantConfig(name=f"w{w_bits}a{a_bits}", w_bits=w_bits, a_bits=a_bits),
        method=MethodConfig(
            name="test",
            weight_init="minmax",
            recon=ReconConfig(enabled=recon, iters=iters, batch_size=8, lr=lr),
            calib_steps=calib_steps,
            tiar=tiar,
            fsc=fsc,
        ),
        calib=CalibConfig(num_samples=num_samples, uniform_every=2, recon_samples=recon_samples, seed=calib_seed),
        eval=EvalConfig(batch_size=16),
        logger=LoggerConfig(mode="disabled"),
        runtime=RuntimeConfig(cache_dir=str(cache_dir), progress=False),
        seed=seed,
    )


def quantized_copy(unet_fp: nn.Module, config: Config) -> nn.Module:
    """A deep copy of ``unet_fp`` quantized by ``config`` (TIB layers flagged temporal)."""
    unet_q = copy.deepcopy(unet_fp)
    tib_names = set(get_adapter(unet_fp).tib().layer_names())
    quantize_(unet_q, config.quant, config.model, config.method, temporal_names=tib_names)
    return unet_q.eval()

"""Shared by the calibration and reconstruction tests: configs, the tiny digits UNet, quantized copies."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from tests import helpers
from tests.helpers import digits_unet, method_config, model_config, quant_config, small_config
from tfmq_exp.config.schema import CalibConfig, Config, ReconConfig

__all__ = ["digits_unet", "make_config", "quantized_copy"]


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
    return small_config(
        quant_config(w_bits, a_bits),
        method_config(
            recon=ReconConfig(enabled=recon, iters=iters, batch_size=8, lr=lr), calib_steps=calib_steps, tiar=tiar,
            fsc=fsc,
        ),
        model=model_config(quant_patterns=list(quant_patterns or ["*"])),
        num_steps=num_steps,
        calib=CalibConfig(num_samples=num_samples, uniform_every=2, recon_samples=recon_samples, seed=calib_seed),
        cache_dir=cache_dir,
        seed=seed,
    )  # fmt: skip


def quantized_copy(unet_fp: nn.Module, config: Config) -> nn.Module:
    """A deep copy of ``unet_fp`` quantized by ``config`` (TIB layers flagged temporal)."""
    return helpers.quantized_copy(unet_fp, config.quant, config.model, config.method)

"""Shared builders for the deploy tests: a tiny random digits UNet and noise calibration."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS
from tfmq_exp.deploy.qparams import LayerQParams, minmax_layer_qparams
from tfmq_exp.models.digits import build_digits_unet

FP_PATTERNS = PUBLISHED_FP_PATTERNS


def digits_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_digits_unet().eval()


def noise_batches(count: int = 3, batch: int = 8, seed: int = 1) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        noise = torch.randn(batch, 1, 8, 8, generator=generator)
        batches.append((noise, torch.randint(0, 1000, (batch,), generator=generator).float()))
    return batches


def calibrated(unet: torch.nn.Module, w_bits: int, symmetric: bool, fp_patterns=FP_PATTERNS) -> Dict[str, LayerQParams]:
    return minmax_layer_qparams(
        unet, noise_batches(), w_bits=w_bits, a_bits=8, fp_patterns=fp_patterns, weight_symmetric=symmetric
    )


def sqnr_db(output: torch.Tensor, reference: torch.Tensor) -> float:
    error = (output - reference).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(reference.pow(2).sum() / error))


def example_inputs(batch: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(batch, 1, 8, 8, generator=generator), torch.tensor([999.0, 649.0, 299.0, 49.0][:batch])

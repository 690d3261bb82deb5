"""Our b-bit grids mapped onto the int8 / uint8 grids of the x86 kernels."""

from __future__ import annotations

import pytest
import torch

from tfmq_exp.deploy.int8_grid import int8_grid_weight, int8_weight_scale, uint8_act_params
from tfmq_exp.deploy.qparams import LayerQParams, fake_quantize_activation, fake_quantize_weight


def _asymmetric(weight: torch.Tensor, bits: int) -> LayerQParams:
    low, high = weight.amin(dim=1).clamp(max=0), weight.amax(dim=1).clamp(min=0)
    scale = (high - low) / (2**bits - 1)
    return LayerQParams(scale, torch.round(-low / scale), bits, 0.1, 0, 8)


def _int8_codes(weight: torch.Tensor, params: LayerQParams, code_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest distance (in steps of our grid) between our on-grid weight and the one the int8 kernel uses."""
    scale, exact = int8_weight_scale(params, code_max)
    snapped = fake_quantize_weight(weight, params)
    kernel_weight = int8_grid_weight(snapped, params, code_max)
    codes = kernel_weight / scale[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= code_max + 1
    return (kernel_weight - snapped).abs().max() / params.weight_scale.max(), exact


@pytest.mark.parametrize("code_max", [127, 63], ids=["vnni", "avx2"])
@pytest.mark.parametrize("bits", [2, 4, 6], ids=["w2", "w4", "w6"])
def test_low_bit_weight_grids_are_exact_in_int8(bits: int, code_max: int) -> None:
    weight = torch.randn(32, 16, generator=torch.Generator().manual_seed(bits))
    error, exact = _int8_codes(weight, _asymmetric(weight, bits), code_max)
    assert bool(exact.all()) and float(error) < 1e-5


def test_eight_bit_weights_exact_only_when_codes_fit() -> None:
    weight = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    scale = weight.abs().amax(dim=1) / 127
    symmetric = LayerQParams(scale, torch.full((32,), 128), 8, 0.1, 0, 8)
    error, exact = _int8_codes(weight, symmetric, 127)
    assert bool(exact.all()) and float(error) < 1e-5
    # 7-bit int8 codes (CPUs without VNNI): re-rounded, within half a step of the coarser grid
    error, exact = _int8_codes(weight, symmetric, 63)
    assert not bool(exact.any()) and float(error) <= 128 / 63 / 2 + 1e-4


@pytest.mark.parametrize("bits", [4, 6, 8], ids=["a4", "a6", "a8"])
def test_uint8_activation_grid_contains_ours(bits: int) -> None:
    scale, zero_point = 0.05, 3
    uint8_scale, uint8_zero_point = uint8_act_params(scale, zero_point, bits)
    x = torch.linspace(-1.0, 5.0, 2001)
    ours = fake_quantize_activation(x, scale, zero_point, bits)
    # every point of our grid survives the uint8 quantizer unchanged
    assert torch.allclose(fake_quantize_activation(ours, uint8_scale, uint8_zero_point, 8), ours, atol=1e-6)
    assert uint8_zero_point * uint8_scale == pytest.approx(zero_point * scale)


def test_more_than_eight_activation_bits_cannot_lower() -> None:
    with pytest.raises(ValueError, match="above 8 bits"):
        uint8_act_params(0.1, 0, 10)

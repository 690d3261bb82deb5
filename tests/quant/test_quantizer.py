"""Uniform affine fake quantization: SQNR per bit-width, straight-through gradients, calibration guard."""

from __future__ import annotations

import pytest
import torch

from tests.quant.helpers import sqnr_db
from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.adaround import WeightQuantizer
from tfmq_exp.quant.quantizer import UniformAffineQuantizer, range_to_qparams

WEIGHT_BITS = [2, 3, 4, 5, 6, 7, 8]
ACT_BITS = [4, 6, 8, 10, 12, 16]


def expected_sqnr(bits: int) -> float:
    """~6 dB per bit, minus a margin for the min/max range of Gaussian data (measured: 6.02 b - 7 dB)."""
    return 6.02 * bits - 9.0


@pytest.mark.parametrize("bits", WEIGHT_BITS, ids=[f"w{b}" for b in WEIGHT_BITS])
def test_weight_fake_quant_sqnr(bits: int) -> None:
    weight = torch.randn(64, 32, 3, 3)
    quantizer = WeightQuantizer(bits, num_channels=64)
    quantizer.init_range(weight, method="minmax")
    quantized = quantizer(weight)
    assert sqnr_db(weight, quantized) > expected_sqnr(bits)
    # every channel lies on its own grid of 2^b levels
    codes = quantized / quantizer.scale.view(-1, 1, 1, 1) + quantizer.zero_point.view(-1, 1, 1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().min() >= 0 and codes.round().max() <= 2**bits - 1


@pytest.mark.parametrize("bits", ACT_BITS, ids=[f"a{b}" for b in ACT_BITS])
def test_activation_fake_quant_sqnr(bits: int) -> None:
    x = torch.randn(4, 64, 8, 8)
    quantizer = ActQuantizer(bits)
    quantizer.observing, quantizer.enabled = True, False
    quantizer(x)
    quantizer.finalize()
    quantizer.observing, quantizer.enabled = False, True
    quantized = quantizer(x)
    assert sqnr_db(x, quantized) > expected_sqnr(bits)
    assert quantized.unique().numel() <= 2**bits


def test_grid_contains_zero_and_matches_formula() -> None:
    quantizer = UniformAffineQuantizer(4)
    quantizer.set_range(torch.tensor(-1.0), torch.tensor(2.0))
    scale, zero_point = range_to_qparams(torch.tensor(-1.0), torch.tensor(2.0), 4)
    assert torch.allclose(quantizer.scale, torch.tensor(3.0 / 15))
    assert quantizer.zero_point == zero_point == 5
    x = torch.tensor([0.0, -5.0, 5.0, 0.21])
    expected = scale * (torch.clamp(torch.round(x / scale) + zero_point, 0, 15) - zero_point)
    assert torch.equal(quantizer(x), expected)
    assert quantizer(torch.zeros(3)).abs().max() == 0  # zero is exactly representable


def test_per_channel_axis() -> None:
    quantizer = UniformAffineQuantizer(8, channel_axis=1, num_channels=3)
    quantizer.set_range(torch.tensor([-1.0, -10.0, 0.0]), torch.tensor([1.0, 10.0, 100.0]))
    low, high = torch.tensor([-1.0, -10.0, 0.0]).view(1, 3, 1), torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1)
    x = low + (high - low) * torch.rand(5, 3, 4)  # inside each channel's range
    error = (quantizer(x) - x).abs().amax(dim=(0, 2))
    assert torch.allclose(quantizer.scale, (high - low).flatten() / 255)
    assert torch.all(error <= quantizer.scale / 2 + 1e-5)  # round-to-nearest on each channel's own grid


def test_straight_through_gradients() -> None:
    quantizer = UniformAffineQuantizer(4)
    quantizer.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    x = torch.tensor([-2.0, -0.33, 0.0, 0.41, 3.0], requires_grad=True)
    quantizer(x).sum().backward()
    # identity inside the range, zero where the clamp is active
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))

    act = ActQuantizer(8)
    act.set_range(-1.0, 1.0)
    y = torch.linspace(-1.5, 1.5, 10, requires_grad=True)  # y / 2 stays inside [-1, 1]
    act(y * 0.5).sum().backward()
    assert torch.allclose(y.grad, torch.full((10,), 0.5))


def test_uncalibrated_use_raises() -> None:
    with pytest.raises(RuntimeError, match="not calibrated"):
        UniformAffineQuantizer(8)(torch.randn(3))
    with pytest.raises(RuntimeError, match="not calibrated"):
        WeightQuantizer(4, num_channels=2)(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="not calibrated"):
        ActQuantizer(8)(torch.randn(3))
    with pytest.raises(RuntimeError, match="before any batch"):
        ActQuantizer(8).finalize()


@pytest.mark.parametrize("bits", [0, 1, 17, 4.0, None], ids=["b0", "b1", "b17", "float", "none"])
def test_bits_validated(bits: object) -> None:
    with pytest.raises(ValueError, match="out of range"):
        UniformAffineQuantizer(bits)  # type: ignore[arg-type]


def test_activation_bits_range_and_identity() -> None:
    with pytest.raises(ValueError, match="activation bits"):
        ActQuantizer(3)
    identity = ActQuantizer(None)
    x = torch.randn(4)
    assert identity(x) is x  # bits=None never quantizes and needs no calibration

"""AdaRound: initialisation, soft / hard rounding, regulariser schedule, freezing."""

from __future__ import annotations

import pytest
import torch

from tfmq_exp.config.schema import ReconConfig
from tfmq_exp.quant.adaround import RoundingSchedule, WeightQuantizer, rectified_sigmoid


def adaround_quantizer(bits: int = 4) -> tuple[WeightQuantizer, torch.Tensor]:
    weight = torch.randn(8, 4, 3, 3)
    quantizer = WeightQuantizer(bits, num_channels=8)
    quantizer.init_range(weight, method="shrink")
    quantizer.enable_adaround(weight)
    return quantizer, weight


def test_initial_h_equals_fractional_part() -> None:
    quantizer, weight = adaround_quantizer()
    scaled = weight / quantizer.scale.view(-1, 1, 1, 1)
    fraction = scaled - scaled.floor()
    assert torch.allclose(rectified_sigmoid(quantizer.alpha), fraction, atol=1e-5)
    # hence the soft-rounded weight starts at the float weight (where no clamp is active)
    inside = quantizer(weight)
    s = quantizer.scale.view(-1, 1, 1, 1)
    z = quantizer.zero_point.view(-1, 1, 1, 1)
    unclamped = ((scaled.floor() + z) >= 0) & ((scaled.ceil() + z) <= 15)
    assert torch.allclose(inside[unclamped], weight[unclamped], atol=1e-4 * s.max().item() + 1e-6)


def test_hard_rounding_is_floor_or_ceil() -> None:
    quantizer, weight = adaround_quantizer(bits=3)
    with torch.no_grad():
        quantizer.alpha.copy_(torch.randn_like(quantizer.alpha) * 3)  # arbitrary learned state
    quantizer.soft = False
    s = quantizer.scale.view(-1, 1, 1, 1)
    z = quantizer.zero_point.view(-1, 1, 1, 1)
    codes = torch.round(quantizer(weight) / s + z)  # integer codes q
    scaled = weight / s
    floor_codes = torch.clamp(scaled.floor() + z, 0, 7)
    ceil_codes = torch.clamp(scaled.floor() + 1 + z, 0, 7)
    assert torch.all((codes == floor_codes) | (codes == ceil_codes))
    expected = torch.clamp(scaled.floor() + (quantizer.alpha >= 0).float() + z, 0, 7)
    assert torch.equal(codes, expected)


def test_soft_rounding_gradient_reaches_alpha_only() -> None:
    quantizer, weight = adaround_quantizer()
    weight.requires_grad_(True)
    quantizer(weight).pow(2).sum().backward()
    assert quantizer.alpha.grad is not None and quantizer.alpha.grad.abs().sum() > 0
    assert weight.grad is None or weight.grad.abs().sum() == 0  # floor(w / s) carries no gradient


def test_freeze_stores_hard_codes() -> None:
    quantizer, weight = adaround_quantizer()
    with torch.no_grad():
        quantizer.alpha.add_(torch.randn_like(quantizer.alpha))
    quantizer.soft = False
    hard = quantizer(weight)
    quantizer.freeze(weight)
    assert quantizer.rounding == "frozen" and quantizer.alpha is None
    assert quantizer.weight_codes.dtype == torch.uint8
    assert torch.equal(quantizer(weight), hard)
    assert torch.equal(quantizer(torch.zeros_like(weight)), hard)  # frozen: independent of the input
    assert "weight_codes" in quantizer.state_dict() and "alpha" not in quantizer.state_dict()


def test_regulariser_value() -> None:
    quantizer, _ = adaround_quantizer()
    h = rectified_sigmoid(quantizer.alpha)
    assert torch.allclose(quantizer.regularizer(3.0), (1 - (2 * h - 1).abs().pow(3.0)).sum())
    with torch.no_grad():
        quantizer.alpha.fill_(10.0)  # h = 1 everywhere: nothing left to regularise
    assert quantizer.regularizer(2.0) == 0


def test_schedule_warmup_and_beta_endpoints() -> None:
    schedule = RoundingSchedule(iters=100, warmup=0.2, beta_start=20.0, beta_end=2.0)
    quantizer, _ = adaround_quantizer()
    assert schedule.warmup_iters == 20
    assert not schedule.is_active(0) and not schedule.is_active(19) and schedule.is_active(20)
    assert schedule.loss(10, [quantizer], reg_lambda=0.01) == 0  # off during warmup
    assert schedule.beta(0) == 20.0 and schedule.beta(20) == 20.0
    assert schedule.beta(99) == pytest.approx(2.0)
    assert schedule.beta(20) > schedule.beta(50) > schedule.beta(99)
    assert schedule.beta(59.5) == pytest.approx(11.0)  # linear: halfway between 20 and 99
    loss = schedule.loss(60, [quantizer], reg_lambda=0.01)
    assert torch.allclose(loss, 0.01 * quantizer.regularizer(schedule.beta(60)))
    from_config = RoundingSchedule.from_recon_config(ReconConfig(iters=50))
    assert (from_config.iters, from_config.warmup, from_config.beta_start, from_config.beta_end) == (50, 0.2, 20, 2)


def test_schedule_validates() -> None:
    with pytest.raises(ValueError, match="warmup"):
        RoundingSchedule(iters=10, warmup=1.0)
    with pytest.raises(ValueError, match="iters"):
        RoundingSchedule(iters=0)


def test_enable_requires_calibration() -> None:
    with pytest.raises(RuntimeError, match="not calibrated"):
        WeightQuantizer(4, num_channels=2).enable_adaround(torch.randn(2, 3))

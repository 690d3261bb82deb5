"""LayerQParams validation, grid helpers and min/max calibration on the tiny digits UNet."""

from __future__ import annotations

import pytest
import torch

from tests.deploy.helpers import FP_PATTERNS, calibrated, digits_unet, noise_batches
from tfmq_exp.deploy.qparams import (
    LayerQParams,
    fake_quantize_weight,
    quantize_weight_codes,
    QUANTIZABLE_TYPES,
)
from tfmq_exp.quant.api import matches_patterns


def _params(**overrides) -> LayerQParams:
    values = dict(weight_scale=torch.ones(4), weight_zero_point=torch.full((4,), 8), w_bits=4,
                  act_scale=0.1, act_zero_point=3, a_bits=8)
    values.update(overrides)
    return LayerQParams(**values)


@pytest.mark.parametrize(
    "overrides",
    [
        {"w_bits": 9},
        {"a_bits": 1},
        {"weight_scale": torch.tensor([1.0, 0.0, 1.0, 1.0])},
        {"weight_zero_point": torch.full((4,), 16)},
        {"weight_zero_point": torch.full((3,), 8)},
        {"weight_zero_point": torch.full((4,), 2.5)},
        {"act_scale": -1.0},
        {"act_zero_point": 256},
        {"act_per_timestep": {10: (0.1, 300)}},
    ],
    ids=["w_bits", "a_bits", "zero_scale", "zp_range", "zp_shape", "zp_fraction", "act_scale", "act_zp", "fsc_zp"],
)
def test_invalid_params_raise(overrides: dict) -> None:
    with pytest.raises(ValueError):
        _params(**overrides)


def test_params_are_normalised() -> None:
    params = _params(weight_zero_point=[8.0, 7.0, 8.0, 9.0], act_per_timestep={10.0: (0.2, 4)})
    assert params.weight_zero_point.dtype == torch.int32
    assert params.is_per_timestep and params.act_per_timestep == {10: (0.2, 4)}
    assert params.weight_qmax == 15 and params.act_qmax == 255


def test_weight_grid_is_idempotent_and_within_half_a_step() -> None:
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    params = _params(weight_scale=torch.full((4,), 0.3))
    snapped = fake_quantize_weight(weight, params)
    inside = weight.clamp(-8 * 0.3, 7 * 0.3)
    assert torch.all((snapped - inside).abs() <= 0.15 + 1e-6)
    assert torch.equal(fake_quantize_weight(snapped, params), snapped)
    codes = quantize_weight_codes(weight, params)
    assert codes.min() >= 0 and codes.max() <= 15


def test_noise_calibration_uses_the_core_selection_and_ranges() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=4)
    selected = [name for name, module in unet.named_modules()
                if isinstance(module, QUANTIZABLE_TYPES) and matches_patterns(name, ("*",), FP_PATTERNS)]
    assert sorted(qparams) == sorted(selected)
    assert "conv_in" not in qparams and "down_blocks.0.resnets.0.conv1" in qparams
    # the activation grid (EMA of the batches' min / max) lies within what the layer saw, widened by one step
    name = "mid_block.attentions.0.to_q"
    params = qparams[name]
    seen = []
    handle = unet.get_submodule(name).register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        for sample, timestep in noise_batches():
            unet(sample, timestep)
    handle.remove()
    observed = torch.cat([x.flatten() for x in seen])
    low = params.act_scale * (0 - params.act_zero_point)
    high = params.act_scale * (params.act_qmax - params.act_zero_point)
    assert observed.min() - params.act_scale <= low < 0 < high <= observed.max() + params.act_scale
    # weights: the core's per-channel min/max grid reproduces each channel within half a step
    weight = unet.get_submodule(name).weight
    error = (fake_quantize_weight(weight, params) - weight).abs().amax(dim=1)
    assert torch.all(error <= params.weight_scale / 2 + 1e-6)

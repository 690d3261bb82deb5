"""quantize_ on the real digits UNet: layer selection, calibration, switches, AdaRound, export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.quant.helpers import (
    digits_model_config,
    digits_split_model_config,
    digits_unet,
    method_config,
    quant_config,
    sqnr_db,
)
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant.api import (
    adaround_parameters,
    enable_adaround,
    export_layer_qparams,
    freeze_weights,
    iter_act_quantizers,
    iter_attn_processors,
    iter_quant_modules,
    observing_activations,
    quantize_,
    set_quant_state,
    set_soft_rounding,
)
from tfmq_exp.quant.modules import QuantConv2d, QuantLinear

FULL_PRECISION = [
    "conv_in",
    "conv_out",
    "time_embedding.linear_1",
    "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0.conv_shortcut",
    "up_blocks.0.resnets.0.conv_shortcut",
]
TEMPORAL = {"time_embedding.linear_1", "time_embedding.linear_2", "mid_block.resnets.0.time_emb_proj"}


def calibration_batches(count: int = 4, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 1, 8, 8, generator=generator), torch.full((batch,), 100 + 250 * i)) for i in range(count)
    ]


def calibrated_unet(**method_overrides) -> tuple[nn.Module, nn.Module]:
    float_unet, unet = digits_unet(), digits_unet()
    quantize_(unet, quant_config(8, 8), digits_model_config(), method_config(**method_overrides))
    with torch.no_grad(), observing_activations(unet):
        for sample, timestep in calibration_batches():
            unet(sample, timestep)
    return float_unet, unet


def test_fp_patterns_respected() -> None:
    unet = digits_unet()
    quant_map = quantize_(unet, quant_config(), digits_model_config(), method_config())
    for name in FULL_PRECISION:
        module = unet.get_submodule(name)
        assert type(module) in (nn.Conv2d, nn.Linear), name
        assert name not in quant_map
    assert isinstance(unet.get_submodule("down_blocks.0.resnets.0.conv1"), QuantConv2d)
    assert isinstance(unet.get_submodule("up_blocks.0.attentions.1.to_q"), QuantLinear)
    assert quant_map.summary() == {"QuantLinear": 25, "QuantConv2d": 17, "QuantAttnProcessor": 4}
    assert quant_map["mid_block.attentions.0"]["a_bits"] == 8
    remaining = [n for n, m in unet.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert len(remaining) == 9  # conv_in, conv_out, linear_1, one downsampler, five shortcut convs
    assert all(n in FULL_PRECISION or n.endswith(".conv_shortcut") for n in remaining)


def test_w8a8_digits_output_sqnr() -> None:
    float_unet, unet = calibrated_unet(weight_init="shrink")
    sample, timestep = torch.randn(8, 1, 8, 8), torch.full((8,), 400)
    with torch.no_grad():
        expected, actual = float_unet(sample, timestep).sample, unet(sample, timestep).sample
        assert sqnr_db(expected, actual) > 15
        set_quant_state(unet, weight=False, act=False)  # switched off: the float model again
        assert torch.allclose(unet(sample, timestep).sample, expected, atol=1e-5, rtol=1e-5)
        set_quant_state(unet, weight=True, act=False)
        weight_only = unet(sample, timestep).sample
        set_quant_state(unet, weight=False, act=True)
        act_only = unet(sample, timestep).sample
    assert not torch.equal(weight_only, expected) and not torch.equal(act_only, expected)
    assert not torch.equal(weight_only, act_only)


def test_temporal_bits_and_w4a32() -> None:
    unet = digits_unet()
    quantize_(
        unet, quant_config(4, 8, temporal_a_bits=4), digits_model_config(), method_config(), temporal_names=TEMPORAL
    )
    assert unet.time_embedding.linear_2.act_quantizer.bits == 4
    assert unet.time_embedding.linear_2.spec.temporal
    assert unet.mid_block.resnets[0].time_emb_proj.act_quantizer.bits == 4
    assert unet.mid_block.resnets[1].time_emb_proj.act_quantizer.bits == 8
    weight_only = digits_unet()
    quantize_(weight_only, quant_config(4, None), digits_model_config(), method_config())
    assert next(iter_attn_processors(weight_only), None) is None  # no attention quantizers at A32
    assert all(q.is_identity for _, q in iter_act_quantizers(weight_only))
    with torch.no_grad():  # needs no activation calibration
        weight_only(torch.randn(2, 1, 8, 8), torch.tensor([3, 3]))


def test_shortcut_split_uses_two_quantizers() -> None:
    unet = digits_unet()
    splits = get_adapter(unet).shortcut_split_points()  # the up blocks' conv_shortcut layers only
    quant_map = quantize_(
        unet, quant_config(), digits_split_model_config(), method_config(split_shortcut=True), split_points=splits
    )
    shortcut = unet.up_blocks[0].resnets[0].conv_shortcut
    entry = quant_map["up_blocks.0.resnets.0.conv_shortcut"]
    assert shortcut.split == 64 and entry["split"] == 64 and entry["weight_rounding_split"] == "nearest"
    assert shortcut.act_quantizer_split is not None and shortcut.act_quantizer_split is not shortcut.act_quantizer
    assert shortcut.weight_quantizers() == [shortcut.weight_quantizer, shortcut.weight_quantizer_split]
    assert {name for name, module in iter_quant_modules(unet) if module.split} == set(splits)
    conv1 = unet.up_blocks[0].resnets[0].conv1  # never split (Q-Diffusion splits the skip connection only)
    assert conv1.act_quantizer_split is None and conv1.weight_quantizer_split is None
    full_precision = digits_unet()  # the shipped configs keep conv_shortcut in full precision: no split at all
    quantize_(
        full_precision, quant_config(), digits_model_config(), method_config(split_shortcut=True), split_points=splits
    )
    assert type(full_precision.up_blocks[0].resnets[0].conv_shortcut) is nn.Conv2d
    assert not any(module.split for _, module in iter_quant_modules(full_precision))
    not_split = digits_unet()
    not_split_map = quantize_(
        not_split, quant_config(), digits_split_model_config(), method_config(split_shortcut=False), split_points=splits
    )
    shortcut = not_split.up_blocks[0].resnets[0].conv_shortcut
    assert shortcut.act_quantizer_split is None and shortcut.weight_quantizer_split is None
    assert "weight_rounding_split" not in not_split_map["up_blocks.0.resnets.0.conv_shortcut"]

    # the two halves of cat(h, skip) have different ranges: separate quantizers keep the small half's grid
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.cat([10 * torch.randn(16, 4, 5, 5), 0.1 * torch.randn(16, 4, 5, 5)], dim=1)
    errors: dict[int, float] = {}
    for split in (0, 4):
        layer = QuantConv2d.from_float(conv, _spec(split))
        with observing_activations(layer):
            layer(x)
        layer.set_quant_state(weight=False, act=True)
        errors[split] = sqnr_db(x[:, 4:], layer.quantize_input(x)[:, 4:])  # the small half's SQNR
        if split:
            assert layer.act_quantizer_split.scale < layer.act_quantizer.scale / 50
    assert errors[4] > errors[0] + 20


def _spec(split: int):
    from tfmq_exp.quant.spec import LayerQuantSpec

    return LayerQuantSpec(w_bits=8, a_bits=6, weight_init="minmax", split=split)


def test_unknown_names_and_requantization_rejected() -> None:
    unet = digits_unet()
    with pytest.raises(ValueError, match="do not exist.*no.such.layer"):
        quantize_(unet, quant_config(), digits_model_config(), method_config(), temporal_names={"no.such.layer"})
    quantize_(unet, quant_config(), digits_model_config(), method_config())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(unet, quant_config(), digits_model_config(), method_config())
    untouched = digits_unet()
    assert len(quantize_(untouched, quant_config(), digits_model_config(), method_config(quantize=False))) == 0
    assert next(iter_quant_modules(untouched), None) is None


def test_observing_restores_state_on_error_and_reports_unobserved() -> None:
    unet = digits_unet()
    quantize_(unet, quant_config(), digits_model_config(), method_config())
    with pytest.raises(ZeroDivisionError):
        with observing_activations(unet):
            1 / 0
    quantizers = [q for _, q in iter_act_quantizers(unet)]
    assert all(q.enabled and not q.observing and not q.is_calibrated for q in quantizers)
    with pytest.raises(
        RuntimeError, match=r"(?s)calibration incomplete.*up_blocks\.1\.resnets\.0\.conv1\.act_quantizer"
    ):
        with observing_activations(unet):
            unet.down_blocks[0].resnets[0].conv1(torch.randn(1, 32, 8, 8))
    assert unet.down_blocks[0].resnets[0].conv1.act_quantizer.is_calibrated  # observed ones are finalized
    assert not unet.up_blocks[1].resnets[0].conv1.act_quantizer.is_calibrated


def test_adaround_and_freeze_on_model() -> None:
    _, unet = calibrated_unet()
    block = unet.mid_block.resnets[0]
    quantizers = enable_adaround(block)
    assert len(quantizers) == 3 and len(adaround_parameters(unet)) == 3  # conv1, time_emb_proj, conv2
    sample, timestep = torch.randn(2, 1, 8, 8), torch.tensor([7, 7])
    set_soft_rounding(unet, False)
    with torch.no_grad():
        hard = unet(sample, timestep).sample
        assert freeze_weights(unet) == 3
        assert torch.equal(unet(sample, timestep).sample, hard)
    assert adaround_parameters(unet) == [] and block.conv1.weight_quantizer.rounding == "frozen"


def test_export_layer_qparams() -> None:
    _, unet = calibrated_unet()
    params = export_layer_qparams(unet)
    conv = params["down_blocks.0.resnets.0.conv1"]
    weight = conv["weight"]
    assert weight["scale"].shape == (32,) and weight["zero_point"].dtype == torch.int64
    assert weight["codes"].min() >= 0 and weight["codes"].max() <= 255
    dequantized = (weight["codes"] - weight["zero_point"].view(-1, 1, 1, 1)) * weight["scale"].view(-1, 1, 1, 1)
    assert torch.allclose(dequantized, weight["dequantized"], atol=1e-6)
    assert conv["act"]["bits"] == 8 and conv["act"]["calibrated"] and conv["act_split"] is None
    attention = params["mid_block.attentions.0"]
    assert attention["softmax"]["unsigned"] and attention["softmax"]["zero_point"] == 0
    assert set(params) == {n for n, _ in iter_quant_modules(unet)} | {n for n, _ in iter_attn_processors(unet)}


def test_layer_hyperparameters_preserved() -> None:
    spec = _spec(0)
    for conv in (
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(4, 8, 3, groups=2, bias=False),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    ):
        layer = QuantConv2d.from_float(conv, spec)
        layer.set_quant_state(weight=False, act=False)
        x = torch.randn(2, 4, 9, 9)
        assert torch.equal(layer(x), conv(x))
    linear = nn.Linear(6, 3)
    layer = QuantLinear.from_float(linear, spec)
    layer.set_quant_state(weight=True, act=False)
    x = torch.randn(2, 5, 6)
    assert sqnr_db(linear(x), layer(x)) > 35
    with pytest.raises(TypeError):
        QuantLinear.from_float(nn.Conv2d(1, 1, 1), spec)

"""Q-Diffusion's shortcut split: separate activation and weight quantizers for the two halves of cat(h, skip).

Q-Diffusion (Xiuyu-Li/q-diffusion@715783d, qdiff/quant_layer.py:248-288) gives a split layer a second
activation quantizer for input channels [split:] and a second weight quantizer for weight[:, split:], each with
its own per-output-channel range and its own AdaRound (qdiff/block_recon.py:51-55).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tests.calib.helpers import make_config
from tests.quant.helpers import digits_split_model_config, digits_unet
from tfmq_exp.calib import load_or_capture
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.ptq import model_size
from tfmq_exp.quant import (
    adaround_parameters,
    enable_adaround,
    export_layer_qparams,
    freeze_weights,
    iter_quant_modules,
    observing_activations,
    quantize_,
    set_soft_rounding,
)
from tfmq_exp.quant.adaround import WeightQuantizer
from tfmq_exp.quant.artifact import load_artifact, save_artifact
from tfmq_exp.quant.modules import QuantConv2d, QuantLinear
from tfmq_exp.quant.spec import LayerQuantSpec
from tfmq_exp.recon import reconstruct
from tfmq_exp.store import ArtifactStore

SPLIT, IN, OUT = 4, 10, 6


def _by_hand(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """``s (clamp(round(x / s) + z, 0, 2^b - 1) - z)``."""
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1) - zero_point) * scale


def _split_layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A split layer whose two input halves differ in scale (inputs and weights), calibrated; and its input."""
    spec = LayerQuantSpec(w_bits=4, a_bits=6, weight_init="minmax", split=SPLIT)
    if kind == "conv":
        float_layer = nn.Conv2d(IN, OUT, 3, padding=1)
        x = torch.cat([8 * torch.randn(4, SPLIT, 5, 5), 0.2 * torch.randn(4, IN - SPLIT, 5, 5)], dim=1)
    else:
        float_layer = nn.Linear(IN, OUT)
        x = torch.cat([8 * torch.randn(4, 3, SPLIT), 0.2 * torch.randn(4, 3, IN - SPLIT)], dim=-1)
    with torch.no_grad():
        float_layer.weight[:, SPLIT:] *= 0.05  # the skip half's weights are far smaller
    layer = (QuantConv2d if kind == "conv" else QuantLinear).from_float(float_layer, spec)
    with observing_activations(layer):
        layer(x)
    return layer, x


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_each_half_has_its_own_quantizers_and_the_forward_matches_a_hand_computation(kind: str) -> None:
    layer, x = _split_layer(kind)
    axis = 1 if kind == "conv" else -1
    assert layer.act_quantizer_split is not None and layer.act_quantizer_split is not layer.act_quantizer
    assert isinstance(layer.weight_quantizer_split, WeightQuantizer)
    assert layer.weight_quantizers() == [layer.weight_quantizer, layer.weight_quantizer_split]
    assert "weight_quantizer_split.scale" in layer.state_dict()  # a registered submodule
    # Independent per-output-channel ranges: each equals a quantizer initialised on its half alone.
    halves = (layer.weight[:, :SPLIT], layer.weight[:, SPLIT:])
    for quantizer, half in zip(layer.weight_quantizers(), halves):
        alone = WeightQuantizer(4, num_channels=OUT)
        alone.init_range(half.detach().clone(), "minmax")
        assert quantizer.scale.shape == (OUT,) and torch.equal(quantizer.scale, alone.scale)
        assert torch.equal(quantizer.zero_point, alone.zero_point)
    assert torch.all(layer.weight_quantizer_split.scale < layer.weight_quantizer.scale / 5)
    assert layer.act_quantizer_split.scale < layer.act_quantizer.scale / 10

    # Quantize each input half and each weight half on its own, then run the float op.
    first, second = torch.split(x, [SPLIT, IN - SPLIT], dim=axis)
    x_hat = torch.cat([
        _by_hand(first, layer.act_quantizer.scale, layer.act_quantizer.zero_point, 6),
        _by_hand(second, layer.act_quantizer_split.scale, layer.act_quantizer_split.zero_point, 6),
    ], dim=axis)  # fmt: skip
    shape = (OUT, 1, 1, 1) if kind == "conv" else (OUT, 1)
    w_hat = torch.cat([
        _by_hand(half, q.scale.view(shape), q.zero_point.view(shape), 4)
        for q, half in zip(layer.weight_quantizers(), halves)
    ], dim=1)  # fmt: skip
    with torch.no_grad():
        if kind == "conv":
            expected = F.conv2d(x_hat, w_hat, layer.bias, padding=1)
        else:
            expected = F.linear(x_hat, w_hat, layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.quantized_weight(), w_hat, atol=1e-6, rtol=0)


def test_adaround_export_and_freeze_cover_both_halves() -> None:
    layer, x = _split_layer("conv")
    alphas = layer.enable_adaround(soft=True)
    assert [alpha.shape for alpha in alphas] == [(OUT, SPLIT, 3, 3), (OUT, IN - SPLIT, 3, 3)]
    assert adaround_parameters(layer) == alphas
    with torch.no_grad():  # a "learned" rounding: flip some decisions in both halves
        for alpha in alphas:
            alpha.add_(torch.randn_like(alpha))
    set_soft_rounding(layer, False)
    assert not any(q.soft for q in layer.weight_quantizers())
    with torch.no_grad():
        hard = layer(x)
        params = export_layer_qparams(layer)[""]
        assert freeze_weights(layer) == 1
        assert [q.rounding for q in layer.weight_quantizers()] == ["frozen", "frozen"]
        assert torch.equal(layer(x), hard)
    assert adaround_parameters(layer) == []
    weight, weight_split = params["weight"], params["weight_split"]
    assert weight["codes"].shape == (OUT, SPLIT, 3, 3) and weight_split["codes"].shape == (OUT, IN - SPLIT, 3, 3)
    assert torch.equal(weight_split["codes"].to(torch.uint8), layer.weight_quantizer_split.weight_codes)
    dequantized = torch.cat([weight["dequantized"], weight_split["dequantized"]], dim=1)
    assert torch.equal(dequantized, layer.quantized_weight())
    assert params["act_split"] is not None
    # enable_adaround on a model returns both halves' quantizers
    assert len(enable_adaround(QuantConv2d.from_float(nn.Conv2d(IN, OUT, 1), _spec()), soft=True)) == 2


def _spec() -> LayerQuantSpec:
    return LayerQuantSpec(w_bits=4, a_bits=6, weight_init="minmax", split=SPLIT)


def test_grouped_conv_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="groups=1"):
        QuantConv2d.from_float(nn.Conv2d(IN, IN, 3, groups=2), _spec())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("split_cache")
    unet = digits_unet(seed=0)
    data, _ = load_or_capture(unet, make_config(cache), ArtifactStore(cache / "store"))
    return unet, data


def _split_config(cache: Path):
    config = make_config(cache, recon=True, iters=8, quant_patterns=["up_blocks.*"])
    model = digits_split_model_config(quant_patterns=["up_blocks.*"])  # *.conv_shortcut not in fp_patterns
    return dataclasses.replace(config, model=model, method=dataclasses.replace(config.method, split_shortcut=True))


def _split_copy(unet: nn.Module, config) -> nn.Module:
    unet_q = copy.deepcopy(unet)
    quantize_(unet_q, config.quant, config.model, config.method, split_points=get_adapter(unet).shortcut_split_points())
    return unet_q.eval()


def test_reconstruction_freezes_both_halves_and_the_artifact_rebuilds_them(digits, tmp_path: Path) -> None:
    unet, data = digits
    config = _split_config(tmp_path)
    unet_q = _split_copy(unet, config)
    split_layers = {name: module for name, module in iter_quant_modules(unet_q) if module.split}
    assert sorted(split_layers) == sorted(get_adapter(unet).shortcut_split_points())  # the 4 up-block shortcuts
    report = reconstruct(unet_q, unet, config, data, tmp_path / "checkpoints")
    assert "up_blocks.0.resnets.0.conv_shortcut" in report["units"]["up_blocks.0.resnets.0"]["layers"]
    for name, layer in split_layers.items():
        assert [q.rounding for q in layer.weight_quantizers()] == ["frozen", "frozen"], name
    assert adaround_parameters(unet_q) == []
    checkpoint = load_file(str(tmp_path / "checkpoints" / "000_up_blocks.0.resnets.0.safetensors"))
    assert "up_blocks.0.resnets.0.conv_shortcut.weight_quantizer_split.weight_codes" in checkpoint

    # Resuming loads both halves' codes from the checkpoints.
    resumed = _split_copy(unet, config)
    resumed_report = reconstruct(resumed, unet, config, data, tmp_path / "checkpoints")
    assert resumed_report["resumed_units"] == list(report["units"])
    for name, layer in split_layers.items():
        twin = resumed.get_submodule(name)
        for quantizer, other in zip(layer.weight_quantizers(), twin.weight_quantizers()):
            assert torch.equal(quantizer.weight_codes, other.weight_codes), name

    # Both halves (one weight parameter) count at w_bits: the same size as without the split.
    size = model_size(unet_q, unet)
    plain = copy.deepcopy(unet)
    quantize_(plain, config.quant, config.model, config.method)
    assert size.bits == model_size(plain, unet).bits and size.quantized_parameters > 0

    # The artifact rebuilds the split layers (both weight quantizers frozen) on a fresh float UNet.
    sample, timestep = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    with torch.no_grad(), observing_activations(unet_q):
        unet_q(torch.randn(8, 1, 8, 8), torch.full((8,), 300))
    with torch.no_grad():
        expected = unet_q(sample, timestep).sample
    directory = save_artifact(tmp_path / "artifact", unet_q, config)
    loaded = load_artifact(directory, build_digits_unet(), config)
    entry = loaded.quant_map["up_blocks.0.resnets.0.conv_shortcut"]
    assert entry["split"] == 64 and entry["weight_rounding"] == entry["weight_rounding_split"] == "frozen"
    for name, layer in split_layers.items():
        rebuilt = loaded.unet.get_submodule(name)
        assert rebuilt.split == layer.split and rebuilt.weight_quantizer_split is not None
        assert torch.equal(rebuilt.weight_quantizer_split.weight_codes, layer.weight_quantizer_split.weight_codes)
    with torch.no_grad():
        assert torch.equal(loaded.unet(sample, timestep).sample, expected)

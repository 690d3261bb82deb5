"""Folding input zero points into biases (PT2E lowering): the identity, the graph it gives, what is left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.deploy.helpers import calibrated, digits_unet, example_inputs, sqnr_db
from tfmq_exp.deploy.lower import lower_to_int8
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.deploy.zero_point_fold import conv_input_sizes, fold_input_zero_points

QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default


def _params(channels: int, scale: float, zero_point: int) -> LayerQParams:
    return LayerQParams(torch.full((channels,), 0.01), torch.full((channels,), 128), 8, scale, zero_point, 8)


def _fake_quant(x: torch.Tensor, params: LayerQParams) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, params.act_scale, params.act_zero_point, 0, 255)


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.Linear(5, 3)],
    ids=["conv3x3", "strided_conv_without_bias", "linear"],
)
def test_folded_layer_computes_the_same_as_the_asymmetric_one(layer: nn.Module) -> None:
    """``W * fq(x; s, z) + b == W * fq(x + z s; s, 0) + b - z s sum(W) + border map`` (module docstring)."""
    torch.manual_seed(0)
    shape = (2, 4, 7, 7) if isinstance(layer, nn.Conv2d) else (2, 5)
    x = torch.randn(shape)
    params = _params(layer.weight.shape[0], scale=0.02, zero_point=100)
    expected = layer(_fake_quant(x, params))
    model = nn.Sequential(copy.deepcopy(layer))
    folded, border_maps = fold_input_zero_points(model, {"0": params}, conv_input_sizes(model, ["0"], lambda: model(x)))
    assert folded["0"].act_zero_point == 0 and folded["0"].act_scale == params.act_scale
    if "0" in border_maps:  # added to the output in the exported graph; here by a hook
        model[0].register_forward_hook(lambda _module, _args, output: output + border_maps["0"])

    def quantize_input(_module: nn.Module, args: tuple) -> tuple:  # runs after the fold's pad-and-shift hook
        return (_fake_quant(args[0], folded["0"]),)

    model[0].register_forward_pre_hook(quantize_input)
    actual = model(x)
    assert torch.allclose(actual, expected, atol=1e-4)
    assert actual.shape == expected.shape


def test_zero_point_zero_and_non_zero_padding_modes_are_left_alone() -> None:
    reflect = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    model = nn.ModuleDict({"reflect": reflect, "plain": nn.Conv2d(2, 2, 3, padding=1)})
    before = copy.deepcopy(model.state_dict())
    layers = {"reflect": _params(2, 0.1, 7), "plain": _params(2, 0.1, 0)}
    assert fold_input_zero_points(model, layers, {"reflect": (5, 5), "plain": (5, 5)}) == (layers, {})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model["reflect"]._forward_pre_hooks


def test_lowered_graph_quantizes_with_zero_points_zero_and_matches_the_unfolded_one() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=8)
    assert any(params.act_zero_point != 0 for params in qparams.values())  # the fold has work to do
    sample, timestep = example_inputs()
    folded = lower_to_int8(unet, qparams, (sample, timestep), compile=False)
    unfolded = lower_to_int8(unet, qparams, (sample, timestep), compile=False, fold_zero_points=False)
    zero_points = [node.args[2] for node in folded.graph_module.graph.nodes if node.target is QUANTIZE]
    assert len(zero_points) == len(qparams) and set(zero_points) == {0}
    # The same numbers up to float32 rounding ties of x / s + z against (x + z s) / s: on this UNet one input
    # code in 4096 of an attention's to_q flips, and later quantizers carry such flips on (measured 40.6 dB; a wrong
    # sign or sum in the bias correction gives far less). Both stay as close to the fake-quant model as before.
    assert sqnr_db(folded(sample, timestep), unfolded(sample, timestep)) >= 35.0
    reference = FakeQuantReference(unet, qparams)(sample, timestep)
    assert sqnr_db(folded(sample, timestep), reference) >= 30.0

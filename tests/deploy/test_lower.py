"""Lowering to int8 (PT2E): numerics against the fake-quant reference, graph contents, loud failures."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.deploy.helpers import calibrated, digits_unet, example_inputs, sqnr_db
from tfmq_exp.deploy.lower import layer_name_of, lower_to_int8
from tfmq_exp.deploy.noise_calibration import noise_calibrated
from tfmq_exp.deploy.qparams import LayerQParams
from tfmq_exp.deploy.reference import FakeQuantReference

QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE_WEIGHT = torch.ops.quantized_decomposed.dequantize_per_channel.default
LAYER_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def _quantized_layers(graph_module: torch.fx.GraphModule) -> set[str]:
    """Layers whose weight reaches them through a per-channel dequantize."""
    return {
        layer_name_of(node)
        for node in graph_module.graph.nodes
        if node.target in LAYER_OPS and getattr(node.args[1], "target", None) is DEQUANTIZE_WEIGHT
    }


@pytest.mark.parametrize(
    "w_bits, code_max", [(4, None), (8, 127), (8, None)], ids=["w4a8", "w8a8", "w8a8_cpu"]
)
def test_converted_graph_matches_reference(w_bits: int, code_max: int | None) -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=w_bits)
    sample, timestep = example_inputs()
    lowered = lower_to_int8(unet, qparams, (sample, timestep), compile=False, weight_code_max=code_max)
    reference = FakeQuantReference(unet, qparams)(sample, timestep)
    assert sqnr_db(lowered(sample, timestep), reference) >= 30.0
    # exactly the layers with parameters are quantized: one activation quantizer and one int8 weight each
    graph = lowered.graph_module
    assert _quantized_layers(graph) == set(qparams)
    assert sum(node.target is QUANTIZE for node in graph.graph.nodes) == len(qparams)
    with torch.no_grad():
        full_precision = unet(sample, timestep).sample
    assert sqnr_db(reference, full_precision) < 60.0  # the quantization is real, not a no-op


def test_lowering_leaves_the_model_untouched_and_accepts_scalar_timesteps() -> None:
    unet = digits_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    qparams = calibrated(unet, w_bits=4)
    sample, _ = example_inputs()
    lowered = lower_to_int8(unet, qparams, (sample, 500), compile=False)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    reference = FakeQuantReference(unet, qparams)
    assert sqnr_db(lowered(sample, torch.tensor(500)), reference(sample, 500)) >= 30.0


def test_unknown_layer_fails_loudly() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=8)
    qparams["down_blocks.0.resnets.0.norm1"] = qparams.pop("down_blocks.0.resnets.0.conv1")
    with pytest.raises(KeyError, match="norm1"):
        lower_to_int8(unet, qparams, example_inputs(), compile=False)


class _DenoiserWithIdleLayer(torch.nn.Module):
    """A denoiser with a Linear that its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.idle = torch.nn.Linear(4, 4)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=self.conv(sample))


def test_layer_missing_from_the_graph_fails_loudly() -> None:
    model = _DenoiserWithIdleLayer().eval()
    batches = [(torch.randn(2, 1, 8, 8), torch.zeros(2))]
    conv_params = noise_calibrated(model, batches, quant_patterns=("conv",), fp_patterns=()).qparams
    idle_params = LayerQParams(torch.ones(4) / 100, torch.full((4,), 128), 8, 0.01, 128, 8)
    with pytest.raises(RuntimeError, match="idle"):
        lower_to_int8(model, {**conv_params, "idle": idle_params}, batches[0], compile=False)


def test_per_timestep_params_without_cache_are_rejected() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=8)
    params = qparams["down_blocks.0.resnets.0.time_emb_proj"]
    qparams["down_blocks.0.resnets.0.time_emb_proj"] = LayerQParams(
        params.weight_scale, params.weight_zero_point, 8, params.act_scale, params.act_zero_point, 8,
        act_per_timestep={999: (0.1, 10), 49: (0.05, 20)},
    )
    with pytest.raises(NotImplementedError, match="temporal-feature cache"):
        lower_to_int8(unet, qparams, example_inputs(), compile=False)


def test_more_than_eight_activation_bits_are_rejected() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=8)
    params = qparams["mid_block.resnets.0.conv1"]
    qparams["mid_block.resnets.0.conv1"] = LayerQParams(params.weight_scale, params.weight_zero_point, 8, 0.01, 100, 12)
    with pytest.raises(ValueError, match="above 8 bits"):
        lower_to_int8(unet, qparams, example_inputs(), compile=False)


@pytest.mark.slow
def test_compiled_int8_kernels_match_reference() -> None:
    """Inductor lowers every quantized layer to oneDNN int8 kernels; W4A8 grids are exact on any x86 CPU."""
    from torch._inductor.utils import run_and_get_code

    unet = digits_unet()
    qparams = calibrated(unet, w_bits=4)
    sample, timestep = example_inputs()
    lowered, code = run_and_get_code(lower_to_int8, unet, qparams, (sample, timestep))
    source = "\n".join(code)
    assert "qconv_pointwise" in source and "qlinear_pointwise" in source
    reference = FakeQuantReference(unet, qparams)(sample, timestep)
    assert sqnr_db(lowered(sample, timestep), reference) >= 30.0


@pytest.mark.slow
def test_every_quantized_layer_reaches_an_int8_kernel() -> None:
    """Compiled by inductor, each quantized Conv2d / Linear runs as oneDNN's qconv / qlinear (none falls back to
    a float conv or ``bmm`` on dequantized weights, as attention's ``to_q`` / ``to_k`` / ``to_v`` did)."""
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=8)
    sample, timestep = example_inputs()
    lowered = lower_to_int8(unet, qparams, (sample, timestep))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        lowered(sample, timestep)
    calls = {event.key: event.count for event in profiler.key_averages()}
    kinds = {name: type(unet.get_submodule(name)) for name in qparams}
    assert calls.get("onednn::qconv_pointwise", 0) == sum(kind is torch.nn.Conv2d for kind in kinds.values())
    assert calls.get("onednn::qlinear_pointwise", 0) == sum(kind is torch.nn.Linear for kind in kinds.values())
    assert "aten::bmm" not in calls and sum(kind is torch.nn.Linear for kind in kinds.values()) > 0

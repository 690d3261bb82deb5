"""A project-calibrated UNet exported to QDQ ONNX runs on ONNX Runtime and OpenVINO with the fake-quant numerics."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from tests.deploy.helpers import noise_batches, project_calibrated, sqnr_db  # noqa: E402
from tfmq_exp.deploy.from_quantized import deployment_inputs  # noqa: E402
from tfmq_exp.deploy.int8_grid import INT8_CODE_MAX, INT8_CODE_MAX_WITHOUT_VNNI  # noqa: E402
from tfmq_exp.deploy.onnx_export import INPUT_NAMES, OPSET, export_onnx, fold_weight_quantize, qdq_module  # noqa: E402
from tfmq_exp.deploy.qparams import LayerQParams  # noqa: E402
from tfmq_exp.deploy.runtimes import (  # noqa: E402
    layers_outside,
    nncf_int8,
    onnx_layer_module,
    openvino_runner,
    ort_runner,
    ort_static_int8,
)
from tfmq_exp.quant import iter_attn_processors  # noqa: E402

Inputs = Tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def calibrated() -> Tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, Dict[str, LayerQParams]]:
    """``(unet_fp, unet_q, float_unet, qparams)``: a W4A8 project model and its deployment inputs."""
    unet_fp, unet_q = project_calibrated()
    for _, processor in iter_attn_processors(unet_q):
        processor.set_quant_state(act=False)  # deployment keeps attention matmuls in floating point
    float_unet, qparams = deployment_inputs(unet_q, unet_fp)
    return unet_fp, unet_q, float_unet, qparams


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(3, 1, 8, 8, generator=generator), torch.tensor([900.0, 500.0, 100.0])


@pytest.fixture(scope="module")
def exported(calibrated, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, _, float_unet, qparams = calibrated
    path = tmp_path_factory.mktemp("onnx") / "qdq.onnx"
    return export_onnx(float_unet, path, inputs, qparams, weight_code_max=INT8_CODE_MAX_WITHOUT_VNNI)


def _weight_codes(model: onnx.ModelProto) -> list:
    """The int8 initializers that DequantizeLinear nodes read as their data (the weight codes)."""
    initializers = {i.name: i for i in model.graph.initializer}
    data = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [numpy_helper.to_array(initializers[name]) for name in data
            if name in initializers and initializers[name].data_type == onnx.TensorProto.INT8]


def _fake_quant(unet_q: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet_q(*inputs).sample


def test_export_stores_7bit_int8_weight_codes_behind_dequantize(calibrated, exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    int8_weights = _weight_codes(model)
    qparams = calibrated[3]
    assert len(int8_weights) == len(qparams)
    # One activation QDQ pair per layer input; layers reading one tensor with equal parameters (to_q / to_k /
    # to_v) share it, as the exporter merges identical nodes.
    assert 0 < ops.count("QuantizeLinear") <= len(qparams)
    assert ops.count("DequantizeLinear") == ops.count("QuantizeLinear") + len(qparams)
    assert all(w.min() >= -64 and w.max() <= 63 for w in int8_weights)
    assert not any(i.data_type == onnx.TensorProto.FLOAT and i.name.endswith("weight.original")
                   for i in model.graph.initializer)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_int8_matches_the_fake_quant_model(calibrated, exported: Path, inputs: Inputs, runtime: str) -> None:
    unet_q = calibrated[1]
    runner = ort_runner(exported, threads=1) if runtime == "onnxruntime" else openvino_runner(exported, 1, inputs)
    assert sqnr_db(runner(*inputs), _fake_quant(unet_q, inputs)) >= 30.0


def _activation_zero_points(model: onnx.ModelProto) -> list:
    """The zero points of the QuantizeLinear nodes of activations (not folded weights)."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return [int(constants[node.input[2]]) for node in model.graph.node if node.op_type == "QuantizeLinear"]


def test_folded_zero_points_compute_what_the_calibrated_ones_do(calibrated, exported: Path, inputs: Inputs,
                                                                tmp_path: Path) -> None:
    """The default export folds each layer input's zero point (shift, bias, border map): its QDQ pairs have zero
    point 0 and it gives the numbers of the export with the calibrated zero points, on both runtimes."""
    _, unet_q, float_unet, qparams = calibrated
    kept = export_onnx(float_unet, tmp_path / "kept.onnx", inputs, qparams,
                       weight_code_max=INT8_CODE_MAX_WITHOUT_VNNI, fold_zero_points=False)
    assert set(_activation_zero_points(onnx.load(str(exported)))) == {0}
    assert len(set(_activation_zero_points(onnx.load(str(kept))))) > 1
    reference = _fake_quant(unet_q, inputs)
    for runner in (lambda path: ort_runner(path, threads=1), lambda path: openvino_runner(path, 1, inputs)):
        folded, calibrated_zero_points = runner(exported)(*inputs), runner(kept)(*inputs)
        assert sqnr_db(folded, calibrated_zero_points) >= 35.0  # rounding ties only (test_zero_point_fold.py)
        assert sqnr_db(folded, reference) >= 30.0


def _projection_ops(model: onnx.ModelProto) -> set:
    """``(projection, op type)`` of the attention projections' layer nodes (node names ``/unet/<module>/<Op>``)."""
    return {(onnx_layer_module(node.name).rsplit(".", 1)[-1], node.op_type) for node in model.graph.node
            if node.op_type in ("Conv", "MatMul", "Gemm") and "attentions" in node.name
            and onnx_layer_module(node.name).endswith(("to_q", "to_k", "to_v", "to_out.0"))}


def test_spatial_attention_projections_export_as_1x1_convolutions(calibrated, exported: Path, inputs: Inputs,
                                                                  tmp_path: Path) -> None:
    """The default export computes the digits UNet's attention projections as 1x1 convolutions on the map
    (:mod:`tfmq_exp.deploy.channel_first_attention`), with the token export's numbers on both runtimes."""
    _, unet_q, float_unet, qparams = calibrated
    tokens = export_onnx(float_unet, tmp_path / "tokens.onnx", inputs, qparams,
                         weight_code_max=INT8_CODE_MAX_WITHOUT_VNNI, channel_first_attention=False)
    assert {op for _, op in _projection_ops(onnx.load(str(exported)))} == {"Conv"}
    assert {op for _, op in _projection_ops(onnx.load(str(tokens)))} == {"MatMul"}
    assert len(_weight_codes(onnx.load(str(exported)))) == len(_weight_codes(onnx.load(str(tokens))))
    reference = _fake_quant(unet_q, inputs)
    for runner in (lambda path: ort_runner(path, threads=1), lambda path: openvino_runner(path, 1, inputs)):
        channel_first, token = runner(exported)(*inputs), runner(tokens)(*inputs)
        assert sqnr_db(channel_first, token) >= 35.0  # summation order and rounding ties only
        assert sqnr_db(channel_first, reference) >= 30.0


def test_float_export_matches_pytorch(calibrated, inputs: Inputs, tmp_path: Path) -> None:
    unet_fp = calibrated[0]
    path = export_onnx(unet_fp, tmp_path / "fp32.onnx", inputs)
    with torch.no_grad():
        expected = unet_fp(*inputs).sample
    assert sqnr_db(ort_runner(path, 1)(*inputs), expected) >= 60.0
    assert sqnr_db(openvino_runner(path, 1, inputs)(*inputs), expected) >= 60.0


def test_runtimes_own_int8_run(calibrated, inputs: Inputs, tmp_path: Path) -> None:
    unet_fp = calibrated[0]
    float_path = export_onnx(unet_fp, tmp_path / "fp32.onnx", inputs)
    calibration = noise_batches(count=2, batch=3)
    with torch.no_grad():
        expected = unet_fp(*inputs).sample
    ort_path = ort_static_int8(float_path, tmp_path / "ort_int8.onnx", calibration, INT8_CODE_MAX_WITHOUT_VNNI)
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(ort_path)).graph.node}
    assert sqnr_db(ort_runner(ort_path, 1)(*inputs), expected) >= 10.0
    # 7-bit weights on every layer (OverflowFix.ENABLE): NNCF's default halves the first layer's only, and the
    # others' full-range codes saturate on AVX2 (9.6 dB here on an AVX2-only EPYC; 22.2 dB with the fix).
    nncf_model = nncf_int8(float_path, calibration, weight_code_max=INT8_CODE_MAX_WITHOUT_VNNI)
    assert any(op.get_type_name() == "FakeQuantize" for op in nncf_model.get_ops())
    assert sqnr_db(openvino_runner(nncf_model, 1, inputs)(*inputs), expected) >= 15.0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_codes_outside_the_7bit_range_are_refused(calibrated, inputs: Inputs, tmp_path: Path) -> None:
    _, _, float_unet, qparams = calibrated
    path = tmp_path / "unfolded.onnx"
    torch.onnx.export(qdq_module(float_unet, qparams, INT8_CODE_MAX), inputs, str(path), dynamo=False,
                      opset_version=OPSET, input_names=list(INPUT_NAMES))
    with pytest.raises(ValueError, match="outside"):
        fold_weight_quantize(onnx.load(str(path)), INT8_CODE_MAX_WITHOUT_VNNI)
    model = onnx.load(str(path))
    assert fold_weight_quantize(model, INT8_CODE_MAX) == len(qparams)
    # With VNNI the same parameters use full 8-bit codes.
    assert max(int(np.abs(c).max()) for c in _weight_codes(model)) > INT8_CODE_MAX_WITHOUT_VNNI + 1


def _openvino_int8_layers(model, inputs: Inputs) -> int:
    """How many Convolution / FullyConnected layers OpenVINO's CPU plugin runs in int8 (u8 / i8)."""
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(str(model))
    model.reshape({"sample": list(inputs[0].shape), "timesteps": [inputs[0].shape[0]]})
    runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    layers = [op.get_rt_info() for op in runtime.get_ops()
              if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")]
    return len([info for info in layers if info["runtimePrecision"].astype(str) in ("u8", "i8")])


def test_openvino_runs_every_quantized_layer_in_int8(calibrated, exported: Path, inputs: Inputs) -> None:
    assert _openvino_int8_layers(exported, inputs) == len(calibrated[3])  # the float ones: conv_in, ...


def test_runtimes_own_int8_can_keep_our_float_layers_in_float(calibrated, inputs: Inputs, tmp_path: Path) -> None:
    unet_fp, qparams = calibrated[0], calibrated[3]
    float_path = export_onnx(unet_fp, tmp_path / "fp32.onnx", inputs)
    exclude = layers_outside(float_path, sorted(qparams))
    modules = {onnx_layer_module(name) for name in exclude}
    assert {"conv_in", "conv_out", "mid_block.attentions.0"} <= modules and not modules & set(qparams)
    calibration = noise_batches(count=2, batch=3)
    graph = onnx.load(str(ort_static_int8(float_path, tmp_path / "same.onnx", calibration, exclude=exclude))).graph
    produced_by = {output: node.op_type for node in graph.node for output in node.output}
    quantized = {onnx_layer_module(node.name) for node in graph.node
                 if node.op_type in ("Conv", "Gemm", "MatMul") and produced_by.get(node.input[1]) == "DequantizeLinear"}
    assert quantized == set(qparams)  # ONNX Runtime quantizes exactly our layers
    default = nncf_int8(float_path, calibration)
    same = nncf_int8(float_path, calibration, exclude=exclude)
    assert _openvino_int8_layers(same, inputs) == len(qparams) < _openvino_int8_layers(default, inputs)


def _openvino_int8_matmuls(path: Path, inputs: Inputs) -> int:
    """How many MatMuls, or fused subgraphs holding them (OpenVINO's attention snippets), the CPU plugin runs in
    u8 / i8."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({"sample": list(inputs[0].shape), "timesteps": [inputs[0].shape[0]]})
    runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    return len([op for op in runtime.get_ops() if op.get_rt_info()["layerType"].astype(str) in ("Subgraph", "MatMul")
                and op.get_rt_info()["runtimePrecision"].astype(str) in ("u8", "i8")])  # fmt: skip


def test_attention_matmuls_export_with_their_calibrated_operands(inputs: Inputs, tmp_path: Path) -> None:
    """The fake-quant model quantizes q, k, softmax(q k^T) and v; exported with those parameters, OpenVINO runs
    each attention in u8 and its output is closer to the fake-quant model than with float attention."""
    from tfmq_exp.deploy.from_quantized import attention_inputs

    unet_fp, unet_q = project_calibrated()  # attention quantizers on, as in every quantized run
    float_unet, qparams = deployment_inputs(unet_q, unet_fp)
    attention = attention_inputs(unet_q)
    attentions = [name for name, _ in iter_attn_processors(unet_q)]
    assert sorted(attention) == sorted(attentions) and all(len(ops) == 4 for ops in attention.values())
    reference = _fake_quant(unet_q, inputs)
    sqnr, u8 = {}, {}
    for name, operands in (("float_attention", None), ("int8_attention", attention)):
        path = export_onnx(float_unet, tmp_path / f"{name}.onnx", inputs, qparams, attention=operands)
        sqnr[name] = sqnr_db(openvino_runner(path, 1, inputs)(*inputs), reference)
        u8[name] = _openvino_int8_matmuls(path, inputs)
    assert u8["float_attention"] == 0 and u8["int8_attention"] >= len(attentions), u8
    assert sqnr["int8_attention"] >= 30.0 and sqnr["int8_attention"] > sqnr["float_attention"], sqnr


def test_noise_calibrated_attention_exports_and_same_layer_references_quantize_it(inputs: Inputs, tmp_path: Path) -> None:
    """The benchmark's default: the core's quantizers calibrated on noise with the attention matmuls quantized. Our
    QDQ export matches the fake-quant reference that quantizes them too, and the runtimes' same-layer references
    quantize those matmuls (the exclusion list keeps only the published full-precision layers)."""
    from tests.deploy.helpers import digits_unet
    from tfmq_exp.deploy.noise_calibration import noise_calibrated
    from tfmq_exp.deploy.reference import FakeQuantReference

    unet = digits_unet()
    calibration = noise_calibrated(unet, noise_batches(), attention_matmuls=True)
    attentions = [name for name, module in unet.named_modules() if type(module).__name__ == "Attention"]
    assert sorted(calibration.attention) == sorted(attentions)
    assert not noise_calibrated(unet, noise_batches()).attention  # off by default
    path = export_onnx(calibration.float_unet, tmp_path / "qdq.onnx", inputs, calibration.qparams,
                       attention=calibration.attention)
    with_attention = FakeQuantReference(unet, calibration.qparams, attention=calibration.attention)(*inputs)
    float_attention = FakeQuantReference(unet, calibration.qparams)(*inputs)
    assert not torch.equal(with_attention, float_attention)
    assert sqnr_db(openvino_runner(path, 1, inputs)(*inputs), with_attention) >= 30.0
    float_path = export_onnx(unet, tmp_path / "fp32.onnx", inputs)
    exclude = layers_outside(float_path, sorted({*calibration.qparams, *calibration.attention}))
    assert {"conv_in", "conv_out"} <= {onnx_layer_module(name) for name in exclude}
    assert not {onnx_layer_module(name) for name in exclude} & set(attentions)
    graph = onnx.load(str(ort_static_int8(float_path, tmp_path / "same.onnx", noise_batches(count=2, batch=3),
                                          exclude=exclude))).graph
    produced_by = {output: node.op_type for node in graph.node for output in node.output}
    quantized_matmuls = {onnx_layer_module(node.name) for node in graph.node if node.op_type == "MatMul"
                         and produced_by.get(node.input[1]) == "DequantizeLinear"}
    assert set(attentions) <= quantized_matmuls

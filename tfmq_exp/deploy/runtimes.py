"""Running exported ONNX UNets on ONNX Runtime and OpenVINO, and the two runtimes' own int8 quantization.

Every runner is a denoiser ``(sample, timesteps) -> eps`` (float32 torch tensors in and out) with a fixed
thread count. The runtimes are optional dependencies (the ``deploy`` extra): :func:`missing_runtimes` says
which are absent, and nothing here is imported by the rest of the package unless a runtime variant is asked for.

References for our own QDQ export (:mod:`tfmq_exp.deploy.onnx_export`): ONNX Runtime's ``quantize_static``
(QDQ, per-channel weights, min/max calibration) and NNCF's ``nncf.quantize`` on the OpenVINO model, both
calibrated on a few noise batches at random timesteps. They quantize with their own recipes and parameters;
ours runs the project's calibrated ones. By default they choose the layers themselves (every Conv / Gemm / MatMul,
attention matmuls included); with ``exclude`` (:func:`layers_outside`) they leave the layers our parameters
keep in float in float too, so that only the recipe differs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tfmq_exp.deploy.int8_grid import INT8_CODE_MAX, default_weight_code_max
from tfmq_exp.deploy.onnx_export import INPUT_NAMES
from tfmq_exp.deploy.temporal import as_float_timesteps
from tfmq_exp.temporal.features import TemporalFeatureSet

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Feeds = Callable[[torch.Tensor, torch.Tensor], Dict[str, np.ndarray]]
Batch = Tuple[torch.Tensor, torch.Tensor]
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "nncf", "onnx": "onnx"}
# Layer types with int8 kernels: quantizing adds / muls / concats as well would add QDQ pairs around float ops.
INT8_OP_TYPES = ["Conv", "Gemm", "MatMul"]


def missing_runtimes(names: Sequence[str] = tuple(RUNTIME_MODULES)) -> List[str]:
    """The modules among ``names`` that cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(RUNTIME_MODULES[name]) is None]


def _feeds(sample: torch.Tensor, timestep: torch.Tensor | float | int) -> Dict[str, np.ndarray]:
    timesteps = as_float_timesteps(timestep, sample.shape[0])
    return dict(zip(INPUT_NAMES, (sample.detach().float().numpy(), timesteps.numpy())))


def cache_feeds(cache: TemporalFeatureSet) -> Feeds:
    """Feeds of a graph exported with a temporal-feature cache: ``sample`` and the features of the timesteps."""

    def feeds(sample: torch.Tensor, timestep: torch.Tensor | float | int) -> Dict[str, np.ndarray]:
        features = cache.rows(as_float_timesteps(timestep, sample.shape[0]))
        return {INPUT_NAMES[0]: sample.detach().float().numpy(),
                **{name: value.contiguous().numpy() for name, value in features.items()}}

    return feeds


def ort_runner(path: str | Path, threads: int, feeds: Feeds = _feeds) -> Denoiser:
    """An ONNX Runtime CPU session of ``path`` (all graph optimizations, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, feeds(sample, timestep))[0])

    return run


def openvino_config(threads: int) -> dict:
    """OpenVINO CPU compile settings of every runner: ``threads`` threads, latency hint, f32 for float layers."""
    # f32 inference precision: on CPUs with AMX / AVX512-BF16 OpenVINO would otherwise run float layers in bf16.
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def _static_shapes(model, example: Batch, feeds: Feeds = _feeds) -> None:
    """Reshape an OpenVINO model to the example's (batch) shapes: static shapes compile to faster kernels."""
    model.reshape({name: list(value.shape) for name, value in feeds(*example).items()})


def openvino_runner(model_or_path, threads: int, example: Batch, feeds: Feeds = _feeds) -> Denoiser:
    """An OpenVINO CPU compiled model of an ``ov.Model`` or ONNX / IR file, specialised to ``example``'s shapes."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path.clone()
    _static_shapes(model, example, feeds)
    compiled = core.compile_model(model, "CPU", openvino_config(threads))
    request = compiled.create_infer_request()

    def run(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        outputs = request.infer(feeds(sample, timestep))
        return torch.from_numpy(np.array(outputs[compiled.output(0)]))

    return run


def warm_runtimes(path: str | Path, threads: int, example: Batch) -> None:
    """Load both runtimes' libraries and plugins (one session each of ``path``, run once and dropped), so that
    memory measured afterwards belongs to the sessions built then."""
    for runner in (ort_runner(path, threads), openvino_runner(path, threads, example)):
        runner(*example)


def _calibration_feeds(batches: Sequence[Batch]) -> List[Dict[str, np.ndarray]]:
    return [_feeds(sample, timestep) for sample, timestep in batches]


def onnx_layer_module(node_name: str) -> str:
    """The UNet module an exported node belongs to: ``/unet/down_blocks.0/resnets.0/conv1/Conv`` ->
    ``down_blocks.0.resnets.0.conv1`` (the exporter names nodes by module path, wrapper attribute first)."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[1:-1])


def layers_outside(float_path: str | Path, quantized_layers: Sequence[str]) -> List[str]:
    """Names of the float ONNX model's Conv / Gemm / MatMul nodes that are not among ``quantized_layers``.

    These are the layers our parameters keep in float (the published full-precision layers, and the attention
    matmuls ``q k^T`` and ``softmax v`` unless their attention module is among ``quantized_layers``: their nodes
    sit in the attention module rather than in a Linear).
    """
    import onnx

    keep = set(quantized_layers)
    graph = onnx.load(str(float_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in INT8_OP_TYPES and onnx_layer_module(node.name) not in keep]


def ort_static_int8(
    float_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[Batch],
    weight_code_max: Optional[int] = None,
    exclude: Sequence[str] = (),
) -> Path:
    """ONNX Runtime's own static int8 quantization of a float ONNX model (QDQ, per-channel, min/max).

    ``reduce_range`` (7-bit weights) is set on CPUs without VNNI, the runtime's own form of our 7-bit rule.
    ``exclude``: node names left in float (:func:`layers_outside`).

    Returns:
        ``out_path``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[Dict[str, np.ndarray]] = iter(_calibration_feeds(calibration))

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self.feeds, None)

    code_max = weight_code_max or default_weight_code_max()
    quantize_static(str(float_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=code_max < INT8_CODE_MAX, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OP_TYPES, nodes_to_exclude=list(exclude))
    return Path(out_path)


def nncf_int8(
    float_path: str | Path, calibration: Sequence[Batch], exclude: Sequence[str] = (),
    weight_code_max: Optional[int] = None,
):  # fmt: skip
    """NNCF's own post-training int8 quantization (default preset) of the float ONNX model read by OpenVINO.

    ``exclude``: ONNX node names left in float (:func:`layers_outside`); OpenVINO keeps them as the start of its
    op names (``/unet/conv_in/Conv/WithoutBiases``), so they become anchored patterns of NNCF's ignored scope.
    On CPUs without VNNI (``weight_code_max`` 63) every weight is quantized to half the int8 range
    (``OverflowFix.ENABLE``, NNCF's own form of our 7-bit rule). NNCF's default, ``FIRST_LAYER``, halves only the
    first convolution's: the other layers' full-range codes saturate the int16 sums of ``vpmaddubsw`` on AVX2
    (measured on the CIFAR-10 UNet: 13.1 dB against the fake-quant model, against 22.5 dB with VNNI).

    Returns:
        the quantized ``openvino.Model`` (compile it with :func:`openvino_runner`).
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.Core().read_model(str(float_path))
    _static_shapes(model, calibration[0])
    feeds = _calibration_feeds(calibration)
    patterns = [f"^{re.escape(name)}(/.*)?$" for name in exclude]
    ignored = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    code_max = weight_code_max or default_weight_code_max()
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if code_max < INT8_CODE_MAX else None)
    return nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=ignored,
                         advanced_parameters=advanced)

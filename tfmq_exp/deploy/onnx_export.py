"""ONNX export of a calibrated UNet with QuantizeLinear / DequantizeLinear (QDQ) pairs, our parameters unchanged.

What is exported: for every layer in ``qparams`` (the :class:`~tfmq_exp.deploy.qparams.LayerQParams` of
:func:`~tfmq_exp.deploy.from_quantized.deployment_inputs`: the AdaRound weight codes and the calibrated
activation scales / zero points) the input activation gets a uint8 per-tensor QDQ pair and the weight an
int8 per-output-channel one; everything else stays float32, exactly as in :func:`~tfmq_exp.deploy.lower.
lower_to_int8`. The int8 / uint8 parameters come from :mod:`tfmq_exp.deploy.int8_grid` (the same mapping as
the PT2E path): weight codes lie in ``[-(M + 1), M]`` with ``M = default_weight_code_max()`` (63 on CPUs
without VNNI, where the u8 x s8 int16 sums of ``vpmaddubsw`` would saturate with full 8-bit codes).
Nothing is re-calibrated.

How: the fake-quant model is expressed with PyTorch's own fake-quant ops (``fake_quantize_per_tensor_affine``
on each layer input through a forward pre-hook, ``fake_quantize_per_channel_affine`` on each weight through a
parametrization), and ``torch.onnx.export`` maps each op to a QuantizeLinear / DequantizeLinear pair. This
reuses the project's parameters and the exporter's QDQ mapping instead of inserting nodes by hand into a float
graph (which would need a mapping from ONNX node names back to module names). The TorchScript exporter
(``dynamo=False``) is used: it exports in well under a second on the digits UNet, keeps a dynamic batch axis
and needs no onnxscript. Its symbolic for per-channel fake quantization accepts only the full int8 range, so
the 7-bit rule is enforced by the scales (every code of an on-grid weight lies within ``[-(M + 1), M]``) and
checked when the weights are folded.

Folding: the exporter writes float weights followed by QuantizeLinear. :func:`fold_weight_quantize` replaces
each such constant QuantizeLinear by its int8 result (evaluated with ONNX's reference implementation), so the
file stores the int8 weight codes followed by DequantizeLinear, the QDQ form that ONNX Runtime, OpenVINO and
TensorRT recognise; the weights' all-zero zero points are dropped (OpenVINO runs a convolution whose weight
DequantizeLinear carries an explicit zero point in f32).

Zero points: by default each layer's input zero point is folded into the layer before export
(:mod:`tfmq_exp.deploy.zero_point_fold`): a ``Sub`` shifts the input by ``z s``, the QDQ pair quantizes with zero
point 0 and the same scale, the bias is corrected, and padded convolutions get a constant border map added to their
output. The numbers are those of the calibrated zero points up to rounding ties; OpenVINO's u8 convolutions run
faster with zero point 0 (measured in ``experiments/results/deploy/README.md``).

Attention: by default spatial self-attentions (UNet2DModel's attention blocks) are exported channel-first, their
projections as 1x1 convolutions (:mod:`tfmq_exp.deploy.channel_first_attention`), which OpenVINO runs with its int8
convolution kernel instead of its generic int8 GEMM; transformer attentions keep the token form.

Runtimes: OpenVINO runs every quantized layer of this graph in int8 (QDQ on layer inputs only is its own
form). ONNX Runtime fuses a convolution into ``QLinearConv`` only when its output is quantized too
(DQ -> Conv -> Q); our fake-quant models quantize layer inputs, not outputs, so on ONNX Runtime the
convolutions of this graph run in float (only ``MatMul`` becomes ``MatMulIntegerToFloat``). Quantizing conv
outputs would need parameters the calibration did not produce.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.nn.utils import parametrize

from tfmq_exp.deploy.attention_qdq import UINT8_RANGE, qdq_attention
from tfmq_exp.deploy.channel_first_attention import spatial_self_attentions, to_channel_first
from tfmq_exp.deploy.from_quantized import OperandQParams
from tfmq_exp.deploy.int8_grid import (
    INT8_CODE_MAX,
    default_weight_code_max,
    int8_grid_weight,
    int8_weight_scale,
    uint8_act_params,
)
from tfmq_exp.deploy.qparams import LayerQParams, fake_quantize_weight
from tfmq_exp.deploy.temporal import (
    FeatureArgsUNet,
    SampleTimestepUNet,
    as_float_timesteps,
    tib_layout,
)
from tfmq_exp.deploy.zero_point_fold import conv_input_sizes, fold_input_zero_points
from tfmq_exp.temporal.features import TemporalFeatureSet

INPUT_NAMES = ("sample", "timesteps")
OUTPUT_NAME = "eps"
OPSET = 17


class _WeightQDQ(nn.Module):
    """Parametrization ``w -> fake_quantize_per_channel_affine(w)`` (int8, symmetric, output-channel axis 0)."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float().clone())
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(
            weight, self.scale, self.zero_point, 0, -(INT8_CODE_MAX + 1), INT8_CODE_MAX
        )


def _input_qdq_hook(scale: float, zero_point: int):
    def hook(_module: nn.Module, inputs: tuple) -> tuple:
        x_hat = torch.fake_quantize_per_tensor_affine(inputs[0], scale, zero_point, *UINT8_RANGE)
        return (x_hat, *inputs[1:])

    return hook


@torch.no_grad()
def qdq_module(
    unet: nn.Module, qparams: Dict[str, LayerQParams], weight_code_max: int,
    attention: Optional[Dict[str, Dict[str, OperandQParams]]] = None,
) -> nn.Module:  # fmt: skip
    """``SampleTimestepUNet`` of :func:`qdq_layers` (the exported signature ``(sample, timesteps) -> eps``)."""
    return SampleTimestepUNet(qdq_layers(unet, qparams, weight_code_max, attention)).eval()


class _AddConstant:
    """Forward hook adding a constant to a layer's output (a folded zero point's border map)."""

    def __init__(self, constant: torch.Tensor) -> None:
        self.constant = constant

    def __call__(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.constant


@torch.no_grad()
def qdq_layers(
    unet: nn.Module, qparams: Dict[str, LayerQParams], weight_code_max: int,
    attention: Optional[Dict[str, Dict[str, OperandQParams]]] = None,
    fold_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
    channel_first: Sequence[str] = (),
) -> nn.Module:  # fmt: skip
    """A copy of ``unet`` whose quantized layers fake-quantize their input (uint8) and weight (int8) with torch ops,
    and whose attention matmuls (``attention``, :func:`~tfmq_exp.deploy.from_quantized.attention_inputs`) their
    operands.

    ``fold_sizes`` (each quantized convolution's input ``(H, W)``, :func:`~tfmq_exp.deploy.zero_point_fold.
    conv_input_sizes`) folds the input zero points into the layers (:mod:`tfmq_exp.deploy.zero_point_fold`: a
    shift before the QDQ pair, which then has zero point 0, a corrected bias, the border map added to the output);
    ``None`` keeps the calibrated zero points in the QDQ pairs. ``channel_first`` (spatial self-attentions,
    :func:`~tfmq_exp.deploy.channel_first_attention.spatial_self_attentions`) get their projections as 1x1
    convolutions on the channel-first map (:mod:`tfmq_exp.deploy.channel_first_attention`).

    Raises:
        NotImplementedError: a layer has per-timestep (FSC) activation parameters (one static graph, one scale).
        ValueError: a layer has more than 8 activation bits.
    """
    model = copy.deepcopy(unet).eval().float()
    for name, params in qparams.items():
        if params.is_per_timestep:
            raise NotImplementedError(f"{name}: per-timestep (FSC) activation parameters cannot be exported to "
                                      "one static QDQ graph")
        module = model.get_submodule(name)
        # on our grid (AdaRound codes kept), then on the int8 grid the runtime multiplies (unchanged when exact)
        module.weight.copy_(int8_grid_weight(fake_quantize_weight(module.weight, params), params, weight_code_max))
    for name in channel_first:  # before the fold and the QDQ hooks, which then attach to the 1x1 convolutions
        to_channel_first(model.get_submodule(name))
    if fold_sizes is not None:
        qparams, border_maps = fold_input_zero_points(model, qparams, fold_sizes)
        for name, border_map in border_maps.items():
            model.get_submodule(name).register_forward_hook(_AddConstant(border_map))
    for name, params in qparams.items():
        module = model.get_submodule(name)
        scale, _exact = int8_weight_scale(params, weight_code_max)
        parametrize.register_parametrization(module, "weight", _WeightQDQ(scale))
        act_scale, act_zero_point = uint8_act_params(params.act_scale, params.act_zero_point, params.a_bits)
        module.register_forward_pre_hook(_input_qdq_hook(act_scale, act_zero_point))
    qdq_attention(model, attention or {}, channel_first)  # :mod:`tfmq_exp.deploy.attention_qdq`
    return model


def _constant_values(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """Initializers, ``Constant`` node outputs and ``Identity`` copies of either, by name (nodes in graph order)."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _quantize_linear(node: onnx.NodeProto, inputs: Tuple[np.ndarray, ...]) -> np.ndarray:
    """Evaluate one QuantizeLinear node with ONNX's reference implementation (its rounding and saturation)."""
    names = [f"in{i}" for i in range(len(inputs))]
    single = onnx.helper.make_node("QuantizeLinear", names, ["out"], axis=next(
        (a.i for a in node.attribute if a.name == "axis"), 1))
    return ReferenceEvaluator(single).run(None, dict(zip(names, inputs)))[0]


def fold_weight_quantize(model: onnx.ModelProto, weight_code_max: int) -> int:
    """Replace every QuantizeLinear of a constant per-channel weight by its int8 codes (in place).

    Args:
        model: an exported QDQ model.
        weight_code_max: the codes must lie in ``[-(M + 1), M]``.

    Returns:
        the number of folded weights.

    Raises:
        ValueError: a folded weight has codes outside ``[-(M + 1), M]``.
    """
    constants = _constant_values(model)
    folded_names: set = set()
    kept = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in constants for name in node.input):
            kept.append(node)
            continue
        codes = _quantize_linear(node, tuple(constants[name] for name in node.input))
        if codes.dtype == np.int8 and (codes.min() < -(weight_code_max + 1) or codes.max() > weight_code_max):
            raise ValueError(f"{node.name}: weight codes span [{codes.min()}, {codes.max()}], outside "
                             f"[{-(weight_code_max + 1)}, {weight_code_max}]")
        model.graph.initializer.append(numpy_helper.from_array(codes, name=node.output[0]))
        folded_names.add(node.output[0])
    for node in kept:
        # Symmetric weights: drop the all-zero zero point (ONNX's default). With it, OpenVINO's low-precision
        # transformations treat the weight as asymmetric and leave the layer in f32.
        if node.op_type == "DequantizeLinear" and node.input[0] in folded_names and len(node.input) == 3:
            if node.input[2] in constants and not np.any(constants[node.input[2]]):
                del node.input[2]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused_initializers(model)
    return len(folded_names)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)


@torch.no_grad()
def export_onnx(
    unet: nn.Module,
    path: str | Path,
    example_inputs: Tuple[torch.Tensor, torch.Tensor],
    qparams: Optional[Dict[str, LayerQParams]] = None,
    weight_code_max: Optional[int] = None,
    cache: Optional[TemporalFeatureSet] = None,
    attention: Optional[Dict[str, Dict[str, OperandQParams]]] = None,
    fold_zero_points: bool = True,
    channel_first_attention: bool = True,
) -> Path:
    """Export ``unet`` to ONNX, float (``qparams=None``) or QDQ int8 with our parameters; dynamic batch axis.

    Args:
        unet: a diffusers UNet called as ``unet(sample, timesteps).sample`` (not modified).
        path: the ``.onnx`` file to write.
        example_inputs: ``(sample, timestep)`` used for tracing (any batch size).
        qparams: the layers to quantize and their parameters; ``None`` exports the float model.
        weight_code_max: int8 weight codes lie in ``[-(M + 1), M]``; default 127 with VNNI / AMX, 63 without.
        cache: cache-based maintenance: the TIB leaves the graph and its features become inputs (one per
            ResNet block, named after it, ``[B, C_i]``); the TIB layers' parameters in ``qparams`` are ignored.
        attention: the attention matmuls' operand parameters (:func:`~tfmq_exp.deploy.from_quantized.
            attention_inputs`); ``None`` keeps every attention in float (fused SDPA).
        fold_zero_points: fold the layers' input zero points (:func:`qdq_layers`; exact up to rounding ties):
            every layer's activation QDQ pair then has zero point 0, which OpenVINO's u8 convolutions run faster
            (CIFAR-10 UNet, AVX2, batch 8: 874 against 908 ms,
            ``experiments/results/deploy/avx2/profile_openvino_zero_points_cifar10_b8.txt``). ``False`` for graphs
            whose activation parameters are rewritten afterwards (:mod:`tfmq_exp.deploy.grouped_onnx`), or to keep
            the calibrated zero points.
        channel_first_attention: export spatial self-attentions with 1x1-convolution projections on the
            channel-first map (:mod:`tfmq_exp.deploy.channel_first_attention`; the same numbers up to float
            summation order), which OpenVINO runs with its int8 convolution kernel instead of its generic int8 GEMM.

    Returns:
        ``path``. Inputs ``sample`` ``[B, C, H, W]`` float32 and ``timesteps`` ``[B]`` float32 (with ``cache``:
        ``sample`` and the features); output ``eps``.
    """
    code_max = weight_code_max or default_weight_code_max()
    if cache is not None and qparams:
        removed = set(tib_layout(unet).layer_names)
        qparams = {name: params for name, params in qparams.items() if name not in removed}
    sample, timestep = example_inputs
    timesteps = as_float_timesteps(timestep, sample.shape[0])
    fold_sizes: Optional[Dict[str, Tuple[int, int]]] = None
    channel_first: Sequence[str] = []
    run = forward = lambda: SampleTimestepUNet(unet).eval()(sample, timesteps)  # noqa: E731
    if qparams and fold_zero_points:
        fold_sizes = {}
        run = lambda: fold_sizes.update(conv_input_sizes(unet, qparams, forward))  # noqa: E731
    if qparams and channel_first_attention:
        channel_first = spatial_self_attentions(unet, run)  # one forward records both
    elif fold_sizes is not None:
        run()
    model = (qdq_layers(unet, qparams, code_max, attention, fold_sizes, channel_first) if qparams
             else copy.deepcopy(unet).eval().float())
    input_names = list(INPUT_NAMES)
    if cache is None:
        module: nn.Module = SampleTimestepUNet(model)
        inputs: tuple = (sample, timesteps)
    else:
        module = FeatureArgsUNet(model, sorted(cache.features))
        input_names = [INPUT_NAMES[0], *module.names]
        inputs = (sample, *module.arguments(cache.rows(timesteps)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch_axis = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module.eval(), inputs, str(path), dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={name: batch_axis for name in (*input_names, OUTPUT_NAME)})
    if qparams:
        model = onnx.load(str(path))
        fold_weight_quantize(model, code_max)
        onnx.save(model, str(path))
    return path

"""One quantized 3x3 convolution on ONNX Runtime and OpenVINO: which int8 kernels each runtime reaches, and at what cost.

Why: on the AVX2 EPYC ONNX Runtime's own quantization is the fastest int8 model, while our QDQ export (activation
QDQ on layer inputs only, as our fake-quant models quantize) runs its convolutions in float on ONNX Runtime. This
probe isolates one layer in the graph forms a runtime could be given, all with 7-bit-safe int8 weight codes and one
uint8 activation grid (scale, zero point):

- ``float``: Conv on float weights.
- ``qdq_input`` (our export's form): Q -> DQ on the input, DQ on the int8 weights, float Conv.
- ``qdq_input_folded``: the same layer with the input zero point folded (:mod:`tfmq_exp.deploy.zero_point_fold`,
  the default export): Sub ``z s``, Q -> DQ with zero point 0, Conv with bias ``b - z s sum(W)``, Add the border map.
- ``conv_integer``: Q, ``ConvInteger`` (int32 accumulation, padding with the zero point), Cast, per-channel Mul,
  Add bias: the exact integer form of ``qdq_input`` that ONNX Runtime accepts without an output quantizer.
- ``qlinear_conv``: ``QLinearConv`` with the output requantized to uint8 on its min / max range (ONNX Runtime's
  own form; not our numerics: its error against ``qdq_input`` is printed).

Each graph runs on ONNX Runtime (CPU provider) and, for the first three, on OpenVINO (CPU plugin); median
of ``--repeats`` rounds (each round calls every runner once, in turn) after one warm-up call, one thread, and the
largest absolute difference from ONNX Runtime's ``qdq_input`` output.

Usage: ``python experiments/conv_kernel_probe.py [--channels 256] [--size 16] [--batch 8] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tfmq_exp.deploy.bench_setup import interleaved_times
from tfmq_exp.deploy.int8_grid import default_weight_code_max
from tfmq_exp.deploy.zero_point_fold import border_map

OPSET = 21


def _graphs(
    channels: int, size: int, batch: int, output_grid: Tuple[float, int] = (1.0, 128), seed: int = 0
) -> Tuple[Dict[str, onnx.ModelProto], np.ndarray]:
    """The four graph forms and the input; ``output_grid`` is ``QLinearConv``'s output (scale, zero point)."""
    rng = np.random.default_rng(seed)
    code_max = default_weight_code_max()
    codes = rng.integers(-code_max, code_max + 1, (channels, channels, 3, 3)).astype(np.int8)
    weight_scale = (rng.random(channels) * 0.01 + 0.001).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    act_scale, act_zero_point = np.float32(0.03), np.uint8(128)
    const = lambda name, value: numpy_helper.from_array(np.asarray(value), name)  # noqa: E731
    shared = [const("s_x", act_scale), const("z_x", act_zero_point), const("w", codes), const("s_w", weight_scale),
              const("b", bias)]
    quantize = helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"])
    pads = [1, 1, 1, 1]
    shift = float(act_zero_point) * float(act_scale)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    conv.weight.data = torch.from_numpy(codes.astype(np.float32) * weight_scale[:, None, None, None])
    border = border_map(conv, (size, size), shift).numpy()
    folded_bias = bias - shift * conv.weight.data.sum(dim=(1, 2, 3)).numpy()
    nodes = {
        "float": ([helper.make_node("Conv", ["x", "w_f", "b"], ["y"], pads=pads)],
                  [const("w_f", codes.astype(np.float32) * weight_scale[:, None, None, None]), const("b", bias)]),
        "qdq_input": ([quantize, helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_d"]),
                       helper.make_node("DequantizeLinear", ["w", "s_w"], ["w_d"], axis=0),
                       helper.make_node("Conv", ["x_d", "w_d", "b"], ["y"], pads=pads)], shared),
        "qdq_input_folded": ([helper.make_node("Sub", ["x", "minus_shift"], ["x_s"]),
                              helper.make_node("QuantizeLinear", ["x_s", "s_x", "z_0"], ["x_q"]),
                              helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_0"], ["x_d"]),
                              helper.make_node("DequantizeLinear", ["w", "s_w"], ["w_d"], axis=0),
                              helper.make_node("Conv", ["x_d", "w_d", "b_folded"], ["y_0"], pads=pads),
                              helper.make_node("Add", ["y_0", "border"], ["y"])],
                             shared + [const("minus_shift", np.float32(-shift)), const("z_0", np.uint8(0)),
                                       const("b_folded", folded_bias.astype(np.float32)),
                                       const("border", border.astype(np.float32))]),
        "conv_integer": ([quantize, helper.make_node("ConvInteger", ["x_q", "w", "z_x"], ["acc"], pads=pads),
                          helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
                          helper.make_node("Mul", ["acc_f", "rescale"], ["scaled"]),
                          helper.make_node("Add", ["scaled", "b_4d"], ["y"])],
                         shared + [const("rescale", (act_scale * weight_scale).reshape(1, -1, 1, 1)),
                                   const("b_4d", bias.reshape(1, -1, 1, 1))]),
        "qlinear_conv": ([quantize, helper.make_node("QLinearConv", ["x_q", "s_x", "z_x", "w", "s_w", "z_w", "s_y",
                                                                      "z_y", "b_i32"], ["y_q"], pads=pads),
                          helper.make_node("DequantizeLinear", ["y_q", "s_y", "z_y"], ["y"])],
                         shared + [const("z_w", np.zeros(channels, np.int8)), const("s_y", np.float32(output_grid[0])),
                                   const("z_y", np.uint8(output_grid[1])),
                                   const("b_i32", np.round(bias / (act_scale * weight_scale)).astype(np.int32))]),
    }
    shape = [batch, channels, size, size]
    models = {}
    for name, (graph_nodes, initializers) in nodes.items():
        used = {i for node in graph_nodes for i in node.input}
        graph = helper.make_graph(graph_nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [init for init in initializers if init.name in used])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 10
        models[name] = model
    return models, rng.standard_normal(shape).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if min(args.channels, args.size, args.batch, args.repeats) < 1:
        parser.error("--channels, --size, --batch and --repeats must be >= 1")
    import onnxruntime as ort
    import openvino as ov

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    models, x = _graphs(args.channels, args.size, args.batch)
    output = ort.InferenceSession(models["qdq_input"].SerializeToString(), options).run(None, {"x": x})[0]
    low, high = min(float(output.min()), 0.0), max(float(output.max()), 0.0)
    output_scale = (high - low) / 255
    models, x = _graphs(args.channels, args.size, args.batch, (output_scale, int(round(-low / output_scale))))
    runners: Dict[str, Callable[[], np.ndarray]] = {}
    for name, model in models.items():
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runners[f"onnxruntime {name}"] = lambda s=session: s.run(None, {"x": x})[0]
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("float", "qdq_input", "qdq_input_folded"):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(models[name], path)
            compiled = core.compile_model(core.read_model(path), "CPU",
                                          {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            runners[f"openvino {name}"] = lambda r=request: r.infer({0: x})[0]
        reference = runners["onnxruntime qdq_input"]()
        print(f"one 3x3 convolution: {args.channels} -> {args.channels} channels, {args.size}x{args.size}, batch "
              f"{args.batch}, 1 thread, weight codes within {default_weight_code_max()}")
        errors = {name: float(np.abs(run() - reference).max()) for name, run in runners.items()}  # also warms up
        for name, seconds in interleaved_times(runners, args.repeats, warmup=0).items():
            print(f"  {name:28s} {1e3 * statistics.median(seconds):8.2f} ms   max |y - y_qdq_input| {errors[name]:.3g}")


if __name__ == "__main__":
    main()

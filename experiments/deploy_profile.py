"""Where the deployed int8 paths spend their time, on the benchmark's model (``tfmq-bench``'s noise-calibrated W8A8
parameters, published full-precision layers), one forward batch at a time.

``--path openvino``: our QDQ export (attention matmuls quantized, as ``--attention int8``) compiled by OpenVINO's CPU
plugin with ``PERF_COUNT``: time per (layer type, kernel) and the slowest layers for one inference after two warm-up
calls. Kernel names say what runs in int8 (``*_I8``) and in float (``*_f32``).

``--path pt2e``: the PT2E graph (:func:`~tfmq_exp.deploy.lower.lower_to_int8`: inductor, freezing, oneDNN ``qconv``
/ ``qlinear``) under ``torch.profiler``: self CPU time per call by operator group (int8 convolutions and linears,
the float layers, SDPA, inductor's generated kernels) and the top operators.

``--path openvino_zero_points``: our QDQ export twice, with the calibrated zero points in its QDQ pairs and with them
folded into the layers (the default export), on OpenVINO: each one's SQNR against the fake-quant model and their
interleaved median latency.

``--path openvino_attention_layout``: our QDQ export twice, with the spatial self-attentions' projections as
``Linear`` on tokens and as 1x1 convolutions on the channel-first map (the default export,
:mod:`tfmq_exp.deploy.channel_first_attention`), on OpenVINO: SQNR against fake-quant and interleaved median latency;
then the float export in both layouts (the FP32 references keep the token form).

``--path openvino_group_norm``: our QDQ export with GroupNorm as torch exports it (OpenVINO: reorders to the planar
layout, MVN, reorders back) and computed from per-channel statistics (:class:`ChannelStatisticsGroupNorm`, two
variance formulas; no reorders), on OpenVINO: SQNR against fake-quant and interleaved latency. A probe of a layout
idea, not an export option.

``--path denormals``: flush-to-zero on both sides of the eager line: our export on OpenVINO with and without
``CPU_DENORMALS_OPTIMIZATION`` and PyTorch FP32 eager with and without ``torch.set_flush_denormal``, interleaved.

``--path pt2e_zero_points``: the PT2E graph lowered three times: with the calibrated (asymmetric) activation
parameters handed to the kernels as they are (``fold_zero_points=False``), with the zero points folded into the
biases (:mod:`tfmq_exp.deploy.zero_point_fold`, the default, exact), and with every activation zero point set to 0
(same scales; numerically wrong for negative inputs, a speed bound only): ``qconv_pointwise``'s self CPU time per
call in each, the graphs' interleaved median latency, and each one's SQNR against the fake-quant model.

Usage: ``python experiments/deploy_profile.py --path NAME [--model cifar10] [--batch 8] [--threads 1] [--rounds 5]``
(``NAME``: one of the paths above; ``--help`` lists them).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import statistics
import tempfile
import time
from typing import Callable, Dict, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS
from tfmq_exp.deploy.bench_setup import benchmark_calibration, build_benchmark_unet, interleaved_times, sample_shape
from tfmq_exp.deploy.from_artifact import sqnr_db
from tfmq_exp.deploy.lower import lower_to_int8
from tfmq_exp.deploy.noise_calibration import NoiseCalibration
from tfmq_exp.deploy.reference import FakeQuantReference

Batch = Tuple[torch.Tensor, torch.Tensor]
PT2E_GROUPS = (
    ("oneDNN int8 conv", ("qconv",)),
    ("oneDNN int8 linear", ("qlinear",)),
    ("float conv", ("convolution", "conv2d", "mkldnn_convolution")),
    ("float matmul / linear", ("bmm", "addmm", "mm", "linear", "mkl_linear")),
    ("attention (SDPA)", ("scaled_dot_product", "flash_attention")),
    ("inductor generated kernels", ("compiledfxgraph", "cpp_fused", "kernel")),
)


def _pt2e_group(op_name: str) -> str:
    lowered = op_name.lower()
    return next((group for group, keys in PT2E_GROUPS if any(key in lowered for key in keys)), "other")


def profile_openvino(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    import openvino as ov

    from tfmq_exp.deploy.onnx_export import INPUT_NAMES, export_onnx
    from tfmq_exp.deploy.runtimes import openvino_config

    sample, timesteps = batch
    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(unet, f"{directory}/int8_qdq.onnx", batch, calibration.qparams,
                           attention=calibration.attention)
        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({INPUT_NAMES[0]: list(sample.shape), INPUT_NAMES[1]: [sample.shape[0]]})
        compiled = core.compile_model(model, "CPU", {**openvino_config(args.threads), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = {INPUT_NAMES[0]: sample.numpy(), INPUT_NAMES[1]: timesteps.numpy()}
    for _ in range(2):
        request.infer(feeds)
    start = time.perf_counter()
    request.infer(feeds)
    print(f"OpenVINO, our QDQ export: {1e3 * (time.perf_counter() - start):.1f} ms")
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    layers = []
    for info in request.profiling_info:
        microseconds = info.real_time.total_seconds() * 1e6
        totals[(info.node_type, info.exec_type)] += microseconds
        counts[(info.node_type, info.exec_type)] += 1
        layers.append((microseconds, info.node_type, info.exec_type, info.node_name))
    total = sum(totals.values())
    print("time by (layer type, kernel):")
    for (node_type, exec_type), microseconds in totals.most_common():
        if microseconds > 0:
            print(f"  {microseconds / 1e3:8.1f} ms {100 * microseconds / total:5.1f} %  "
                  f"x{counts[(node_type, exec_type)]:<4d}{node_type:<16s}{exec_type}")
    free = [f"{node_type} x{counts[(node_type, exec_type)]}" for (node_type, exec_type), us in totals.items() if us == 0]
    print("no time of their own (fused into a neighbour, or views): " + ", ".join(sorted(free)))
    print(f"slowest {args.top} layers:")
    for microseconds, node_type, exec_type, name in sorted(layers, reverse=True)[: args.top]:
        print(f"  {microseconds / 1e3:7.2f} ms  {node_type:<14s}{exec_type:<24s}{name}")


def _self_cpu_ms(run: Callable[[], object], calls: int = 3) -> Dict[str, Tuple[float, int]]:
    """Operator -> (self CPU ms per call, calls per forward) over ``calls`` forwards."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            run()
    return {e.key: (e.self_cpu_time_total / 1e3 / calls, e.count // calls)
            for e in profiler.key_averages() if e.self_cpu_time_total > 0}


def profile_pt2e(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    lowered = lower_to_int8(unet, calibration.qparams, batch)  # compiled by its first call
    operators = _self_cpu_ms(lambda: lowered(*batch))
    total = sum(ms for ms, _ in operators.values())
    groups: collections.Counter = collections.Counter()
    for name, (ms, _) in operators.items():
        groups[_pt2e_group(name)] += ms
    print(f"PT2E int8: {total:.1f} ms self CPU per call ({len(calibration.qparams)} quantized layers)")
    for group, ms in groups.most_common():
        print(f"  {100 * ms / total:5.1f} %  {ms:8.1f} ms  {group}")
    print(f"top {args.top} operators (self CPU per call):")
    for name, (ms, count) in sorted(operators.items(), key=lambda item: item[1][0], reverse=True)[: args.top]:
        print(f"  {ms:8.1f} ms  x{count:<4d}{name[:90]}")


def profile_pt2e_zero_points(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    zero = {name: dataclasses.replace(p, act_zero_point=0) for name, p in calibration.qparams.items()}
    graphs = {"zero points at run time": lower_to_int8(unet, calibration.qparams, batch, fold_zero_points=False),
              "zero points folded": lower_to_int8(unet, calibration.qparams, batch),
              "zero points 0 (bound)": lower_to_int8(unet, zero, batch)}
    reference = FakeQuantReference(unet, calibration.qparams)(*batch)
    for name, graph in graphs.items():
        qconv = sum(ms for op, (ms, _) in _self_cpu_ms(lambda g=graph: g(*batch)).items() if "qconv" in op)
        print(f"{name}: qconv_pointwise {qconv:.1f} ms per call, SQNR vs fake-quant "
              f"{sqnr_db(graph(*batch), reference):.1f} dB")
    times = interleaved_times({name: (lambda g=graph: g(*batch)) for name, graph in graphs.items()}, args.rounds, 0)
    print("median per forward: " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f} ms" for n, v in times.items()))


def _openvino_compare(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args,
                      exports: Dict[str, Tuple[torch.nn.Module, dict]]) -> None:
    """QDQ exports of (model, ``export_onnx`` keyword arguments) on OpenVINO: each one's SQNR against ``unet``'s
    fake-quant model, interleaved median latency, and the median of the per-round ratios of each to the first."""
    from tfmq_exp.deploy.onnx_export import export_onnx
    from tfmq_exp.deploy.runtimes import openvino_runner

    reference = FakeQuantReference(unet, calibration.qparams, attention=calibration.attention)(*batch)
    runners = {}
    with tempfile.TemporaryDirectory() as directory:
        for index, (name, (model, options)) in enumerate(exports.items()):
            path = export_onnx(model, f"{directory}/{index}.onnx", batch, calibration.qparams,
                               attention=calibration.attention, **options)
            runners[name] = openvino_runner(path, args.threads, batch)
            print(f"{name}: SQNR vs fake-quant {sqnr_db(torch.as_tensor(runners[name](*batch)), reference):.2f} dB")
    _print_interleaved(interleaved_times({name: (lambda r=run: r(*batch)) for name, run in runners.items()},
                                         args.rounds))


def _print_interleaved(times: Dict[str, list]) -> None:
    """Median per forward of each entry, and the median of the per-round ratios of each to the first."""
    print("median per forward: " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f} ms" for n, v in times.items()))
    (first_name, first), *others = times.items()
    for name, values in others:
        print(f"median of per-round ratios {name} / {first_name}: "
              f"{statistics.median(b / a for a, b in zip(first, values)):.3f}")


def _openvino_pair(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args,
                   exports: Dict[str, dict]) -> None:
    """Two QDQ exports of ``unet`` (``export_onnx`` keyword arguments each), as :func:`_openvino_compare`."""
    _openvino_compare(unet, calibration, batch, args, {name: (unet, options) for name, options in exports.items()})


def profile_openvino_zero_points(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    _openvino_pair(unet, calibration, batch, args, {
        "zero points in the QDQ pairs": {"fold_zero_points": False},
        "zero points folded": {"fold_zero_points": True}})


def _channel_first_float(unet: torch.nn.Module, batch: Batch) -> torch.nn.Module:
    """A float copy of ``unet`` whose spatial self-attentions run channel-first with float operands."""
    from tfmq_exp.deploy.attention_qdq import qdq_attention
    from tfmq_exp.deploy.channel_first_attention import spatial_self_attentions, to_channel_first
    from tfmq_exp.deploy.temporal import SampleTimestepUNet

    model = copy.deepcopy(unet).eval()
    names = spatial_self_attentions(model, lambda: SampleTimestepUNet(model)(*batch))
    for name in names:
        to_channel_first(model.get_submodule(name))
    qdq_attention(model, {}, names)
    return model


def profile_openvino_attention_layout(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch,
                                      args) -> None:
    from tfmq_exp.deploy.onnx_export import export_onnx
    from tfmq_exp.deploy.runtimes import openvino_runner

    _openvino_pair(unet, calibration, batch, args, {
        "attention on tokens (Linear projections)": {"channel_first_attention": False},
        "attention channel-first (1x1 conv projections)": {"channel_first_attention": True}})
    # The FP32 references keep diffusers' token attention: is the layout worth anything to them?
    with tempfile.TemporaryDirectory() as directory:
        runners = {
            f"FP32 {name}": openvino_runner(export_onnx(model, f"{directory}/{name}.onnx", batch), args.threads, batch)
            for name, model in (("tokens", unet), ("channel-first", _channel_first_float(unet, batch)))}
    _print_interleaved(interleaved_times({name: (lambda r=run: r(*batch)) for name, run in runners.items()},
                                         args.rounds))


class ChannelStatisticsGroupNorm(torch.nn.Module):
    """``nn.GroupNorm`` from per-channel statistics, for the ``openvino_group_norm`` probe (not used by the exports).

    torch exports GroupNorm as ``Reshape [B, G, -1] -> InstanceNormalization -> Reshape``, which OpenVINO runs as an
    MVN on the planar layout, with reorders from and back to the convolutions' channel-last one. Here the
    statistics come from reductions over the spatial axes only (per channel, any layout), averaged over each
    group's channels on the small ``[B, C]`` tensors, and the normalization is one per-channel ``x * a + b`` that
    OpenVINO can fuse with the SiLU and the next quantizer. ``variance="two_pass"``: ``E[(x - mean)^2]``;
    ``"one_pass"``: ``E[x^2] - mean^2`` with ``E[x^2]`` from ``ReduceL2`` (no squared tensor written).
    """

    def __init__(self, norm: torch.nn.GroupNorm, variance: str = "two_pass") -> None:
        super().__init__()
        if variance not in ("two_pass", "one_pass"):
            raise ValueError(f"variance={variance!r}: expected 'two_pass' or 'one_pass'")
        self.groups, self.eps, self.variance = norm.num_groups, norm.eps, variance
        self.weight, self.bias = norm.weight, norm.bias

    def _group_mean(self, per_channel: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` -> each channel's group mean, ``[B, C]``."""
        batch, channels = per_channel.shape
        grouped = per_channel.reshape(batch, self.groups, channels // self.groups)
        return grouped.mean(-1, keepdim=True).expand_as(grouped).reshape(batch, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.dim()))
        as_map = (*x.shape[:2], *([1] * len(spatial)))
        mean = self._group_mean(x.mean(spatial)).reshape(as_map)
        if self.variance == "two_pass":
            centred = x - mean
            variance = self._group_mean((centred * centred).mean(spatial)).reshape(as_map)
        else:
            count = x[0, 0].numel()
            mean_square = torch.linalg.vector_norm(x, ord=2, dim=spatial) ** 2 / count
            variance = self._group_mean(mean_square).reshape(as_map) - mean * mean
        scale = self.weight.reshape(as_map[1:]) * torch.rsqrt(variance + self.eps)
        return x * scale + (self.bias.reshape(as_map[1:]) - mean * scale)


def _statistics_group_norm(unet: torch.nn.Module, variance: str) -> torch.nn.Module:
    """A copy of ``unet`` with every ``nn.GroupNorm`` replaced by :class:`ChannelStatisticsGroupNorm`."""
    model = copy.deepcopy(unet).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.GroupNorm):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ChannelStatisticsGroupNorm(module, variance))
    return model


def profile_openvino_group_norm(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    variants = {variance: _statistics_group_norm(unet, variance) for variance in ("two_pass", "one_pass")}
    with torch.no_grad():
        expected = unet(*batch).sample
        for variance, model in variants.items():
            print(f"float, GroupNorm from channel statistics ({variance}): SQNR vs nn.GroupNorm "
                  f"{sqnr_db(model(*batch).sample, expected):.1f} dB")
    _openvino_compare(unet, calibration, batch, args, {
        "GroupNorm as exported (MVN)": (unet, {}),
        **{f"GroupNorm from channel statistics ({variance})": (model, {}) for variance, model in variants.items()}})


def profile_denormals(unet: torch.nn.Module, calibration: NoiseCalibration, batch: Batch, args) -> None:
    """Flush-to-zero on both sides: our export on OpenVINO with and without ``CPU_DENORMALS_OPTIMIZATION``, and
    PyTorch FP32 eager with and without ``torch.set_flush_denormal``."""
    import openvino as ov

    from tfmq_exp.deploy.onnx_export import INPUT_NAMES, export_onnx
    from tfmq_exp.deploy.runtimes import openvino_config

    sample, timesteps = batch
    feeds = {INPUT_NAMES[0]: sample.numpy(), INPUT_NAMES[1]: timesteps.numpy()}
    core = ov.Core()
    calls: Dict[str, Callable[[], object]] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(unet, f"{directory}/int8_qdq.onnx", batch, calibration.qparams,
                           attention=calibration.attention)
        for name, extra in (("OpenVINO int8", {}), ("OpenVINO int8, denormals flushed",
                                                    {"CPU_DENORMALS_OPTIMIZATION": True})):
            model = core.read_model(str(path))
            model.reshape({name_: list(value.shape) for name_, value in feeds.items()})
            compiled = core.compile_model(model, "CPU", {**openvino_config(args.threads), **extra})
            calls[name] = lambda r=compiled.create_infer_request(): r.infer(feeds)

    def eager(flush: bool) -> None:
        torch.set_flush_denormal(flush)
        try:
            with torch.inference_mode():
                unet(*batch)
        finally:
            torch.set_flush_denormal(False)

    calls["FP32 eager"] = lambda: eager(False)
    calls["FP32 eager, denormals flushed"] = lambda: eager(True)
    times = interleaved_times(calls, args.rounds)
    _print_interleaved({name: times[name] for name in ("OpenVINO int8", "OpenVINO int8, denormals flushed")})
    _print_interleaved({name: times[name] for name in ("FP32 eager", "FP32 eager, denormals flushed")})
    for flushed in (False, True):
        suffix = ", denormals flushed" if flushed else ""
        ratios = [a / b for a, b in zip(times["FP32 eager" + suffix], times["OpenVINO int8" + suffix])]
        print(f"median of per-round ratios FP32 eager / OpenVINO int8{suffix}: {statistics.median(ratios):.3f}")


PATHS = {"openvino": profile_openvino, "openvino_zero_points": profile_openvino_zero_points,
         "openvino_attention_layout": profile_openvino_attention_layout,
         "openvino_group_norm": profile_openvino_group_norm, "denormals": profile_denormals, "pt2e": profile_pt2e,
         "pt2e_zero_points": profile_pt2e_zero_points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=sorted(PATHS), required=True)
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=20, help="layers / operators listed")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the paths that compare graphs")
    args = parser.parse_args()
    if args.batch < 1 or args.threads < 1:
        parser.error("--batch and --threads must be >= 1")
    if args.path.startswith("openvino") or args.path == "denormals":
        from tfmq_exp.deploy.runtimes import missing_runtimes

        if missing_runtimes(("onnx", "openvino")):
            parser.error(f"--path {args.path} needs {', '.join(missing_runtimes(('onnx', 'openvino')))} "
                         "(pip install 'tfmq-exp[deploy]')")
    torch.set_num_threads(args.threads)
    try:
        unet, _ = build_benchmark_unet(args.model)
    except ValueError as error:
        parser.error(str(error))
    # PT2E keeps attention in float: its graphs get the parameters without attention operands.
    calibration = benchmark_calibration(unet, PUBLISHED_FP_PATTERNS,
                                        attention_matmuls=not args.path.startswith("pt2e"))
    sample = torch.randn(args.batch, *sample_shape(unet), generator=torch.Generator().manual_seed(2))
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s)")
    PATHS[args.path](unet, calibration, (sample, torch.full((args.batch,), 500.0)), args)


if __name__ == "__main__":
    main()

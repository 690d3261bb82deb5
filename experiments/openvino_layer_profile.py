"""Where OpenVINO spends the time of our QDQ export: per-layer-type totals from its performance counters.

Exports the benchmark's model (``tfmq-bench``'s noise-calibrated W8A8 parameters, published full-precision layers,
attention matmuls quantized as ``--attention int8``) to QDQ ONNX, compiles it on OpenVINO's CPU plugin with
``PERF_COUNT`` and prints, for one inference after two warm-up calls, the time per (layer type, kernel) and the
slowest layers. The kernel names say what runs in int8 (``*_I8``) and in float (``*_f32``).

Usage: ``python experiments/openvino_layer_profile.py [--model cifar10] [--batch 8] [--threads 1]``
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

import torch

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS
from tfmq_exp.deploy.bench_setup import build_benchmark_unet, noise_qparams, sample_shape
from tfmq_exp.deploy.onnx_export import INPUT_NAMES, export_onnx
from tfmq_exp.deploy.runtimes import openvino_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=20, help="slowest layers listed")
    args = parser.parse_args()
    import openvino as ov

    torch.set_num_threads(args.threads)
    unet, _ = build_benchmark_unet(args.model)
    calibration = noise_qparams(unet, PUBLISHED_FP_PATTERNS, attention_matmuls=True)
    sample = torch.randn(args.batch, *sample_shape(unet), generator=torch.Generator().manual_seed(2))
    timesteps = torch.full((args.batch,), 500.0)
    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(unet, f"{directory}/int8_qdq.onnx", (sample, timesteps), calibration.qparams,
                           attention=calibration.attention)
        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({INPUT_NAMES[0]: list(sample.shape), INPUT_NAMES[1]: [args.batch]})
        compiled = core.compile_model(model, "CPU", {**openvino_config(args.threads), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = {INPUT_NAMES[0]: sample.numpy(), INPUT_NAMES[1]: timesteps.numpy()}
    for _ in range(2):
        request.infer(feeds)
    start = time.perf_counter()
    request.infer(feeds)
    print(f"{args.model} batch {args.batch}, {args.threads} thread(s): {1e3 * (time.perf_counter() - start):.1f} ms")
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    layers = []
    for info in request.profiling_info:
        microseconds = info.real_time.total_seconds() * 1e6
        key = (info.node_type, info.exec_type)
        totals[key] += microseconds
        counts[key] += 1
        layers.append((microseconds, info.node_type, info.exec_type, info.node_name))
    total = sum(totals.values())
    print("time by (layer type, kernel):")
    for (node_type, exec_type), microseconds in totals.most_common():
        if microseconds > 0:
            print(f"  {microseconds / 1e3:8.1f} ms {100 * microseconds / total:5.1f} %  x{counts[(node_type, exec_type)]:<4d}"
                  f"{node_type:<16s}{exec_type}")
    print(f"slowest {args.top} layers:")
    for microseconds, node_type, exec_type, name in sorted(layers, reverse=True)[: args.top]:
        print(f"  {microseconds / 1e3:7.2f} ms  {node_type:<14s}{exec_type:<24s}{name}")


if __name__ == "__main__":
    main()

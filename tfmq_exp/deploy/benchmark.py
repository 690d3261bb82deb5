"""``tfmq-bench``: CPU speed of every int8 path of the UNet against the FP32 ones, in one process.

Variants: PyTorch FP32 eager / compiled, this project's PT2E int8 (``int8``), the float ONNX export on ONNX
Runtime / OpenVINO, our QDQ ONNX export (the same calibrated parameters) on both runtimes, and as references
ONNX Runtime's and NNCF's own int8 quantization of the same float model (:mod:`tfmq_exp.deploy.onnx_variants`).
Variants whose runtime is not installed are skipped with one line (``pip install tfmq-exp[deploy]``).

For each model and batch size the variants are built (the compiled ones compile on that shape), warmed up
and timed round-robin (A, B, C, A, B, C, ...) so that load from other processes affects them alike; then a
whole DDIM sampling loop is timed per variant the same way. Medians, ratios and each int8 output's SQNR
against the fake-quant model with our parameters are printed; every timing is written to a JSON file. Build
times (export, runtime quantization, compilation) are reported apart from latencies. The headline is the
CIFAR-10 UNet at batch 8 (or the first model measured when CIFAR-10 is not); the output ends with

    speedup_int8_vs_fp32_eager: X            (PT2E int8)
    speedup_int8_vs_fp32_compiled: Y
    best_int8_backend: NAME
    speedup_best_int8_vs_fp32_eager: X
    speedup_best_int8_vs_best_fp32: Y
    ours_vs_runtime_own_int8: Z              (best of our export's latencies / best of the runtimes' own int8)

after ``ours_vs_runtime_own_int8_same_layers`` (printed above these lines: the same ratio against the runtimes' own int8 of the same
layer set: ``int8_ort_own_same`` / ``int8_nncf_same`` leave the layers our parameters keep in float in float) and a
``paired`` line: the first and last ratios as medians of per-round ratios (each round times every variant back to
back), which vary less between runs on a machine whose load comes in bursts.

Attention: by default (``--attention int8``, the project's ``method.attention_matmuls``) our parameters include
the attention matmuls' operands (q, k, softmax, v): the QDQ export and the fake-quant reference quantize them, and
the ``*_same`` references quantize those matmuls too. The PT2E graph keeps attention in float (its SQNR against
the reference includes that difference). ``--attention float`` keeps attention in float everywhere but in the
runtimes' default quantizations.

Example: ``tfmq-bench --models digits --quick --threads 1 --out /tmp/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from tfmq_exp.config.schema import PUBLISHED_FP_PATTERNS
from tfmq_exp.deploy.bench_setup import (
    DEFAULT_VARIANTS,
    VARIANTS,
    CompiledFloat,
    benchmark_calibration,
    build_benchmark_unet,
    build_variant,
    ddim_sample,
    ddim_scheduler,
    interleaved_times,
    noise_batches,
    sample_shape,
)
from tfmq_exp.deploy.from_artifact import sqnr_db
from tfmq_exp.deploy.int8_grid import default_weight_code_max
from tfmq_exp.deploy.onnx_variants import (
    ONNX_VARIANTS,
    OURS,
    RUNTIME_OWN,
    RUNTIME_OWN_SAME_LAYERS,
    OnnxModels,
    unavailable_variants,
)
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.deploy.temporal import fp_feature_table

HEADLINE = ("cifar10", 8)
QUICK = {"repeats": 5, "batch_sizes": [1, 8], "ddim_steps": 5, "ddim_repeats": 2}


def _int_list(text: str) -> List[int]:
    return [int(item) for item in text.split(",") if item]


def _name_list(text: str) -> List[str]:
    return [item for item in text.split(",") if item]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tfmq-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_name_list, default=["digits", "cifar10"], help="digits,cifar10")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--ddim-batch", type=int, default=8)
    parser.add_argument("--ddim-repeats", type=int, default=3, help="timed DDIM loops per variant")
    parser.add_argument("--variants", type=_name_list, default=list(DEFAULT_VARIANTS), help=",".join(VARIANTS))
    parser.add_argument("--fp-patterns", choices=("published", "none"), default="published",
                        help="keep the published full-precision layers in float32, or quantize every layer")
    parser.add_argument("--attention", choices=("int8", "float"), default="int8",
                        help="quantize the attention matmuls' operands with our parameters (QDQ export, reference), "
                             "or keep attention in float")
    parser.add_argument("--quick", action="store_true", help=f"development run: {QUICK}")
    parser.add_argument("--out", type=Path, default=Path("bench_results.json"))
    parser.add_argument("--artifact", type=Path, action="append", default=None,
                        help="deploy and time a calibrated artifact (the artifact/ directory of a quantized run); "
                             "repeat it to put several artifacts side by side")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    return args


def _summary(times: Dict[str, List[float]]) -> Dict[str, dict]:
    return {name: {"median_ms": 1e3 * statistics.median(values), "times_ms": [1e3 * v for v in values]}
            for name, values in times.items()}


def _ratios(summary: Dict[str, dict]) -> Dict[str, float]:
    """Speedups of every int8 variant over every fp32 one (fp32 median / int8 median)."""
    return {f"{quantized}_vs_{reference}": summary[reference]["median_ms"] / summary[quantized]["median_ms"]
            for quantized in summary if quantized.startswith("int8")
            for reference in summary if reference.startswith("fp32")}


def benchmark_model(name: str, args: argparse.Namespace) -> dict:
    """Time every variant of one model at every batch size, then the DDIM loop."""
    unet, weights = build_benchmark_unet(name)
    fp_patterns = PUBLISHED_FP_PATTERNS if args.fp_patterns == "published" else ()
    calibration = benchmark_calibration(unet, fp_patterns, attention_matmuls=args.attention == "int8")
    qparams, attention = calibration.qparams, calibration.attention
    shape = sample_shape(unet)
    scheduler = ddim_scheduler(args.ddim_steps)
    needs_cache = "int8_cache" in args.variants
    cache = fp_feature_table(unet, scheduler.timesteps) if needs_cache else None
    compiled_float = CompiledFloat(unet)
    onnx_models = None
    if set(args.variants) & set(ONNX_VARIANTS):
        onnx_models = OnnxModels(unet, qparams, noise_batches(unet), args.threads, attention=attention)
    fake_quant = FakeQuantReference(unet, qparams, attention=attention)
    result: dict = {"weights": weights, "parameters": sum(p.numel() for p in unet.parameters()),
                    "quantized_layers": len(qparams), "quantized_attentions": len(attention), "build_s": {},
                    "forward": {}}
    if attention and "int8" in args.variants:
        print(f"[{name}] int8 (PT2E) keeps the {len(attention)} attentions' matmuls in float; the QDQ export and the "
              "fake-quant reference quantize them", flush=True)
    generator = torch.Generator().manual_seed(2)
    batch_sizes = list(dict.fromkeys(args.batch_sizes + [args.ddim_batch]))
    try:
        for batch in batch_sizes:
            sample = torch.randn(batch, *shape, generator=generator)
            timesteps = torch.full((batch,), float(scheduler.timesteps[len(scheduler.timesteps) // 2]))
            variants = [build_variant(v, unet, qparams, (sample, timesteps), cache, compiled_float, onnx_models)
                        for v in args.variants]
            result["build_s"][str(batch)] = {v.name: round(v.build_s, 2) for v in variants}
            if batch in args.batch_sizes:
                calls = {v.name: (lambda run=v.run: run(sample, timesteps)) for v in variants}
                summary = _summary(interleaved_times(calls, args.repeats))
                result["forward"][str(batch)] = {"variants": summary, "speedups": _ratios(summary),
                                                 "sqnr_db_vs_fake_quant": _sqnr_vs(fake_quant, variants, sample,
                                                                                   timesteps)}
                _print_rows(name, f"batch {batch}", result["forward"][str(batch)])
            if batch == args.ddim_batch:
                result["ddim"] = _benchmark_ddim(variants, scheduler, batch, shape, args.ddim_repeats)
                _print_rows(name, f"DDIM-{args.ddim_steps} batch {batch}", result["ddim"])
    finally:
        if onnx_models is not None:
            result["build_s"]["onnx_files"] = onnx_models.build_s
            onnx_models.close()
    print(f"[{name}] build times (s, apart from latencies): {result['build_s']}", flush=True)
    return result


@torch.no_grad()
def _sqnr_vs(fake_quant: FakeQuantReference, variants, sample: torch.Tensor, timesteps: torch.Tensor) -> dict:
    """SQNR (dB) of each int8 variant's output against the fake-quant model with our parameters."""
    reference = fake_quant(sample, timesteps)
    return {v.name: sqnr_db(v.run(sample, timesteps), reference) for v in variants
            if v.name.startswith("int8") and v.name != "int8_cache"}


def _benchmark_ddim(variants, scheduler, batch: int, shape, repeats: int) -> dict:
    noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(3))
    outputs = {v.name: ddim_sample(v.run, noise, scheduler) for v in variants}
    calls = {v.name: (lambda run=v.run: ddim_sample(run, noise, scheduler)) for v in variants}
    summary = _summary(interleaved_times(calls, repeats, warmup=0))
    reference = outputs.get("fp32_eager")
    sqnr = {}
    if reference is not None:
        sqnr = {name: sqnr_db(out, reference) for name, out in outputs.items() if name != "fp32_eager"}
    return {"variants": summary, "speedups": _ratios(summary), "sample_sqnr_db_vs_fp32_eager": sqnr}


def _print_rows(model: str, label: str, entry: dict) -> None:
    """One line per variant: median, speedup over FP32 eager and SQNR against fake-quant where measured."""
    eager = entry["variants"].get("fp32_eager", {}).get("median_ms")
    sqnr = entry.get("sqnr_db_vs_fake_quant") or entry.get("sample_sqnr_db_vs_fp32_eager") or {}
    sqnr_label = "SQNR vs fake-quant" if "sqnr_db_vs_fake_quant" in entry else "sample SQNR vs fp32_eager"
    print(f"[{model}] {label}:", flush=True)
    for name, stats in entry["variants"].items():
        speedup = f"  {eager / stats['median_ms']:5.2f}x vs fp32_eager" if eager else ""
        quality = f"  {sqnr_label} {sqnr[name]:.1f} dB" if name in sqnr else ""
        print(f"    {name:<14} {stats['median_ms']:10.2f} ms{speedup}{quality}", flush=True)


def _paired(entry: dict, numerator: Optional[str], denominator: Optional[str]) -> Optional[float]:
    """Median over the timed rounds of ``numerator_i / denominator_i``.

    Every round times each variant once, back to back, so the two times of a round share the machine's load; on a
    shared VM whose load comes in bursts this ratio varies less between runs than the ratio of the two medians.
    ``None`` without per-round times.
    """
    variants = entry["variants"]
    if any(name not in variants or "times_ms" not in variants[name] for name in (numerator, denominator)):
        return None
    rounds = zip(variants[numerator]["times_ms"], variants[denominator]["times_ms"])
    return statistics.median(top / bottom for top, bottom in rounds)


def _headline(results: Dict[str, dict]) -> Optional[dict]:
    """Speedups at the headline (model, batch), falling back to the first measured pair with FP32 eager and int8."""
    model, batch = HEADLINE
    candidates = [(model, str(batch))] + [(m, str(batch)) for m in results]
    candidates += [(m, b) for m, r in results.items() for b in r["forward"]]
    for model_name, batch_key in candidates:
        entry = results.get(model_name, {}).get("forward", {}).get(batch_key)
        if entry is None:
            continue
        medians = {name: stats["median_ms"] for name, stats in entry["variants"].items()}
        int8 = {name: ms for name, ms in medians.items() if name.startswith("int8")}
        fp32 = {name: ms for name, ms in medians.items() if name.startswith("fp32")}
        if "fp32_eager" not in fp32 or not int8:
            continue
        best = min(int8, key=int8.__getitem__)
        ours = [int8[name] for name in OURS if name in int8]
        own = [int8[name] for name in RUNTIME_OWN if name in int8]
        same = [int8[name] for name in RUNTIME_OWN_SAME_LAYERS if name in int8]
        per_runtime = {ours_name: int8[ours_name] / int8[own_name] for ours_name, own_name in zip(OURS, RUNTIME_OWN)
                       if ours_name in int8 and own_name in int8}
        best_ours = min((name for name in OURS if name in int8), key=int8.__getitem__, default=None)
        best_own = min((name for name in RUNTIME_OWN if name in int8), key=int8.__getitem__, default=None)
        return {"model": model_name, "batch": int(batch_key), "best_int8_backend": best,
                "paired": {"best_int8_vs_fp32_eager": _paired(entry, "fp32_eager", best),
                           "ours_vs_runtime_own_int8": _paired(entry, best_ours, best_own)},
                "best_int8_vs_fp32_eager": fp32["fp32_eager"] / int8[best],
                "best_int8_vs_best_fp32": min(fp32.values()) / int8[best],
                "ours_vs_runtime_own_int8": min(ours) / min(own) if ours and own else None,
                "ours_vs_runtime_own_int8_per_runtime": per_runtime,
                "ours_vs_runtime_own_int8_same_layers": min(ours) / min(same) if ours and same else None,
                "int8_vs_fp32_eager": entry["speedups"].get("int8_vs_fp32_eager"),
                "int8_vs_fp32_compiled": entry["speedups"].get("int8_vs_fp32_compiled")}
    return None


def _print_headline(headline: dict) -> None:
    print(f"headline: model={headline['model']} batch={headline['batch']}")
    if headline["ours_vs_runtime_own_int8_per_runtime"]:
        pairs = "  ".join(f"{k} {v:.2f}" for k, v in headline["ours_vs_runtime_own_int8_per_runtime"].items())
        print(f"ours_vs_runtime_own_int8 per runtime (int8_ort / int8_ort_own, int8_openvino / int8_nncf): {pairs}")
    same = headline.get("ours_vs_runtime_own_int8_same_layers")
    if same is not None:
        print(f"ours_vs_runtime_own_int8_same_layers: {same:.2f}")
    if headline["int8_vs_fp32_eager"] is not None and headline["int8_vs_fp32_compiled"] is not None:
        print(f"speedup_int8_vs_fp32_eager: {headline['int8_vs_fp32_eager']:.2f}")
        print(f"speedup_int8_vs_fp32_compiled: {headline['int8_vs_fp32_compiled']:.2f}")
    paired = {name: value for name, value in headline["paired"].items() if value is not None}
    if paired:
        print("paired (median of per-round ratios): " + "  ".join(f"{k} {v:.2f}" for k, v in paired.items()))
    print(f"best_int8_backend: {headline['best_int8_backend']}")
    print(f"speedup_best_int8_vs_fp32_eager: {headline['best_int8_vs_fp32_eager']:.2f}")
    print(f"speedup_best_int8_vs_best_fp32: {headline['best_int8_vs_best_fp32']:.2f}")
    ours = headline["ours_vs_runtime_own_int8"]
    print(f"ours_vs_runtime_own_int8: {'n/a' if ours is None else f'{ours:.2f}'}")


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the results it writes to ``--out``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    environment = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "int8_weight_code_max": default_weight_code_max()}
    print(f"tfmq-bench: {environment}", flush=True)
    skipped = unavailable_variants(args.variants)
    if skipped:
        missing = sorted({module for modules in skipped.values() for module in modules})
        print(f"tfmq-bench: skipping {', '.join(skipped)}: {', '.join(missing)} not installed "
              "(pip install 'tfmq-exp[deploy]')", flush=True)
        args.variants = [name for name in args.variants if name not in skipped]
    if args.artifact is not None:
        return _run_artifact(args, environment, started)
    results = {name: benchmark_model(name, args) for name in args.models}
    headline = _headline(results)
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "environment": environment, "models": results, "headline": headline,
              "total_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out}")
    if headline is not None:
        _print_headline(headline)
    return report


def _run_artifact(args: argparse.Namespace, environment: dict, started: float) -> dict:
    """``--artifact DIR`` (repeatable): deploy each run's calibrated model, time its paths, print them side by side."""
    from tfmq_exp.deploy.artifact_report import print_artifact, print_side_by_side
    from tfmq_exp.deploy.from_artifact import benchmark_artifact
    from tfmq_exp.errors import UserError

    results = []
    for artifact in args.artifact:
        try:
            results.append(benchmark_artifact(artifact, batch_size=args.ddim_batch, repeats=args.repeats))
        except UserError as error:
            raise SystemExit(f"tfmq-bench: error: {error}") from None
        print_artifact(results[-1])
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "environment": environment, "artifacts": results, "total_s": round(time.perf_counter() - started, 1)}
    report["config"]["artifact"] = [str(path) for path in args.artifact]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out}")
    if len(results) > 1:
        print_side_by_side(results)
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``tfmq-bench`` (returns nothing, so the console script exits with status 0)."""
    run(argv)


if __name__ == "__main__":
    main()

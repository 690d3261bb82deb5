"""``tfmq-cost``: the memory and time of block reconstruction on the DDPM CIFAR-10 architecture, per calibration size.

For each calibration size (``calib.recon_samples``) a fresh process builds the google/ddpm-cifar10-32 ``UNet2DModel``
(random weights: cost does not depend on their values), quantizes it as ``method=qdiffusion quant=w8a8`` does and
reconstructs a few of its blocks (the largest-activation ones first: ``down_blocks.0`` works at 32 x 32 with 128
channels) on that many samples under ``calib.memory_budget_mb``. Each process reports its peak resident set
(``ru_maxrss``: a fresh process per size, since the peak never goes down), the bytes of captured data it held and
spilled, the capture's seconds and the seconds per AdaRound iteration of each unit. The parent prints a table,
the peak's growth from each size to the next, and writes everything to a JSON file.

The samples are Gaussian ``x_t`` at the sampler's timesteps (contiguous per timestep, as the real reconstruction
set), not sampled trajectories: what a unit costs depends on their number and shape, not their content.

Example: ``tfmq-cost --samples 256,512,1024 --budget-mb 128 --iters 50 --out /tmp/cost.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from tfmq_exp.devices import peak_memory

DEFAULT_UNITS = ("down_blocks.0.resnets.0", "down_blocks.1.attentions.0", "mid_block.attentions.0")


def _config(samples: int, budget_mb: Optional[float], iters: int, batch_size: int, cache_dir: Path) -> Any:
    """The run config of ``model=ddpm_cifar10 method=qdiffusion quant=w8a8`` at this calibration size."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tfmq_exp.config import register_configs
    from tfmq_exp.config.validate import to_config
    from tfmq_exp.paths import config_dir

    overrides = [
        "model=ddpm_cifar10", "model.sample_size=32", "model.in_channels=3", "method=qdiffusion", "quant=w8a8",
        f"calib.recon_samples={samples}", f"calib.memory_budget_mb={'null' if budget_mb is None else budget_mb}",
        f"method.recon.iters={iters}", f"method.recon.batch_size={batch_size}", f"runtime.cache_dir={cache_dir}",
        "logger=none",
    ]  # fmt: skip
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return to_config(compose("config", overrides=overrides))


def synthetic_samples(count: int, timesteps: Sequence[int], shape: Sequence[int], seed: int = 0) -> Any:
    """``count`` Gaussian ``x_t`` spread evenly over ``timesteps`` (equal timesteps contiguous)."""
    from tfmq_exp.recon.unit_io import ReconSamples

    generator = torch.Generator().manual_seed(seed)
    steps = torch.tensor(list(timesteps), dtype=torch.long)
    t = steps[torch.arange(count) * len(steps) // count]
    return ReconSamples(torch.randn(count, *shape, generator=generator), t)


def measure(samples: int, budget_mb: Optional[float], units: Sequence[str], iters: int, batch_size: int,
            threads: int) -> dict[str, Any]:
    """Reconstruct ``units`` of the CIFAR-10 UNet on ``samples`` samples in this process; its costs."""
    from tfmq_exp.eval.sampling import sampling_timesteps
    from tfmq_exp.models.adapters import get_adapter
    from tfmq_exp.models.architectures import ddpm_cifar10_unet
    from tfmq_exp.quant import quantize_
    from tfmq_exp.recon.runner import capture_budget, reconstruct_block, session
    from tfmq_exp.recon.units import TIAR_KIND, plan_units

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="tfmq-cost-") as cache_dir:
        config = _config(samples, budget_mb, iters, batch_size, Path(cache_dir))
        unet_fp = ddpm_cifar10_unet().eval()
        unet_q = copy.deepcopy(unet_fp)
        quantize_(unet_q, config.quant, config.model, config.method,
                  temporal_names=set(get_adapter(unet_fp).tib().layer_names()))
        plan = {unit.name: unit for unit in plan_units(unet_q, unet_fp, config.method) if unit.kind != TIAR_KIND}
        missing = [name for name in units if name not in plan]
        if missing:
            raise SystemExit(f"tfmq-cost: no reconstruction unit named {', '.join(missing)}; units: {', '.join(plan)}")
        data = synthetic_samples(samples, sampling_timesteps(config.sampler, config.model), (3, 32, 32))
        budget = capture_budget(config)
        report: dict[str, Any] = {"samples": samples, "units": {}}
        with session(unet_q, unet_fp, "cpu"):
            for name in units:
                entry = reconstruct_block(plan[name], unet_q, unet_fp, data, config, "cpu", False, None, budget)
                unit_bytes = budget.held_bytes + budget.spilled_bytes
                budget.release()
                report["units"][name] = {
                    "captured_mib": unit_bytes / 2**20, "bytes_per_sample": unit_bytes // samples,
                    "capture_seconds": entry["capture_seconds"], "seconds_per_iter": entry["seconds_per_iter"],
                    "converged": entry["converged"],
                }  # fmt: skip
        report.update(budget=budget.report().to_dict(), **peak_memory())
    return report


def interleaved_iteration_times(
    sizes: Sequence[int], unit_name: str, rounds: int, batch_size: int, threads: int
) -> dict[int, list[float]]:
    """Seconds of one AdaRound step (fetch a random batch, forward, backward, Adam) of ``unit_name`` on data sets
    of each size, timed round-robin in this one process (so that load from other processes hits every size alike).

    The unit's inputs and targets are captured once for the largest size, spilled to files (a zero budget); a
    size ``n`` draws its batches from the first ``n`` rows. What differs between sizes is only where the rows of
    a batch come from, which is what must not cost more as the calibration set grows.
    """
    from tfmq_exp.eval.sampling import sampling_timesteps
    from tfmq_exp.models.adapters import get_adapter
    from tfmq_exp.models.architectures import ddpm_cifar10_unet
    from tfmq_exp.quant import QuantModule, quantize_
    from tfmq_exp.recon.capture_buffer import CaptureBudget
    from tfmq_exp.recon.objectives import BlockOutputObjective, UnitDataset
    from tfmq_exp.recon.runner import capture_batch_size, session
    from tfmq_exp.recon.unit_io import capture_inputs, capture_output

    torch.set_num_threads(threads)
    largest = max(sizes)
    with tempfile.TemporaryDirectory(prefix="tfmq-cost-") as cache_dir:
        config = _config(largest, 0, 1, batch_size, Path(cache_dir))
        unet_fp = ddpm_cifar10_unet().eval()
        unet_q = copy.deepcopy(unet_fp)
        quantize_(unet_q, config.quant, config.model, config.method,
                  temporal_names=set(get_adapter(unet_fp).tib().layer_names()))
        data = synthetic_samples(largest, sampling_timesteps(config.sampler, config.model), (3, 32, 32))
        budget = CaptureBudget(0, Path(cache_dir) / "spill")
        times: dict[int, list[float]] = {size: [] for size in sizes}
        with session(unet_q, unet_fp, "cpu"):
            module_q, module_fp = unet_q.get_submodule(unit_name), unet_fp.get_submodule(unit_name)
            inputs = capture_inputs(unet_q, module_q, data, capture_batch_size(config), budget)
            target = capture_output(unet_fp, module_fp, data, capture_batch_size(config), budget)
            dataset = UnitDataset(inputs.tensors, target, timesteps=data.timesteps)
            objective = BlockOutputObjective(inputs.template, config.method.recon.p)
            layers = [module for module in module_q.modules() if isinstance(module, QuantModule)]
            optimizer = torch.optim.Adam([alpha for layer in layers for alpha in layer.enable_adaround(soft=True)])
            generator = torch.Generator().manual_seed(0)
            for _ in range(rounds):
                for size in sizes:
                    started = time.perf_counter()
                    batch = dataset[torch.randperm(size, generator=generator)[:batch_size].tolist()]
                    optimizer.zero_grad()
                    objective(module_q, batch).backward()
                    optimizer.step()
                    times[size].append(time.perf_counter() - started)
        budget.release()
    return times


def _child(samples: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "tfmq_exp.recon.cost", "--child", str(samples), "--units", ",".join(args.units),
               "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--budget-mb", "null" if args.budget_mb is None else str(args.budget_mb)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tfmq-cost: the measurement at {samples} samples failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def growth(results: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Relative change of ``key`` from each size to the next."""
    return [later[key] / earlier[key] - 1.0 for earlier, later in zip(results, results[1:])]


def _print(results: Sequence[dict[str, Any]], units: Sequence[str]) -> None:
    print(f"{'samples':>8} {'peak_rss_mib':>13} {'held_mib':>9} {'spilled_mib':>12}  "
          + "  ".join(f"{name} (MiB, capture s, s/iter)" for name in units))
    for result in results:
        budget = result["budget"]
        cells = [f"{u['captured_mib']:.0f}, {u['capture_seconds']:.1f}, {u['seconds_per_iter']:.3f}"
                 for u in result["units"].values()]
        print(f"{result['samples']:>8} {result['peak_rss_mib']:>13.0f} {budget['peak_held_bytes'] / 2**20:>9.0f} "
              f"{budget['peak_spilled_bytes'] / 2**20:>12.0f}  " + "  ".join(cells))
    for index, change in enumerate(growth(results, "peak_rss_mib")):
        print(f"peak_rss_growth_{results[index]['samples']}_to_{results[index + 1]['samples']}: {100 * change:+.1f}%")
    for name in units:
        per_iter = [result["units"][name]["seconds_per_iter"] for result in results]
        print(f"seconds_per_iter_spread_{name} (one process per size, sequential): {max(per_iter) / min(per_iter):.2f}x")


def print_estimates(measured: Optional[list[dict[str, Any]]], batch_size: int) -> dict[str, Any]:
    """Estimates of the published protocols (:mod:`~tfmq_exp.recon.cost_estimate`), one architecture at a time;
    with ``measured`` (this run's results), the CPU rate they imply checks the model."""
    import gc

    from tfmq_exp.recon.cost_estimate import GPU_ASSUMPTIONS, PROTOCOLS, architecture_calls, cpu_check, estimate
    from tfmq_exp.recon.cost_estimate import unit_profiles

    rate, floor = GPU_ASSUMPTIONS["sustained_flops"], GPU_ASSUMPTIONS["min_seconds_per_iter"]
    print(f"estimates (assumed GPU: {rate / 1e12:.0f} TFLOP/s sustained, >= {1000 * floor:.0f} ms per iteration; "
          "not measured)")
    print(f"{'protocol':<72} {'params_M':>8} {'units':>5} {'max_unit_MiB/sample':>19} {'no_budget_GiB':>13} "
          f"{'weights_x2_GiB':>14} {'gpu_hours':>9}")
    estimates: dict[str, Any] = {}
    for key, (build, call) in architecture_calls().items():
        unet = build().eval()
        profiles = unit_profiles(unet, call)
        params = sum(p.numel() for p in unet.parameters())
        protocol = PROTOCOLS[key]
        figures = estimate(profiles, protocol, rate, floor)
        largest = max(unit.bytes_per_sample for unit in profiles)
        print(f"{protocol.name:<72} {params / 1e6:>8.1f} {figures['units']:>5} {largest / 2**20:>19.2f} "
              f"{figures['largest_unit_captured_gib']:>13.1f} {2 * 4 * params / 2**30:>14.1f} {figures['hours']:>9.1f}")
        estimates[key] = {**figures, "params": params, "max_unit_bytes_per_sample": largest}
        if key == "cifar10" and measured:
            by_name = {unit.name: unit for unit in profiles}
            for name, unit in measured[-1]["units"].items():
                cpu_rate = cpu_check(by_name[name], batch_size, unit["seconds_per_iter"])
                cpu = estimate(profiles, protocol, cpu_rate, 0.0)
                print(f"cpu_check {name}: measured {unit['seconds_per_iter']:.3f} s/iter -> {cpu_rate / 1e9:.0f} GFLOP/s"
                      f" sustained here; the CIFAR-10 protocol at that rate: {cpu['hours']:.0f} h")
                estimates[key].setdefault("cpu_check", {})[name] = {"gflops": cpu_rate / 1e9, "hours": cpu["hours"]}
        del unet
        gc.collect()
    return estimates


def _optional_float(text: str) -> Optional[float]:
    return None if text in ("null", "none") else float(text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tfmq-cost", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=lambda text: [int(x) for x in text.split(",")], default=[256, 512, 1024],
                        help="calibration sizes (calib.recon_samples), one process each")
    parser.add_argument("--budget-mb", type=_optional_float, default=128.0, help="calib.memory_budget_mb ('null': none)")
    parser.add_argument("--units", type=lambda text: text.split(","), default=list(DEFAULT_UNITS))
    parser.add_argument("--iters", type=int, default=50, help="AdaRound iterations per unit (timed)")
    parser.add_argument("--batch-size", type=int, default=32, help="method.recon.batch_size (published: 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file of every measurement")
    parser.add_argument("--interleaved-rounds", type=int, default=0,
                        help="also time AdaRound steps on every size round-robin in one process (this many rounds)")
    parser.add_argument("--estimate", action="store_true",
                        help="also estimate the published protocols (CIFAR-10, LDM-4, SD 1.4) from the architectures")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("iters", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.samples or min(args.samples) < 1:
        parser.error(f"--samples must be positive sizes, got {args.samples}")
    if args.interleaved_rounds < 0 or (args.budget_mb is not None and args.budget_mb < 0):
        parser.error("--interleaved-rounds and --budget-mb must be >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child is not None:
        result = measure(args.child, args.budget_mb, args.units, args.iters, args.batch_size, args.threads)
        print(json.dumps(result))
        return [result]
    print(f"tfmq-cost: DDPM CIFAR-10 UNet (random weights), budget {args.budget_mb} MiB, {args.iters} iterations of "
          f"batch {args.batch_size}, {args.threads} threads, {platform.processor() or platform.machine()}")
    results = [_child(samples, args) for samples in args.samples]
    _print(results, args.units)
    interleaved = None
    if args.interleaved_rounds:
        times = interleaved_iteration_times(args.samples, args.units[0], args.interleaved_rounds, args.batch_size,
                                            args.threads)
        medians = {size: statistics.median(values) for size, values in times.items()}
        print(f"interleaved AdaRound step of {args.units[0]} (spilled data, median of {args.interleaved_rounds}): "
              + ", ".join(f"{size}: {seconds:.3f} s" for size, seconds in medians.items()))
        print(f"seconds_per_iter_spread_interleaved: {max(medians.values()) / min(medians.values()):.2f}x")
        interleaved = {"unit": args.units[0], "times": times, "medians": medians}
    estimates = print_estimates(results, args.batch_size) if args.estimate else None
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
        document = {"settings": settings, "results": results, "interleaved": interleaved, "estimates": estimates}
        args.out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()

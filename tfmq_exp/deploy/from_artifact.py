"""Deploy a real calibrated artifact (``artifact/`` of a finished quantized run) to int8 and time it.

The artifact's own config rebuilds the full-precision model (:func:`~tfmq_exp.models.loading.load_model`) and the
calibrated quantized UNet (:func:`~tfmq_exp.ptq.load_quantized`); :func:`~tfmq_exp.deploy.from_quantized.
deployment_inputs` hands its AdaRound weight codes and calibrated activation parameters (static, per-timestep or
beside a temporal-feature cache) to the deployed paths of :mod:`tfmq_exp.deploy.artifact_variants`, with nothing
re-calibrated. The benchmark compares them side by side in one process with the full-precision UNet and the
fake-quant UNet the run evaluated, and reports each int8 output's SQNR against the fake-quant one at every
sampling timestep (the minimum).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from tfmq_exp.config.schema import Config
from tfmq_exp.deploy.artifact_variants import build_variants
from tfmq_exp.deploy.bench_setup import interleaved_times
from tfmq_exp.errors import UserError
from tfmq_exp.eval.sampling import initial_noise, sampling_timesteps
from tfmq_exp.models.loading import load_model
from tfmq_exp.quant.artifact import META_FILE
from tfmq_exp.timing import StageTimer


def sqnr_db(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``10 log10(||reference||^2 / ||output - reference||^2)``."""
    error = (output - reference).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(reference.pow(2).sum() / error))


def load_calibrated(artifact: str | Path) -> tuple[torch.nn.Module, torch.nn.Module, Config]:
    """``(unet_q, unet_fp, config)`` of an artifact directory, the model rebuilt from the artifact's config.

    Raises:
        UserError: the directory is not an artifact.
    """
    from tfmq_exp.ptq import load_quantized

    meta_path = Path(artifact) / META_FILE
    if not meta_path.is_file():
        raise UserError(f"--artifact {artifact} is not a quantized artifact ({META_FILE} is missing); pass the "
                        "'artifact' directory of a finished quantized run")
    stored = json.loads(meta_path.read_text())["config"]
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), stored))
    assert isinstance(config, Config)
    loaded = load_model(config.model)
    config = dataclasses.replace(config, model=loaded.model, artifact=str(artifact))
    quantized = load_quantized(loaded.unet, config, StageTimer())
    return quantized.unet.eval(), loaded.unet, config


def benchmark_artifact(
    artifact: str | Path, batch_size: int = 8, repeats: int = 10, compile: bool = True, onnx: bool = True
) -> dict[str, Any]:
    """Deploy an artifact and time every path side by side; SQNR of each int8 path vs fake-quant at every timestep.

    Args:
        artifact: the ``artifact`` directory of a quantized run (static, cache, selected or per-timestep parameters:
            :mod:`tfmq_exp.deploy.artifact_variants`).
        batch_size: samples per forward (the graphs are specialised to it).
        repeats: timed rounds (interleaved, after two warm-up rounds).
        compile: real int8 kernels through inductor; ``False`` times the converted graph's reference kernels.
        onnx: also time our QDQ export on ONNX Runtime / OpenVINO (skipped, with one line, when not installed).

    Returns:
        ``median_ms`` (one forward at the middle sampling timestep), ``loop_ms`` (one forward at every sampling
        timestep in turn: the denoiser calls of a whole sampling loop), ``build_s``, ``rss_mb``, ``file_bytes``,
        ``sqnr_db_vs_fake_quant_per_variant`` (the minimum over the sampler's timesteps) and ``groups``.
    """
    unet_q, unet_fp, config = load_calibrated(artifact)
    sample, _ = initial_noise(config.model, config.eval.seed_set, range(batch_size))
    timesteps = [int(t) for t in sampling_timesteps(config.sampler, config.model)]
    middle = torch.full((batch_size,), float(timesteps[len(timesteps) // 2]))
    with tempfile.TemporaryDirectory(prefix="tfmq-onnx-") as directory:
        variants = build_variants(unet_q, unet_fp, (sample, middle), timesteps, Path(directory), compile=compile,
                                  onnx=onnx)
        for note in variants.notes:
            print(f"tfmq-bench: {note}")
        steps = [torch.full((batch_size,), float(t)) for t in timesteps]
        with torch.no_grad():
            references = [unet_q(sample, t).sample for t in steps]
            sqnr = {name: min(sqnr_db(run(sample, t), ref) for t, ref in zip(steps, references))
                    for name, run in variants.runners.items() if name.startswith("int8")}
        calls = {name: (lambda run=run: run(sample, middle)) for name, run in variants.runners.items()}
        calls["fake_quant"] = lambda: unet_q(sample, middle)
        medians = {name: 1e3 * statistics.median(values) for name, values in interleaved_times(calls, repeats).items()}
        loops = {name: (lambda run=run: [run(sample, t) for t in steps]) for name, run in variants.runners.items()}
        loop_ms = {name: 1e3 * statistics.median(values)
                   for name, values in interleaved_times(loops, max(1, repeats // 5), warmup=1).items()}
    best_int8 = min((medians[name] for name in variants.runners if name.startswith("int8")), default=None)
    return {
        "artifact": str(artifact),
        "model": config.model.name,
        "method": config.method.name,
        "quant": config.quant.name,
        "kind": variants.kind,
        "batch_size": batch_size,
        "compiled": compile,
        "sampler_timesteps": len(timesteps),
        "groups": None if variants.groups is None else len(variants.groups),
        "lowered_layers": variants.lowered_layers,
        "sqnr_db_vs_fake_quant": min(sqnr.values()) if sqnr else None,
        "sqnr_db_vs_fake_quant_per_variant": sqnr,
        "median_ms": medians,
        "loop_ms": loop_ms,
        "build_s": variants.build_s,
        "rss_mb": variants.rss_mb,
        "file_bytes": variants.file_bytes,
        "notes": variants.notes,
        "speedup_int8_vs_fp32": None if best_int8 is None else medians["fp32_eager"] / best_int8,
    }

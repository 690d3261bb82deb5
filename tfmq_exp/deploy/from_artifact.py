"""Lower a real calibrated artifact (``artifact/`` of a finished quantized run) to int8 and time it.

The artifact's own config rebuilds the full-precision model (:func:`~tfmq_exp.models.loading.load_model`) and the
calibrated quantized UNet (:func:`~tfmq_exp.ptq.load_quantized`); :func:`~tfmq_exp.deploy.from_quantized.
deployment_inputs` hands its AdaRound weight codes and calibrated activation parameters to the lowering, with
nothing re-calibrated. The benchmark compares, side by side in one process, the full-precision UNet, the
fake-quant UNet the run evaluated, the lowered int8 graph and, when ONNX Runtime and OpenVINO are installed, the
same parameters exported to QDQ ONNX (:mod:`tfmq_exp.deploy.onnx_export`) on both runtimes beside the float
ONNX export; it reports each int8 output's SQNR against the fake-quant one.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from omegaconf import OmegaConf

from tfmq_exp.config.schema import Config
from tfmq_exp.deploy.bench_setup import interleaved_times
from tfmq_exp.deploy.from_quantized import deployment_inputs
from tfmq_exp.deploy.lower import lower_to_int8
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
        UserError: the directory is not an artifact, or its model uses cache-based maintenance (lower those
            with :class:`~tfmq_exp.deploy.temporal.TemporalFeatureCache` from the benchmark's own models).
    """
    from tfmq_exp.ptq import load_quantized

    meta_path = Path(artifact) / META_FILE
    if not meta_path.is_file():
        raise UserError(f"--artifact {artifact} is not a quantized artifact ({META_FILE} is missing); pass the "
                        "'artifact' directory of a finished quantized run")
    stored = json.loads(meta_path.read_text())["config"]
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), stored))
    assert isinstance(config, Config)
    if config.method.maintenance != "tib":
        raise UserError(f"--artifact: method.maintenance={config.method.maintenance} is not lowered from an artifact "
                        "yet; lower a TIB-maintained run (e.g. method=tfmq or qdiffusion)")
    loaded = load_model(config.model)
    config = dataclasses.replace(config, model=loaded.model, artifact=str(artifact))
    quantized = load_quantized(loaded.unet, config, StageTimer())
    return quantized.unet.eval(), loaded.unet, config


def _onnx_runners(
    unet_fp: torch.nn.Module, float_unet: torch.nn.Module, qparams: dict, example: tuple, directory: Path
) -> Dict[str, Callable]:
    """FP32 ONNX Runtime and our QDQ export on ONNX Runtime / OpenVINO; none (one line said) without the runtimes."""
    from tfmq_exp.deploy.runtimes import missing_runtimes

    missing = missing_runtimes(("onnx", "onnxruntime", "openvino"))
    if missing:
        print(f"tfmq-bench: skipping the ONNX paths: {', '.join(missing)} not installed "
              "(pip install 'tfmq-exp[deploy]')")
        return {}
    from tfmq_exp.deploy.onnx_export import export_onnx
    from tfmq_exp.deploy.runtimes import openvino_runner, ort_runner

    threads = torch.get_num_threads()  # the benchmark's --threads
    fp32_path = export_onnx(unet_fp, directory / "fp32.onnx", example)
    qdq_path = export_onnx(float_unet, directory / "int8_qdq.onnx", example, qparams)
    return {"fp32_ort": ort_runner(fp32_path, threads), "int8_ort": ort_runner(qdq_path, threads),
            "int8_openvino": openvino_runner(qdq_path, threads, example)}


def benchmark_artifact(
    artifact: str | Path, batch_size: int = 8, repeats: int = 10, compile: bool = True, onnx: bool = True
) -> dict[str, Any]:
    """Lower an artifact and time FP32, fake-quant and int8 forwards side by side; SQNR of int8 vs fake-quant.

    Args:
        artifact: the ``artifact`` directory of a quantized run.
        batch_size: samples per forward (the graph is specialised to it).
        repeats: timed rounds (interleaved, after two warm-up rounds).
        compile: real int8 kernels through inductor; ``False`` times the converted graph's reference kernels.
        onnx: also export the float model and our parameters to ONNX and time them on ONNX Runtime / OpenVINO
            (skipped, with one line, when those are not installed).
    """
    unet_q, unet_fp, config = load_calibrated(artifact)
    float_unet, qparams = deployment_inputs(unet_q, unet_fp)
    sample, _ = initial_noise(config.model, config.eval.seed_set, range(batch_size))
    timesteps = sampling_timesteps(config.sampler, config.model)
    timestep = torch.full((batch_size,), timesteps[len(timesteps) // 2])
    lowered = lower_to_int8(float_unet, qparams, (sample, timestep.float()), compile=compile)
    runners: Dict[str, Callable] = {"fp32_eager": lambda x, t: unet_fp(x, t).sample, "int8": lowered}
    with tempfile.TemporaryDirectory(prefix="tfmq-onnx-") as directory:
        if onnx:
            runners.update(_onnx_runners(unet_fp, float_unet, qparams, (sample, timestep.float()), Path(directory)))
        with torch.no_grad():
            reference = unet_q(sample, timestep).sample
            sqnr = {name: sqnr_db(run(sample, timestep), reference) for name, run in runners.items()
                    if name.startswith("int8")}
        calls = {name: (lambda run=run: run(sample, timestep)) for name, run in runners.items()}
        calls["fake_quant"] = lambda: unet_q(sample, timestep)
        medians = {name: 1e3 * statistics.median(values) for name, values in interleaved_times(calls, repeats).items()}
    return {
        "artifact": str(artifact),
        "model": config.model.name,
        "method": config.method.name,
        "quant": config.quant.name,
        "batch_size": batch_size,
        "compiled": compile,
        "lowered_layers": len(qparams),
        "sqnr_db_vs_fake_quant": sqnr["int8"],
        "sqnr_db_vs_fake_quant_per_variant": sqnr,
        "median_ms": medians,
        "speedup_int8_vs_fp32": medians["fp32_eager"] / medians["int8"],
    }

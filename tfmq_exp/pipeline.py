"""The one place that wires a run: load -> calibrate -> quantize -> maintain -> evaluate -> log.

Every stage lives in its own package; this module only orders them, times them, and records what they
produced in ``summary.json`` (and W&B) inside the Hydra run directory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tfmq_exp.config.schema import Config
from tfmq_exp.devices import peak_memory, resolve_device, sampling_precision
from torch import nn

from tfmq_exp.eval.protocol import Evaluation, evaluate, real_images
from tfmq_exp.eval.reference import fp_reference
from tfmq_exp.eval.sampling import noise_fingerprint, sampling_timesteps
from tfmq_exp.eval.families import conditioning_payload, generation_parts
from tfmq_exp.models.loading import load_model
from tfmq_exp.ptq import check_artifact_path, eps_rel_mse, quantize_for_method
from tfmq_exp.temporal.feature_cache import quantization_bound
from tfmq_exp.temporal.diagnostics import diagnose_temporal_features, trajectory_cosine
from tfmq_exp.temporal.observe import observe_temporal_features
from tfmq_exp.tracking.temporal_figures import per_timestep_curves, temporal_heatmap
from tfmq_exp.store import ArtifactStore
from tfmq_exp.timing import StageTimer
from tfmq_exp.tracking.figures import save_sample_grid
from tfmq_exp.tracking.summary import versions, write_summary
from tfmq_exp.tracking.quantization_log import log_quantization
from tfmq_exp.tracking.wandb_run import TrackingRun, start_run

log = logging.getLogger(__name__)


def current_run_dir() -> Path:
    """The Hydra run directory of this job (the working directory outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _sweep_group() -> str | None:
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        return Path(HydraConfig.get().sweep.dir).name
    return None


def run_pipeline(cfg: DictConfig, config: Config, run_dir: Path | None = None) -> dict[str, Any]:
    """Run one job end to end and return its summary (also written to ``run_dir/summary.json``).

    Args:
        cfg: the composed Hydra config (saved resolved in the summary).
        config: the same config as validated schema objects.
        run_dir: where outputs go; defaults to the Hydra run directory.
    """
    run_dir = run_dir or current_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    # the one place ``runtime.device`` is resolved: every stage gets ``cpu`` or ``cuda``
    runtime = dataclasses.replace(config.runtime, device=resolve_device(config.runtime.device))
    sampling_precision(config.eval.fp_dtype, runtime.device)  # a bad eval.fp_dtype fails before any work
    config = dataclasses.replace(config, runtime=runtime)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    timer = StageTimer()
    summary: dict[str, Any] = {
        "status": "running",
        "model": config.model.name,
        "method": config.method.name,
        "quant": config.quant.name if config.method.quantize else "fp32",
        "seed": config.seed,
        "run_dir": str(run_dir),
        "config": resolved,
        "versions": versions(),
    }
    tracking = start_run(config, resolved, run_dir, group=_sweep_group())
    try:
        _run_stages(config, run_dir, timer, summary, tracking)
        summary["status"] = "ok"
    except BaseException as error:
        summary["status"] = "failed"
        summary["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        summary["timing"] = timer.as_dict()
        summary["memory"] = peak_memory()
        write_summary(run_dir, summary)
        tracking.summary({"timing": summary["timing"], "status": summary["status"]})
        tracking.finish(exit_code=0 if summary["status"] == "ok" else 1)
    return summary


def _run_stages(config: Config, run_dir: Path, timer: StageTimer, summary: dict[str, Any], tracking: TrackingRun) -> None:
    store = ArtifactStore(config.runtime.cache_dir)
    check_artifact_path(config)
    with timer("load"):
        loaded = load_model(config.model)
        config = dataclasses.replace(config, model=loaded.model)  # shapes and schedule of the loaded parts
        unet_fp = loaded.unet
        real = real_images(config)
        eval_parts = generation_parts(loaded, config, "eval")
    summary["model_resolved"] = dataclasses.asdict(loaded.model)
    with timer("fp_reference"):
        conditions = conditioning_payload(loaded, config, "eval") if config.model.family != "pixel" else None
        reference, hit = fp_reference(unet_fp, config, real, store, eval_parts, conditions)
    summary["fp_reference_cached"] = hit
    summary["eval_noise"] = {
        "seed_set": config.eval.seed_set,
        "num_samples": config.eval.num_samples,
        "sha256": noise_fingerprint(config.model, config.eval.seed_set, config.eval.num_samples),
    }
    result = reference
    if config.method.quantize:
        calib_parts = generation_parts(loaded, config, "calib")
        calib_conditions = conditioning_payload(loaded, config, "calib") if config.model.family != "pixel" else None
        quantized = quantize_for_method(unet_fp, config, store, timer, run_dir, calib_parts, calib_conditions)
        summary.update(quantized.result.to_dict())
        log_quantization(quantized.result, tracking)
        with timer("sampling_and_metrics"):
            result = evaluate(quantized.unet, config, real, eval_parts)
        with timer("diagnostics"):
            cache = quantized.result.maintenance.cache
            cache_bits = cache.bits if cache is not None else None
            summary.update(diagnose(quantized.unet, unet_fp, config, reference, result, cache_bits))
        log_temporal(summary, run_dir, tracking)
    summary["metrics"] = _metrics_with_reference(result, reference)
    # The noise-prediction error along the FP trajectory; zero by definition for the FP reference itself.
    summary["metrics"]["eps_rel_mse"] = summary.get("temporal", {}).get("eps_rel_mse", 0.0)
    grid = save_sample_grid(result.images, run_dir / "samples.png", count=config.eval.grid_size)
    tracking.log({f"metrics/{k}": v for k, v in summary["metrics"].items() if isinstance(v, (int, float))})
    tracking.summary(summary["metrics"])
    tracking.image("samples", grid, caption=f"{config.method.name} {summary['quant']}")


def diagnose(
    unet_q: nn.Module, unet_fp: nn.Module, config: Config, reference: Evaluation, result: Evaluation,
    cache_bits: int | None = None,
) -> dict[str, Any]:
    """Temporal-feature errors and mismatch, trajectory deviation and eps error (DESIGN 1.7, issue 9)."""
    timesteps = sampling_timesteps(config.sampler, config.model)
    # Conditioned temporal features (class labels, SD-XL's pooled text and size) are observed under the
    # conditioning of the reference trajectory's last row (a conditional one under guidance).
    conditioning = {k: v[-1:] for k, v in reference.trajectory_conditioning.items()}
    fp_features = observe_temporal_features(unet_fp, timesteps, conditioning=conditioning)
    q_features = observe_temporal_features(unet_q, timesteps, feature_spec_unet=unet_fp, conditioning=conditioning)
    temporal = diagnose_temporal_features(fp_features, q_features).to_summary()
    # Reference lines: what caching the exact FP features at 8 bits (or at the run's cache bit-width) costs.
    temporal["rel_mse_bound_8bit"] = quantization_bound(fp_features, 8)
    if cache_bits is not None:
        temporal["rel_mse_bound_cache"] = quantization_bound(fp_features, cache_bits)
    assert reference.trajectory is not None and result.trajectory is not None
    cosines = trajectory_cosine(list(reference.trajectory), list(result.trajectory))
    temporal["trajectory_cos"] = cosines
    temporal["trajectory_cos_final"] = cosines[-1]
    temporal["trajectory_cos_min"] = min(cosines)
    temporal.update(eps_rel_mse(unet_fp, unet_q, reference.trajectory, timesteps, reference.trajectory_conditioning,
                                device=config.runtime.device))
    return {"temporal": temporal}


def log_temporal(summary: dict[str, Any], run_dir: Path, tracking: TrackingRun) -> None:
    """Write and log the temporal diagnostics: scalars, a per-(layer, t) table, heatmaps and curves."""
    temporal = summary.get("temporal")
    if not temporal:
        return
    scalars = ("rel_mse_mean", "mse_mean", "cos_mean", "cos_min", "mismatch_rate", "trajectory_cos_final", "eps_rel_mse")
    tracking.log({f"temporal/{key}": temporal[key] for key in scalars if key in temporal})
    figures = run_dir / "figures"
    label = f"{summary['method']} {summary['quant']}"
    for key in ("rel_mse", "cosine"):
        path = temporal_heatmap(temporal, figures / f"temporal_{key}.png", key, title=f"{label}: temporal-feature {key}")
        tracking.image(f"temporal/{key}_heatmap", path)
    per_t = {
        "rel. MSE (mean over features)": [sum(column) / len(column) for column in zip(*temporal["rel_mse"])],
    }
    tracking.image(
        "temporal/rel_mse_per_timestep",
        per_timestep_curves(per_t, temporal["timesteps"], figures / "temporal_rel_mse_per_t.png", "relative MSE",
                            f"{label}: temporal-feature error"),
    )
    rows = [
        [feature, t, temporal["mse"][i][j], temporal["rel_mse"][i][j], temporal["cosine"][i][j], temporal["nearest_timestep"][i][j]]
        for i, feature in enumerate(temporal["feature_names"])
        for j, t in enumerate(temporal["timesteps"])
    ]
    tracking.table("temporal/features", ["feature", "timestep", "mse", "rel_mse", "cosine", "nearest_fp_timestep"], rows)
    tracking.log({"trajectory/cos": temporal["trajectory_cos"][-1]})


def _metrics_with_reference(result: Evaluation, reference: Evaluation) -> dict[str, Any]:
    """The run's metrics, the FP reference's under the same protocol (``<name>_fp``), and their deltas."""
    metrics: dict[str, Any] = dict(result.metrics)
    for name, value in reference.metrics.items():
        if name in ("num_samples", "seed_set") or not isinstance(value, (int, float)):
            continue
        metrics[f"{name}_fp"] = value
        if name in result.metrics and name in ("fid", "kid", "isc", "precision", "recall", "clip_score"):
            metrics[f"{name}_delta"] = result.metrics[name] - value
    return metrics

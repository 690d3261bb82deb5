"""Post-training quantization of a denoiser as a method config prescribes (DESIGN 1.1-1.6).

Stages, each timed: capture calibration data -> replace layers -> [cache-based maintenance] -> TIAR ->
[disturbance-aware selection, which installs its cache] -> block reconstruction -> activation calibration (FSC
where asked) -> [Q-Diffusion's activation pass] -> artifact. The maintenance that runs at inference is installed
before block reconstruction and activation calibration, so both are fitted to the features the model will see
(DESIGN 1.5, 1.6). What runs is read from ``config.method``; nothing here branches on a method's *name*.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfmq_exp.config.schema import Config
from tfmq_exp.devices import placed
from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.conditioning import nest
from tfmq_exp.eval.sampling import GenerationParts, sampling_timesteps
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant.artifact import META_FILE
from tfmq_exp.quant import (
    ArtifactError,
    TimestepContext,
    attach_timestep_context,
    iter_quant_modules,
    load_artifact,
    quantize_,
    save_artifact,
)
from tfmq_exp.recon.runner import capture_budget, reconstruction_settings
from tfmq_exp.stage_results import (
    ActReconstructionReport,
    CalibrationReport,
    MaintenanceReport,
    ModelSize,
    QuantizationResult,
    QuantizedLayers,
    ReconstructionReport,
)
from tfmq_exp.store import ENTRY_VERSIONS, ArtifactStore
from tfmq_exp.timing import StageTimer

log = logging.getLogger(__name__)
ARTIFACT_DIR = "artifact"
SECTIONS_KEY = "sections"  # the artifact's ``extra`` entry holding :meth:`QuantizationResult.to_dict`


@dataclass
class QuantizedModel:
    """A quantized denoiser ready for sampling, and what its construction reported."""

    unet: nn.Module  # the quantized denoiser
    context: TimestepContext  # the timestep context attached to it
    result: QuantizationResult = field(default_factory=QuantizationResult)  # each stage's report


def model_size(unet_q: nn.Module, unet_fp: nn.Module, cache_bytes: int = 0) -> ModelSize:
    """Storage in bits: quantized weights at their bit-width, other parameters at 32 bits, plus any cache.

    Parameters that cache-based maintenance removed are no longer in ``unet_q`` and cost nothing. The weight of a
    split layer (one parameter) counts half by half, each at its own weight quantizer's bit-width.
    """
    weight_bits = {  # id(weight) -> bits of the whole weight, summed over its halves
        id(module.weight): sum(quantizer.bits * part.numel() for _, quantizer, part in module.weight_parts())
        for _, module in iter_quant_modules(unet_q)
    }
    total = sum(weight_bits.get(id(p), 32 * p.numel()) for p in unet_q.parameters()) + 8 * cache_bytes
    fp_bits = 32 * sum(p.numel() for p in unet_fp.parameters())
    quantized = sum(p.numel() for p in unet_q.parameters() if id(p) in weight_bits)
    return ModelSize(bits=total, fp_bits=fp_bits, ratio=total / fp_bits, quantized_parameters=quantized,
                     cache_bytes=cache_bytes)


def _reconstruction_dir(
    config: Config, store: ArtifactStore, fingerprint: str, phase: str, conditions: dict[str, Any] | None
) -> Path:
    """Per-unit checkpoints live in the shared cache, keyed by what determines them (resumable, shared).

    ``conditions``: the calibration conditions' key (prompts' hash, labels, the other components' weights).
    """
    payload = {"weights": fingerprint, **reconstruction_settings(config, phase)}
    if conditions:
        payload["conditions"] = conditions
    return store.root / "reconstruction" / store.key("reconstruction", payload)


def _act_pass_dir(config: Config, store: ArtifactStore, fingerprint: str, conditions: dict[str, Any] | None) -> Path:
    """Per-unit checkpoints of the activation pass (they hold activation-quantizer state)."""
    from tfmq_exp.recon.act_pass import act_pass_settings

    payload = {"weights": fingerprint, "reconstruction_version": ENTRY_VERSIONS["reconstruction"], **act_pass_settings(config)}
    if conditions:
        payload["conditions"] = conditions
    return store.root / "act_reconstruction" / store.key("act_reconstruction", payload)


def quantize_for_method(
    unet_fp: nn.Module,
    config: Config,
    store: ArtifactStore,
    timer: StageTimer,
    run_dir: Path,
    calib_parts: GenerationParts | None = None,
    calib_conditions: dict[str, Any] | None = None,
) -> QuantizedModel:
    """Build the quantized denoiser of ``config.method`` (or load ``config.artifact``).

    Args:
        calib_parts / calib_conditions: the family's calibration parts and their key
            (:mod:`tfmq_exp.eval.families`); ``None`` for an unconditional pixel model.
    """
    from tfmq_exp.calib.activation import activation_calibration_data, calibrate_activations
    from tfmq_exp.calib.fsc import fsc_modules
    from tfmq_exp.calib.trajectories import load_or_capture
    from tfmq_exp.recon import reconstruct
    from tfmq_exp.recon.act_pass import reconstruct_activations
    from tfmq_exp.temporal.maintenance import apply_maintenance, iter_cache_modules

    if config.artifact:
        return load_quantized(unet_fp, config, timer)
    adapter = get_adapter(unet_fp)
    tib = adapter.tib()
    method = config.method
    fingerprint = weights_fingerprint(unet_fp)
    with timer("capture"):
        data, hit = load_or_capture(unet_fp, config, store, calib_parts, calib_conditions)
    calibration = CalibrationReport(cache_hit=hit, steps=len(data.timesteps), samples=int(data.x.shape[1]))
    with timer("quantize"):
        unet_q = copy.deepcopy(unet_fp)
        split_points = adapter.shortcut_split_points() if method.split_shortcut else None
        quant_map = quantize_(
            unet_q, config.quant, config.model, method, split_points=split_points,
            temporal_names=set(tib.layer_names()),
        )
        context = TimestepContext()
        attach_timestep_context(unet_q, context)
    budget = capture_budget(config)  # one budget for every unit's captured data; its peaks go to the summary
    timesteps = sampling_timesteps(config.sampler, config.model)
    maintenance = MaintenanceReport()

    def maintain() -> MaintenanceReport:
        with timer("maintenance"):
            return apply_maintenance(unet_q, unet_fp, config, context, timesteps, data.conditioning)

    def reconstruct_phase(phase: str) -> dict[str, Any]:
        directory = _reconstruction_dir(config, store, fingerprint, phase, calib_conditions)
        with timer("reconstruction"), store.locked(directory):  # a second run of it waits, then loads checkpoints
            return reconstruct(unet_q, unet_fp, config, data, directory, config.runtime.progress, phase, context,
                               budget)

    if method.quantize and method.maintenance == "cache":
        maintenance = maintain()  # before everything: the blocks are reconstructed against the cached features
    tiar_report = reconstruct_phase("tiar")
    if method.quantize and method.maintenance == "select":
        maintenance = maintain()  # after TIAR (the TIB option it compares), before the blocks
    reconstruction = ReconstructionReport.from_phases(tiar_report, reconstruct_phase("blocks"))
    with timer("act_calibration"):
        fallbacks = [module.fallback for _, module in iter_cache_modules(unet_q) if module.fallback is not None]
        calibrate_activations(
            unet_q, activation_calibration_data(data, config), context, fsc_modules(unet_q, method),
            device=config.runtime.device, progress=config.runtime.progress, fsc_range=method.fsc_range,
            lenient=fallbacks,
        )
    act_reconstruction = None
    if method.act_recon.enabled:
        directory = _act_pass_dir(config, store, fingerprint, calib_conditions)
        with timer("act_reconstruction"), store.locked(directory):
            act_reconstruction = ActReconstructionReport.from_dict(reconstruct_activations(
                unet_q, unet_fp, config, data, directory, context=context, progress=config.runtime.progress,
                budget=budget,
            ))  # fmt: skip
    result = QuantizationResult(
        calibration=calibration, quantization=QuantizedLayers(layers=len(quant_map.layers)), maintenance=maintenance,
        reconstruction=reconstruction, act_reconstruction=act_reconstruction,
        model_size=model_size(unet_q, unet_fp, maintenance.cache_bytes), captured_memory=budget.report(),
    )  # fmt: skip
    if config.save_artifact:
        save_artifact(run_dir / ARTIFACT_DIR, unet_q, config, extra={SECTIONS_KEY: result.to_dict()})
        result = result.with_artifact(str(run_dir / ARTIFACT_DIR))
    return QuantizedModel(unet=unet_q, context=context, result=result)


def check_artifact_path(config: Config) -> None:
    """Fail at once (before any sampling) when ``artifact=DIR`` does not hold a quantized artifact."""
    if config.artifact and not (Path(config.artifact) / META_FILE).is_file():
        raise CacheMismatchError(
            f"artifact={config.artifact} is not a quantized artifact ({META_FILE} is missing); pass the "
            f"'{ARTIFACT_DIR}' directory of a finished quantized run"
        )


def load_quantized(unet_fp: nn.Module, config: Config, timer: StageTimer) -> QuantizedModel:
    """Rebuild a saved quantized model (``artifact=DIR``) without calibrating again."""
    check_artifact_path(config)
    context = TimestepContext()
    with timer("load_artifact"):
        unet_q = copy.deepcopy(unet_fp)
        try:
            loaded = load_artifact(config.artifact, unet_q, config, context=context)
        except ArtifactError as error:
            raise CacheMismatchError(
                f"artifact {config.artifact} does not fit this run: {' '.join(str(error).split())}"
            ) from error
        attach_timestep_context(unet_q, context)
    result = QuantizationResult.from_dict(loaded.extra.get(SECTIONS_KEY, {}))
    return QuantizedModel(unet=unet_q, context=context, result=result.with_artifact(str(config.artifact)))


@torch.no_grad()
def eps_rel_mse(
    unet_fp: nn.Module,
    unet_q: nn.Module,
    trajectory: torch.Tensor,
    timesteps: list[int],
    conditioning: dict[str, torch.Tensor] | None = None,
    device: str = "cpu",
) -> dict[str, float | list[float]]:
    """Noise-free diagnostic: relative MSE of the quantized noise prediction along the FP trajectory.

    Returns:
        ``eps_rel_mse``: ``sum_t ||eps_q(x_t, t) - eps_fp(x_t, t)||^2 / sum_t ||eps_fp(x_t, t)||^2`` over every
        step of a fixed batch; ``eps_rel_mse_per_step``: the same ratio at each step, in sampling order.

    Args:
        trajectory: ``[S + 1, B, C, H, W]`` full-precision ``x_t`` (the last entry, ``x_0``, is not used).
        timesteps: the S sampling timesteps, in sampling order.
        conditioning: the UNet's conditioning of the ``B`` rows, flat (empty for unconditional models).
        device: where both UNets run (each goes back to where it was).
    """
    errors, energies = [], []
    kwargs = nest({name: value.to(device) for name, value in (conditioning or {}).items()})
    with placed([unet_fp, unet_q], device):
        for x_t, t in zip(trajectory[:-1], timesteps):
            x_t, timestep = x_t.to(device), torch.tensor(t, device=device)
            eps_fp = unet_fp(x_t, timestep, **kwargs).sample
            eps_q = unet_q(x_t, timestep, **kwargs).sample
            errors.append(float((eps_q - eps_fp).pow(2).sum()))
            energies.append(float(eps_fp.pow(2).sum()))
    return {
        "eps_rel_mse": sum(errors) / max(sum(energies), 1e-12),
        "eps_rel_mse_per_step": [error / max(energy, 1e-12) for error, energy in zip(errors, energies)],
    }

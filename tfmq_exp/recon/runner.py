"""The resumable reconstruction runner: TIAR, then BRECQ units in forward order (DESIGN 1.3, 1.4).

For each unit of the plan (:func:`~tfmq_exp.recon.units.plan_units`):

1. load it from its checkpoint if a valid one exists (then go on with the next unit);
2. build its data: for TIAR the timesteps ``t`` of the calibration set and the full-precision temporal features
   ``e_i(t)``; for a block the inputs it receives in the network quantized so far (weights quantized with the
   rounding learned so far, activations in full precision) and the full-precision block's output, both on the
   same reconstruction samples (:func:`~tfmq_exp.calib.selection.reconstruction_set`);
3. start AdaRound (soft) on its layers, fit a :class:`~tfmq_exp.recon.module.ReconstructionModule`, switch to
   hard rounding and freeze the codes;
4. checkpoint it.

Every unit's randomness is seeded from ``config.calib.seed`` and the unit's index, so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from tfmq_exp.calib.capture import CalibrationData
from tfmq_exp.calib.quant_state import quant_state
from tfmq_exp.calib.selection import reconstruction_indices
from tfmq_exp.config.schema import Config
from tfmq_exp.eval.reference import weights_fingerprint
from tfmq_exp.quant import QuantModule, RoundingSchedule, freeze_weights, set_soft_rounding
from tfmq_exp.recon.capture import ReconSamples, capture_inputs, capture_output
from tfmq_exp.recon.checkpoint import UnitCheckpoints
from tfmq_exp.recon.module import ReconstructionModule, fit_unit
from tfmq_exp.recon.objectives import (
    BlockOutputObjective,
    Objective,
    RoundingRegulariser,
    TemporalFeatureObjective,
    TemporalFeatureUnit,
    UnitDataset,
    evaluate_objective,
)
from tfmq_exp.recon.units import TIAR_KIND, ReconUnit, plan_units
from tfmq_exp.store import content_key

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 256


def unit_seed(run_seed: int, index: int) -> int:
    """The seed of unit ``index`` of a run seeded ``run_seed``."""
    return int(content_key(["recon-unit", run_seed, index]), 16) % (2**62)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def recon_samples(data: CalibrationData, config: Config) -> ReconSamples:
    """The reconstruction samples (``calib.recon_samples`` of them, steps by ``method.calib_steps``)."""
    steps, samples = reconstruction_indices(
        config.method.calib_steps, data.num_steps, data.num_samples, config.calib, config.calib.seed
    )
    timesteps = torch.tensor(data.timesteps, dtype=torch.long)[steps]
    conditioning = {name: value[samples] for name, value in data.conditioning.items()}
    return ReconSamples(data.x[steps, samples], timesteps, conditioning)


def capture_batch_size(config: Config) -> int:
    """Samples per UNet forward when capturing a unit's inputs and targets (the evaluation batch size, which
    is sized for the device's memory, or the reconstruction batch if larger)."""
    return max(config.method.recon.batch_size, config.eval.batch_size)


# Reconstruction runs with activations in full precision, before activation calibration and maintenance, and
# its randomness comes from ``calib.seed`` (the run's ``seed`` picks the evaluation noise). Runs that differ only
# in the fields below share their reconstruction: ``qdiffusion`` and ``fsc``; ``w4a8``, ``w4a32`` and ``w4a8t4``;
# every evaluation seed set.
POST_RECONSTRUCTION_FIELDS = (
    "name", "fsc", "fsc_scope", "fsc_range", "maintenance", "cache_bits", "cache_fallback", "select",
)
ACTIVATION_ONLY_FIELDS = ("name", "a_bits", "temporal_a_bits", "act_range", "ema_momentum", "quantize_attention")


def reconstruction_settings(config: Config) -> dict:
    """Everything in the config that can change the reconstructed weights."""
    method = {k: v for k, v in asdict(config.method).items() if k not in POST_RECONSTRUCTION_FIELDS}
    quant = {k: v for k, v in asdict(config.quant).items() if k not in ACTIVATION_ONLY_FIELDS}
    return {"model": asdict(config.model), "quant": quant, "method": method, "calib": asdict(config.calib),
            "sampler": asdict(config.sampler)}


def setup_key(unet_fp: nn.Module, config: Config, data: CalibrationData, plan: list[ReconUnit]) -> str:
    """Key of everything that determines the reconstruction's results (the checkpoints' validity)."""
    return content_key({
        "format": 1,
        "weights": weights_fingerprint(unet_fp),
        **reconstruction_settings(config),
        "data": {"shape": list(data.x.shape), "timesteps": data.timesteps},
        "plan": [unit.to_dict() for unit in plan],
        "capture_batch_size": capture_batch_size(config),  # batch composition may change the last float bits
    })


@contextlib.contextmanager
def _session(unet_q: nn.Module, unet_fp: nn.Module, device: str) -> Iterator[None]:
    """Weights quantized, activations off, eval mode, no float-weight gradients, on ``device``; all restored."""
    places = [(model, next(model.parameters()).device, model.training) for model in (unet_q, unet_fp)]
    grads = [(p, p.requires_grad) for model in (unet_q, unet_fp) for p in model.parameters()]
    for parameter, _ in grads:
        parameter.requires_grad_(False)
    for model, _, _ in places:
        model.eval().to(device)
    try:
        with quant_state(unet_q, weight=True, act=False):
            yield
    finally:
        for parameter, flag in grads:
            parameter.requires_grad_(flag)
        for model, place, training in places:
            model.to(place).train(training)


def _optimise(
    unit: ReconUnit, module: nn.Module, objective: Objective, dataset: UnitDataset, unet_q: nn.Module,
    config: Config, batch_size: int, device: str, progress: bool,
) -> dict[str, Any]:
    """AdaRound the unit's layers against ``objective``; returns the unit's report entry."""
    recon = config.method.recon
    started = time.perf_counter()
    loss_nearest = evaluate_objective(module, objective, dataset, EVAL_BATCH_SIZE)
    layers: list[QuantModule] = [unet_q.get_submodule(name) for name in unit.layer_names]
    parameters = [layer.enable_adaround(soft=True) for layer in layers]
    regulariser = RoundingRegulariser(
        RoundingSchedule.from_recon_config(recon), [layer.weight_quantizer for layer in layers], recon.reg_lambda
    )
    reconstruction = ReconstructionModule(module, objective, regulariser, parameters, recon.lr)
    fit_unit(reconstruction, dataset, recon.iters, batch_size, unit_seed(config.calib.seed, unit.index), device, progress)
    module.to(device)  # Lightning's teardown moves the fitted module to the CPU
    for layer in layers:
        set_soft_rounding(layer, False)
        freeze_weights(layer)
    loss_final = evaluate_objective(module, objective, dataset, EVAL_BATCH_SIZE)
    return {
        **unit.to_dict(),
        "iters": recon.iters,
        "samples": len(dataset),
        "loss_nearest": loss_nearest,
        "loss_final": loss_final,
        "loss_first_step": reconstruction.losses[0],
        "loss_last_step": reconstruction.losses[-1],
        "regulariser_last_step": reconstruction.regulariser_losses[-1],
        "seconds": time.perf_counter() - started,
    }


def _tiar(unit: ReconUnit, unet_q: nn.Module, unet_fp: nn.Module, data: CalibrationData, config: Config,
          device: str, progress: bool) -> dict[str, Any]:
    """TIAR: the TIB against the full-precision temporal features over all calibration timesteps."""
    timesteps = torch.tensor(data.timesteps, dtype=torch.long)
    with torch.no_grad():
        target = {name: value.cpu() for name, value in TemporalFeatureUnit(unet_fp)(timesteps.to(device)).items()}
    dataset = UnitDataset({"timesteps": timesteps}, target)
    module = TemporalFeatureUnit(unet_q)
    objective = TemporalFeatureObjective()
    return _optimise(unit, module, objective, dataset, unet_q, config, len(timesteps), device, progress)


def _block(unit: ReconUnit, unet_q: nn.Module, unet_fp: nn.Module, samples: ReconSamples, config: Config,
           device: str, progress: bool) -> dict[str, Any]:
    """BRECQ: one block against the full-precision block's output."""
    module_q, module_fp = unet_q.get_submodule(unit.name), unet_fp.get_submodule(unit.name)
    inputs = capture_inputs(unet_q, module_q, samples, capture_batch_size(config))
    target = capture_output(unet_fp, module_fp, samples, capture_batch_size(config))
    dataset = UnitDataset(inputs.tensors, target)
    objective = BlockOutputObjective(inputs.template)
    batch_size = config.method.recon.batch_size
    return _optimise(unit, module_q, objective, dataset, unet_q, config, batch_size, device, progress)


def reconstruct(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    config: Config,
    data: CalibrationData,
    checkpoint_dir: Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruct the rounding of ``unet_q``'s weights: TIAR and / or BRECQ units, resumable.

    Without ``method.tiar`` and ``method.recon.enabled`` nothing happens (weights stay round-to-nearest).
    Afterwards every layer that was reconstructed holds frozen hard-rounded codes; quantization switches,
    training mode, devices and ``requires_grad`` flags are as before.

    Args:
        unet_q: the quantized UNet (modified in place).
        unet_fp: its full-precision twin (not modified).
        config: ``method`` (tiar, recon, calib_steps), ``calib`` (recon_samples, seed), ``seed`` (per-unit seeds),
            ``runtime.device`` and ``eval.batch_size`` (capture batch) are used.
        data: the calibration data.
        checkpoint_dir: per-unit checkpoints and the manifest (resumes from valid ones).
        progress: show Lightning progress bars.

    Returns:
        A JSON-serialisable report: ``units`` (name -> index, kind, layers, iters, samples, losses with
        nearest and with learned rounding, seconds, resumed), ``resumed_units``, ``seconds``.
    """
    started = time.perf_counter()
    report: dict[str, Any] = {"tiar": config.method.tiar, "recon": config.method.recon.enabled, "units": {},
                              "resumed_units": []}
    plan = plan_units(unet_q, unet_fp, config.method) if config.method.quantize else []
    if not plan:
        report["seconds"] = time.perf_counter() - started
        return report
    device = resolve_device(config.runtime.device)
    checkpoints = UnitCheckpoints(checkpoint_dir, setup_key(unet_fp, config, data, plan))
    samples = recon_samples(data, config) if any(unit.kind != TIAR_KIND for unit in plan) else None
    with _session(unet_q, unet_fp, device):
        for unit in plan:
            entry = checkpoints.load(unet_q, unit)
            if entry is not None:
                report["units"][unit.name] = {**entry, "resumed": True}
                report["resumed_units"].append(unit.name)
                continue
            if unit.kind == TIAR_KIND:
                entry = _tiar(unit, unet_q, unet_fp, data, config, device, progress)
            else:
                assert samples is not None
                entry = _block(unit, unet_q, unet_fp, samples, config, device, progress)
            checkpoints.save(unet_q, unit, entry)
            report["units"][unit.name] = {**entry, "resumed": False}
            log.info("unit %s (%s): loss %.4g -> %.4g in %.1f s", unit.name, unit.kind, entry["loss_nearest"],
                     entry["loss_final"], entry["seconds"])
    report["seconds"] = time.perf_counter() - started
    return report

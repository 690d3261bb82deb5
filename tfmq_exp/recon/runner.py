"""The resumable reconstruction runner: TIAR, then BRECQ units in forward order (DESIGN 1.3, 1.4).

Two phases, each resumable on its own (:data:`PHASES`): ``tiar`` (the TIB unit) and ``blocks`` (every other
unit); the orchestrator may change the model between them (disturbance-aware selection installs its cache after
TIAR and before the blocks, DESIGN 1.6). For each unit of the phase's plan (:func:`~tfmq_exp.recon.units.plan_units`):

1. load it from its checkpoint if a valid one exists (then go on with the next unit);
2. build its data: for TIAR the timesteps ``t`` of the calibration set and the full-precision temporal features
   ``e_i(t)``; for a block the inputs it receives in the network quantized so far (weights quantized with the
   rounding learned so far, activations in full precision) and the full-precision block's output, both on the
   same reconstruction samples (:func:`~tfmq_exp.calib.steps.reconstruction_set`);
3. start AdaRound (soft) on its layers, fit a :class:`~tfmq_exp.recon.module.ReconstructionModule`, record the
   convergence evidence (:func:`convergence_report`), switch to hard rounding and freeze the codes;
4. checkpoint it.

Every unit's randomness is seeded from ``config.calib.seed`` and the unit's index, so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from tfmq_exp.calib.trajectories import CalibrationData
from tfmq_exp.quant.switches import quant_state
from tfmq_exp.calib.steps import reconstruction_indices
from tfmq_exp.config.schema import CalibConfig, Config, MethodConfig, QuantConfig, reconstruction_fields
from tfmq_exp.devices import old_objects_frozen, resolve_device
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.quant import QuantModule, RoundingSchedule, TimestepContext, WeightQuantizer, freeze_weights
from tfmq_exp.quant import set_soft_rounding
from tfmq_exp.quant.adaround import rectified_sigmoid
from tfmq_exp.recon.capture_buffer import CaptureBudget
from tfmq_exp.recon.unit_io import ReconSamples, capture_inputs, capture_output
from tfmq_exp.recon.checkpoint import UnitCheckpoints, run_resumable
from tfmq_exp.recon.module import ReconstructionModule, fit_unit
from tfmq_exp.recon.objectives import (
    BlockOutputObjective,
    Objective,
    RoundingRegulariser,
    UnitDataset,
    evaluate_objective,
)
from tfmq_exp.recon.tiar import TemporalFeatureObjective, TemporalFeatureUnit, tiar_dataset
from tfmq_exp.recon.units import TIAR_KIND, ReconUnit, plan_units
from tfmq_exp.store import content_key

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 256
PHASES = ("tiar", "blocks")
# Convergence of AdaRound (DESIGN 1.3): nearly every h(alpha) decided, and hard rounding reproducing the soft
# solution. A rounding variable is undecided when h(alpha) is more than UNDECIDED_MARGIN from both 0 and 1.
UNDECIDED_MARGIN = 0.01
MAX_UNDECIDED_FRACTION = 0.01
MAX_HARD_SOFT_RATIO = 1.25


def unit_seed(run_seed: int, index: int) -> int:
    """The seed of unit ``index`` of a run seeded ``run_seed``."""
    return int(content_key(["recon-unit", run_seed, index]), 16) % (2**62)


def recon_samples(data: CalibrationData, config: Config) -> ReconSamples:
    """The reconstruction samples (``calib.recon_samples`` of them, steps by ``method.calib_steps``)."""
    steps, samples = reconstruction_indices(
        config.method.calib_steps, data.num_steps, data.num_samples, config.calib, config.calib.seed
    )
    timesteps = torch.tensor(data.timesteps, dtype=torch.long)[steps]
    conditioning = {name: value[samples] for name, value in data.conditioning.items()}
    return ReconSamples(data.x[steps, samples], timesteps, conditioning)


def capture_budget(config: Config) -> CaptureBudget:
    """The memory budget for captured unit data (``calib.memory_budget_mb``), spilling under the cache directory."""
    return CaptureBudget(config.calib.memory_budget_mb, Path(config.runtime.cache_dir) / "spill")


def capture_batch_size(config: Config) -> int:
    """Samples per UNet forward when capturing a unit's inputs and targets (the evaluation batch size, which
    is sized for the device's memory, or the reconstruction batch if larger)."""
    return max(config.method.recon.batch_size, config.eval.batch_size)


# Weight reconstruction runs with activations in full precision and its randomness comes from ``calib.seed``
# (the run's ``seed`` picks the evaluation noise). Fields that only act after it are left out of its key, so runs
# that differ only in them share it: ``qdiffusion`` and ``fsc``; ``w4a8``, ``w4a32`` and ``w4a8t4``; every
# evaluation seed set. What acts before it is in: the maintenance installed before the blocks (a cache, and for a
# selection the TIAR + FSC result it compares against: the FSC settings and the temporal activation bits).
# Which config fields reach reconstruction is declared on the fields themselves (schema metadata RECON_ROLE).
POST_RECONSTRUCTION_FIELDS = reconstruction_fields(MethodConfig, "never")
MAINTENANCE_FIELDS = reconstruction_fields(MethodConfig, "maintenance")
FSC_FIELDS = reconstruction_fields(MethodConfig, "fsc")
ACTIVATION_ONLY_FIELDS = reconstruction_fields(QuantConfig, "never")
NON_RESULT_CALIB_FIELDS = reconstruction_fields(CalibConfig, "never")


def calib_settings(config: Config) -> dict[str, Any]:
    """The ``calib`` fields that can change a reconstruction's result (not, e.g., its memory budget)."""
    return {k: v for k, v in asdict(config.calib).items() if k not in NON_RESULT_CALIB_FIELDS}


def reconstruction_settings(config: Config, phase: str = "all") -> dict:
    """Everything in the config that can change the weights reconstructed in ``phase`` (a :data:`PHASES` entry,
    or ``all``)."""
    from tfmq_exp.temporal.maintenance import cache_bits_for

    maintenance = config.method.maintenance
    dropped = set(POST_RECONSTRUCTION_FIELDS)
    if phase == "tiar" or maintenance == "tib":
        dropped |= set(MAINTENANCE_FIELDS) | set(FSC_FIELDS)
    elif maintenance == "cache":
        dropped |= set(FSC_FIELDS) | {"select"}
    method = {k: v for k, v in asdict(config.method).items() if k not in dropped}
    quant = {k: v for k, v in asdict(config.quant).items() if k not in ACTIVATION_ONLY_FIELDS}
    if phase != "tiar" and maintenance != "tib":
        method["resolved_cache_bits"] = cache_bits_for(config)
        if maintenance == "select":  # the TIB option's error depends on its activation quantizers
            quant["temporal_a_bits"] = config.quant.effective_temporal_a_bits
            quant["act_range"] = config.method.act_range or config.quant.act_range
            quant["ema_momentum"] = config.quant.ema_momentum
    return {"phase": phase, "model": asdict(config.model), "quant": quant, "method": method,
            "calib": calib_settings(config), "sampler": asdict(config.sampler)}


def setup_key(
    unet_fp: nn.Module, config: Config, data: CalibrationData, plan: list[ReconUnit], phase: str = "all"
) -> str:
    """Key of everything that determines the reconstruction's results (the checkpoints' validity)."""
    conditioning = {}
    if data.conditioning:  # prompts / labels reach the units through the UNet's conditioning: hash its content
        digest = hashlib.sha256()
        for name, value in sorted(data.conditioning.items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        conditioning = {"conditioning": digest.hexdigest()[:16]}
    return content_key({
        **conditioning,
        "format": 2,  # 2: lp_loss reduction, convergence report
        "weights": weights_fingerprint(unet_fp),
        **reconstruction_settings(config, phase),
        "data": {"shape": list(data.x.shape), "timesteps": data.timesteps},
        "plan": [unit.to_dict() for unit in plan],
        "capture_batch_size": capture_batch_size(config),  # batch composition may change the last float bits
    })


@contextlib.contextmanager
def session(unet_q: nn.Module, unet_fp: nn.Module, device: str, act: bool = False) -> Iterator[None]:
    """Weights quantized, activations ``act``, eval mode, no float-weight gradients, on ``device``; all restored.

    The unit loops run in it; the objects that exist on entry are frozen for the cyclic collector
    (:func:`~tfmq_exp.devices.old_objects_frozen`), so the collection after each unit scans only what units made.
    """
    places = [(model, next(model.parameters()).device, model.training) for model in (unet_q, unet_fp)]
    grads = [(p, p.requires_grad) for model in (unet_q, unet_fp) for p in model.parameters()]
    for parameter, _ in grads:
        parameter.requires_grad_(False)
    for model, _, _ in places:
        model.eval().to(device)
    try:
        with quant_state(unet_q, weight=True, act=act), old_objects_frozen():
            yield
    finally:
        for parameter, flag in grads:
            parameter.requires_grad_(flag)
        for model, place, training in places:
            model.to(place).train(training)


def undecided_fraction(quantizers: list[WeightQuantizer]) -> float:
    """Share of rounding variables with ``h(alpha)`` more than :data:`UNDECIDED_MARGIN` from both 0 and 1."""
    undecided, total = 0, 0
    for quantizer in quantizers:
        h = rectified_sigmoid(quantizer.alpha.detach())
        undecided += int(((h > UNDECIDED_MARGIN) & (h < 1.0 - UNDECIDED_MARGIN)).sum())
        total += h.numel()
    return undecided / max(total, 1)


def convergence_report(undecided: float, loss_soft: float, loss_hard: float) -> dict[str, Any]:
    """The per-unit convergence evidence (DESIGN 1.3): decided rounding and a hard loss near the soft one."""
    ratio = loss_hard / loss_soft if loss_soft > 0 else (1.0 if loss_hard == 0 else float("inf"))
    return {
        "undecided_fraction": undecided,
        "loss_soft": loss_soft,
        "loss_hard": loss_hard,
        "hard_soft_ratio": ratio,
        "converged": undecided <= MAX_UNDECIDED_FRACTION and ratio <= MAX_HARD_SOFT_RATIO,
    }


def _optimise(
    unit: ReconUnit, module: nn.Module, objective: Objective, dataset: UnitDataset, unet_q: nn.Module,
    config: Config, batch_size: int, device: str, progress: bool,
) -> dict[str, Any]:
    """AdaRound the unit's layers against ``objective``; returns the unit's report entry.

    ``loss_nearest``, ``loss_soft`` and ``loss_hard`` are the objective on every captured sample (the same fixed
    set): with round-to-nearest before optimising, with soft rounding ``h(alpha)`` after it and with the hard
    rounding that is kept; ``undecided_fraction`` is measured before hardening.
    """
    recon = config.method.recon
    started = time.perf_counter()
    loss_nearest = evaluate_objective(module, objective, dataset, EVAL_BATCH_SIZE)
    layers: list[QuantModule] = [unet_q.get_submodule(name) for name in unit.layer_names]
    parameters = [alpha for layer in layers for alpha in layer.enable_adaround(soft=True)]
    quantizers = [quantizer for layer in layers for quantizer in layer.weight_quantizers()]
    regulariser = RoundingRegulariser(RoundingSchedule.from_recon_config(recon), quantizers, recon.reg_lambda)
    reconstruction = ReconstructionModule(module, objective, regulariser, parameters, recon.lr)
    fit_started = time.perf_counter()
    fit_unit(reconstruction, dataset, recon.iters, batch_size, unit_seed(config.calib.seed, unit.index), device, progress)
    fit_seconds = time.perf_counter() - fit_started
    module.to(device)  # Lightning's teardown moves the fitted module to the CPU
    undecided = undecided_fraction(quantizers)
    loss_soft = evaluate_objective(module, objective, dataset, EVAL_BATCH_SIZE)
    for layer in layers:
        set_soft_rounding(layer, False)
        freeze_weights(layer)
    loss_hard = evaluate_objective(module, objective, dataset, EVAL_BATCH_SIZE)
    return {
        **unit.to_dict(),
        "iters": recon.iters,
        "lr": recon.lr,
        "samples": len(dataset),
        "loss_nearest": loss_nearest,
        **convergence_report(undecided, loss_soft, loss_hard),
        "loss_final": loss_hard,
        "loss_first_step": reconstruction.losses[0],
        "loss_last_step": reconstruction.losses[-1],
        "regulariser_last_step": reconstruction.regulariser_losses[-1],
        "seconds_per_iter": fit_seconds / recon.iters,
        "seconds": time.perf_counter() - started,
    }


def _tiar(unit: ReconUnit, unet_q: nn.Module, unet_fp: nn.Module, data: CalibrationData, config: Config,
          device: str, progress: bool) -> dict[str, Any]:
    """TIAR: the TIB against the full-precision temporal features over all calibration timesteps (and, where
    the features depend on it, the conditioning they were sampled under)."""
    dataset = tiar_dataset(
        unet_fp, data.timesteps, device, data.conditioning, pairs=config.calib.recon_samples, seed=config.calib.seed
    )
    module = TemporalFeatureUnit(unet_q)
    return _optimise(unit, module, TemporalFeatureObjective(), dataset, unet_q, config, len(dataset), device, progress)


def reconstruct_block(
    unit: ReconUnit, unet_q: nn.Module, unet_fp: nn.Module, samples: ReconSamples, config: Config, device: str,
    progress: bool, context: TimestepContext | None, budget: CaptureBudget,
) -> dict[str, Any]:  # fmt: skip
    """BRECQ: one block against the full-precision block's output (a cache in the block reads each sample's t).

    Its captured inputs and target go into ``budget`` (the caller releases them); the entry adds the capture's
    seconds to :func:`_optimise`'s report.
    """
    started = time.perf_counter()
    module_q, module_fp = unet_q.get_submodule(unit.name), unet_fp.get_submodule(unit.name)
    inputs = capture_inputs(unet_q, module_q, samples, capture_batch_size(config), budget)
    target = capture_output(unet_fp, module_fp, samples, capture_batch_size(config), budget)
    capture_seconds = time.perf_counter() - started
    dataset = UnitDataset(inputs.tensors, target, timesteps=samples.timesteps)
    objective = BlockOutputObjective(inputs.template, config.method.recon.p, context)
    batch_size = config.method.recon.batch_size
    entry = _optimise(unit, module_q, objective, dataset, unet_q, config, batch_size, device, progress)
    return {**entry, "capture_seconds": capture_seconds, "seconds": time.perf_counter() - started}


def reconstruct(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    config: Config,
    data: CalibrationData,
    checkpoint_dir: Path,
    progress: bool = False,
    phase: str | None = None,
    context: TimestepContext | None = None,
    budget: CaptureBudget | None = None,
) -> dict[str, Any]:
    """Reconstruct the rounding of ``unet_q``'s weights in one phase: TIAR or the BRECQ units, resumable.

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
        phase: ``tiar`` (the TIB unit) or ``blocks`` (every other unit), see :data:`PHASES`; ``None``: both.
        context: the timestep context a temporal-feature cache inside a block reads (per sample while a block is
            fitted on batches that mix timesteps).
        budget: holds each block's captured data (:func:`capture_budget`; released after every unit).

    Returns:
        A JSON-serialisable report: ``units`` (name -> index, kind, layers, iters, lr, samples, the losses with
        nearest, soft and hard rounding, ``undecided_fraction``, ``hard_soft_ratio``, ``converged``, seconds,
        resumed), ``resumed_units``, ``seconds``.
    """
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase={phase!r} is not valid; choose one of: {', '.join(PHASES)}")
    started = time.perf_counter()
    report: dict[str, Any] = {"tiar": config.method.tiar, "recon": config.method.recon.enabled, "units": {},
                              "resumed_units": []}
    plan = plan_units(unet_q, unet_fp, config.method) if config.method.quantize else []
    if phase is not None:
        plan = [unit for unit in plan if (unit.kind == TIAR_KIND) == (phase == "tiar")]
    if not plan:
        report["seconds"] = time.perf_counter() - started
        return report
    device = resolve_device(config.runtime.device)
    checkpoints = UnitCheckpoints(checkpoint_dir, setup_key(unet_fp, config, data, plan, phase or "all"))
    samples = recon_samples(data, config) if any(unit.kind != TIAR_KIND for unit in plan) else None
    budget = budget or capture_budget(config)

    def optimise(unit: ReconUnit) -> dict[str, Any]:
        if unit.kind == TIAR_KIND:
            entry = _tiar(unit, unet_q, unet_fp, data, config, device, progress)
        else:
            assert samples is not None
            try:
                entry = reconstruct_block(unit, unet_q, unet_fp, samples, config, device, progress, context, budget)
            finally:
                budget.release()
        log.info("unit %s (%s): loss %.4g -> soft %.4g / hard %.4g, undecided %.2f%% in %.1f s", unit.name,
                 unit.kind, entry["loss_nearest"], entry["loss_soft"], entry["loss_hard"],
                 100 * entry["undecided_fraction"], entry["seconds"])
        return entry

    with session(unet_q, unet_fp, device):
        run_resumable(unet_q, plan, checkpoints, optimise, report)
    report["seconds"] = time.perf_counter() - started
    return report

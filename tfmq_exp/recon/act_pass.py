"""Q-Diffusion's activation pass: activation step sizes learned block by block (DESIGN 1.1, ``method.act_recon``).

After weight reconstruction and activation initialisation, Q-Diffusion (and BRECQ, whose code it inherits) runs
a second block-wise reconstruction with activations quantized (Q-Diffusion ``scripts/sample_diffusion_ldm.py:
548-550`` and ``qdiff/block_recon.py:72-110`` at 715783d; BRECQ ``main_imagenet.py:231-242`` at e455d62). For
each unit in forward order:

1. inputs and targets come from the full-precision network (``asym=False`` there, ``qdiff/utils.py:224-255``),
   on the same reconstruction samples as weight reconstruction (Q-Diffusion passes the same ``cali_data``);
2. the unit runs with its frozen weight codes and its activations quantized; every activation step size inside
   it (layer inputs, both halves of a split, attention q, k, probabilities and v) becomes a parameter, zero
   points stay fixed;
3. Adam with cosine decay to 0 minimises ``lp_loss(out_q, out_fp, p)`` (no rounding term: ``round_loss = 0`` in
   ``act_quant`` mode, ``qdiff/block_recon.py:217-218``);
4. the learned step sizes are kept and the unit is checkpointed (resumable, like weight reconstruction).

Per unit the report records ``loss_init`` / ``loss_final`` (the objective on every captured sample before and
after) and the mean step loss of the last and the previous tenth of the iterations (``plateau_ratio``: their
ratio, near 1 when the optimisation has flattened out).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from tfmq_exp.calib.trajectories import CalibrationData
from tfmq_exp.config.schema import Config
from tfmq_exp.devices import resolve_device
from tfmq_exp.fingerprints import weights_fingerprint
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import ActQuantizer, TimestepContext, iter_act_quantizers
from tfmq_exp.recon.capture_buffer import CaptureBudget
from tfmq_exp.recon.unit_io import capture_inputs, capture_output
from tfmq_exp.recon.checkpoint import UnitCheckpoints, run_resumable
from tfmq_exp.recon.module import ReconstructionModule, fit_unit
from tfmq_exp.recon.objectives import BlockOutputObjective, UnitDataset, evaluate_objective
from tfmq_exp.recon.runner import (
    EVAL_BATCH_SIZE,
    calib_settings,
    capture_batch_size,
    capture_budget,
    recon_samples,
    session,
    unit_seed,
)
from tfmq_exp.recon.units import ReconUnit
from tfmq_exp.store import ENTRY_VERSIONS, content_key

log = logging.getLogger(__name__)
KIND_SUFFIX = "-act"
PLATEAU_WINDOW = 0.1


def act_pass_settings(config: Config) -> dict:
    """Everything the activation pass depends on: the whole quantization setup (it runs after every other stage)."""
    method = {k: v for k, v in asdict(config.method).items() if k != "name"}
    quant = {k: v for k, v in asdict(config.quant).items() if k != "name"}
    return {"stage": "act_recon", "model": asdict(config.model), "quant": quant, "method": method,
            "calib": calib_settings(config), "sampler": asdict(config.sampler)}


def plan_act_units(unet_q: nn.Module, unet_fp: nn.Module) -> list[tuple[ReconUnit, list[ActQuantizer]]]:
    """The adapter's reconstruction units in forward order that hold a quantizing activation quantizer."""
    plan = []
    for unit in get_adapter(unet_fp).reconstruction_units():
        quantizers = [q for _, q in iter_act_quantizers(unet_q.get_submodule(unit.name)) if not q.is_identity]
        if not quantizers:
            continue
        if any(quantizer.per_timestep for quantizer in quantizers):
            raise ValueError(
                f"the activation pass learns one step size per quantizer, but {unit.name} holds per-timestep (FSC) "
                "quantizers; turn method.act_recon.enabled off for FSC methods (the released TFMQ-DM does not run it)"
            )
        recon_unit = ReconUnit(len(plan), unit.name, unit.kind + KIND_SUFFIX, (), (unit.name,))
        plan.append((recon_unit, quantizers))
    return plan


def _plateau_ratio(losses: list[float]) -> float:
    window = max(1, int(PLATEAU_WINDOW * len(losses)))
    if len(losses) < 2 * window:
        return float("nan")
    last, previous = losses[-window:], losses[-2 * window : -window]
    return (sum(last) / window) / max(sum(previous) / window, 1e-30)


def _optimise_unit(
    unit: ReconUnit, quantizers: list[ActQuantizer], unet_q: nn.Module, unet_fp: nn.Module, samples: Any,
    config: Config, device: str, progress: bool, context: TimestepContext | None, budget: CaptureBudget,
) -> dict[str, Any]:  # fmt: skip
    act = config.method.act_recon
    started = time.perf_counter()
    module_q, module_fp = unet_q.get_submodule(unit.name), unet_fp.get_submodule(unit.name)
    inputs = capture_inputs(unet_fp, module_fp, samples, capture_batch_size(config), budget)  # FP inputs (asym=False)
    target = capture_output(unet_fp, module_fp, samples, capture_batch_size(config), budget)
    dataset = UnitDataset(inputs.tensors, target, timesteps=samples.timesteps)
    objective = BlockOutputObjective(inputs.template, act.p, context)
    loss_init = evaluate_objective(module_q, objective, dataset, EVAL_BATCH_SIZE)
    parameters = [quantizer.learn_scale() for quantizer in quantizers]
    module = ReconstructionModule(module_q, objective, None, parameters, act.lr, cosine_steps=act.iters)
    try:
        fit_unit(module, dataset, act.iters, act.batch_size, unit_seed(config.calib.seed, 10_000 + unit.index),
                 device, progress)
    finally:
        module_q.to(device)  # Lightning's teardown moves the fitted module to the CPU
        for quantizer in quantizers:
            quantizer.fix_scale()
    loss_final = evaluate_objective(module_q, objective, dataset, EVAL_BATCH_SIZE)
    return {
        **unit.to_dict(),
        "quantizers": len(quantizers),
        "iters": act.iters,
        "lr": act.lr,
        "p": act.p,
        "samples": len(dataset),
        "loss_init": loss_init,
        "loss_final": loss_final,
        "loss_first_step": module.losses[0],
        "loss_last_step": module.losses[-1],
        "plateau_ratio": _plateau_ratio(module.losses),
        "seconds": time.perf_counter() - started,
    }


def reconstruct_activations(
    unet_q: nn.Module,
    unet_fp: nn.Module,
    config: Config,
    data: CalibrationData,
    checkpoint_dir: Path,
    *,
    context: TimestepContext | None = None,
    progress: bool = False,
    budget: CaptureBudget | None = None,
) -> dict[str, Any]:
    """Run the activation pass of ``config.method.act_recon`` on the calibrated ``unet_q`` (in place, resumable).

    Args:
        unet_q: the quantized UNet after weight reconstruction and activation calibration.
        unet_fp: its full-precision twin.
        config: ``method.act_recon`` (iters, lr, p, batch size), ``calib`` (samples, seed), ``runtime.device``.
        data: the calibration data (the reconstruction samples are drawn from it as for weight reconstruction).
        checkpoint_dir: per-unit checkpoints (activation-quantizer state included).
        progress: show Lightning progress bars.
        context: the timestep context (a temporal-feature cache in a unit reads each sample's timestep).
        budget: holds each unit's captured data (released after every unit).

    Returns:
        A JSON-serialisable report: ``enabled``, ``units`` (name -> losses before and after, plateau ratio,
        seconds, resumed), ``resumed_units``, ``seconds``.
    """
    started = time.perf_counter()
    report: dict[str, Any] = {"enabled": config.method.act_recon.enabled, "units": {}, "resumed_units": []}
    if not config.method.act_recon.enabled or not config.method.quantize:
        return report
    plan = plan_act_units(unet_q, unet_fp)
    if plan:
        device = resolve_device(config.runtime.device)
        key = content_key({
            "format": 1, "weights": weights_fingerprint(unet_fp), **act_pass_settings(config),
            # its checkpoints hold the units' weight codes too: a new reconstruction version invalidates them
            "reconstruction_version": ENTRY_VERSIONS["reconstruction"],
            "plan": [unit.to_dict() for unit, _ in plan], "capture_batch_size": capture_batch_size(config),
        })  # fmt: skip
        checkpoints = UnitCheckpoints(checkpoint_dir, key, activations=True)
        samples = recon_samples(data, config)
        quantizers = {unit.name: unit_quantizers for unit, unit_quantizers in plan}
        unit_budget = budget or capture_budget(config)

        def optimise(unit: ReconUnit) -> dict[str, Any]:
            try:
                entry = _optimise_unit(
                    unit, quantizers[unit.name], unet_q, unet_fp, samples, config, device, progress, context,
                    unit_budget,
                )
            finally:
                unit_budget.release()
            log.info("activation pass %s: loss %.4g -> %.4g in %.1f s", unit.name, entry["loss_init"],
                     entry["loss_final"], entry["seconds"])
            return entry

        with session(unet_q, unet_fp, device, act=True):
            run_resumable(unet_q, [unit for unit, _ in plan], checkpoints, optimise, report)
    report["seconds"] = time.perf_counter() - started
    return report

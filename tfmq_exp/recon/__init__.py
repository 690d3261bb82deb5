"""Reconstruction of the weight rounding (AdaRound): TIAR over the TIB and BRECQ over blocks, one
LightningModule fit per unit, resumable from per-unit checkpoints (DESIGN 1.3, 1.4)."""

from tfmq_exp.recon.unit_io import CallTemplate, CapturedInputs, ReconSamples, capture_inputs, capture_output
from tfmq_exp.recon.checkpoint import UnitCheckpoints, unit_state
from tfmq_exp.recon.module import RandomBatches, ReconstructionModule, fit_unit
from tfmq_exp.recon.objectives import (
    BlockOutputObjective,
    RoundingRegulariser,
    UnitDataset,
    evaluate_objective,
)
from tfmq_exp.recon.tiar import TemporalFeatureObjective, TemporalFeatureUnit, tiar_dataset
from tfmq_exp.recon.runner import convergence_report, reconstruct, recon_samples, undecided_fraction, unit_seed
from tfmq_exp.recon.units import ReconUnit, plan_units

__all__ = [
    "BlockOutputObjective",
    "CallTemplate",
    "CapturedInputs",
    "RandomBatches",
    "ReconSamples",
    "ReconUnit",
    "ReconstructionModule",
    "RoundingRegulariser",
    "TemporalFeatureObjective",
    "TemporalFeatureUnit",
    "UnitCheckpoints",
    "UnitDataset",
    "capture_inputs",
    "capture_output",
    "convergence_report",
    "evaluate_objective",
    "tiar_dataset",
    "fit_unit",
    "plan_units",
    "recon_samples",
    "reconstruct",
    "undecided_fraction",
    "unit_seed",
    "unit_state",
]

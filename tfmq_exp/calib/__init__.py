"""Calibration: the full-precision trajectory capture (one pass, cached), the steps that feed reconstruction,
and activation range calibration with optional per-timestep ranges (FSC) (DESIGN 1.2, 1.4)."""

from tfmq_exp.calib.activation import CalibrationBatches, calibrate_activations
from tfmq_exp.calib.fsc import calibrate_tib_activations, fsc_modules
from tfmq_exp.calib.trajectories import (
    CALIBRATION_KIND,
    CalibrationData,
    calibration_payload,
    calibration_seed_set,
    load_or_capture,
)
from tfmq_exp.quant.switches import quant_state
from tfmq_exp.calib.steps import (
    STRATEGIES,
    normal_step_draws,
    reconstruction_indices,
    reconstruction_set,
    select_steps,
    step_counts,
)

__all__ = [
    "CALIBRATION_KIND",
    "STRATEGIES",
    "CalibrationBatches",
    "CalibrationData",
    "calibrate_activations",
    "calibrate_tib_activations",
    "calibration_payload",
    "calibration_seed_set",
    "fsc_modules",
    "load_or_capture",
    "normal_step_draws",
    "quant_state",
    "reconstruction_indices",
    "reconstruction_set",
    "select_steps",
    "step_counts",
]

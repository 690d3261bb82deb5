"""Per-unit reconstruction evidence and the selection map reach W&B (asserted on what our wrapper was given)."""

from __future__ import annotations

from typing import Any

from tfmq_exp.stage_results import (
    ActReconstructionReport,
    FeatureSelection,
    MaintenanceReport,
    QuantizationResult,
    ReconstructionReport,
)
from tfmq_exp.tracking.quantization_log import log_quantization
from tfmq_exp.tracking.wandb_run import TrackingRun


class RecordingRun(TrackingRun):
    """Our W&B wrapper with the calls kept instead of sent."""

    def __init__(self) -> None:
        super().__init__(run=None)
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.logged: dict[str, Any] = {}
        self.summarised: dict[str, Any] = {}

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[key] = (columns, rows)

    def log(self, values: dict[str, Any]) -> None:
        self.logged.update(values)

    def summary(self, values: dict[str, Any]) -> None:
        self.summarised.update(values)


def _unit(undecided: float, soft: float, hard: float) -> dict[str, Any]:
    return {"kind": "resnet", "iters": 10, "loss_nearest": 2.0, "loss_soft": soft, "loss_hard": hard,
            "undecided_fraction": undecided, "hard_soft_ratio": hard / soft, "converged": undecided <= 0.01,
            "resumed": False}


def test_units_and_selection_are_logged() -> None:
    units = {"a": _unit(0.0, 1.0, 1.1), "b": _unit(0.2, 1.0, 1.5)}
    act_units = {"a": {"kind": "resnet-act", "iters": 5, "loss_init": 1.0, "loss_final": 0.5, "plateau_ratio": 1.0,
                       "resumed": False}}
    selection = FeatureSelection(
        metric="feature_mse", score="feature_rel_mse", per_timestep=False, choice={"f0": "cache", "f1": "tib"},
        errors={f: {o: {"feature_rel_mse": e} for o, e in (("tib", 0.2), ("cache", 0.1))} for f in ("f0", "f1")},
        cache_bytes=10, full_cache_bytes=20, budget_bytes=None, probe_timestep=1, timesteps=[1, 0],
    )  # fmt: skip
    result = QuantizationResult(
        reconstruction=ReconstructionReport(tiar=False, recon=True, units=units, resumed_units=[], seconds=1.0,
                                            converged=False),
        act_reconstruction=ActReconstructionReport(enabled=True, units=act_units, resumed_units=[], seconds=1.0),
        maintenance=MaintenanceReport(selection=selection),
    )  # fmt: skip
    run = RecordingRun()
    log_quantization(result, run)
    columns, rows = run.tables["reconstruction/units"]
    assert columns[0] == "unit" and [row[0] for row in rows] == ["a", "b"]
    assert rows[1][columns.index("undecided_fraction")] == 0.2
    assert run.logged["reconstruction/converged"] is False
    assert run.logged["reconstruction/undecided_fraction_max"] == 0.2
    assert run.logged["reconstruction/hard_soft_ratio_max"] == 1.5
    assert run.tables["act_reconstruction/units"][1][0][4] == 0.5  # unit, kind, iters, loss_init, loss_final
    assert [row[:3] for row in run.tables["selection/choice"][1]] == [["f0", "all", "cache"], ["f1", "all", "tib"]]
    assert run.summarised["selection/cached_features"] == 1


def test_nothing_is_logged_for_the_fp_reference() -> None:
    run = RecordingRun()
    log_quantization(QuantizationResult(), run)
    assert run.tables == {} and run.logged == {}

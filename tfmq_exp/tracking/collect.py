"""Collect the runs of a sweep from their ``summary.json`` files (no W&B access needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfmq_exp.tracking.summary import SUMMARY_FILE


@dataclass
class RunRecord:
    """One job of a sweep, as its summary describes it."""

    path: Path
    status: str
    model: str
    method: str
    quant: str
    seed: int
    seed_set: int
    calib_seed: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def replicate(self) -> tuple[int, int]:
        """What pairs runs of two methods: the evaluation noise set and the calibration seed."""
        return self.seed_set, self.calib_seed

    @property
    def calibration_s(self) -> float:
        """Seconds spent building the quantized model (capture, reconstruction, calibration, maintenance)."""
        stages = ("capture_s", "quantize_s", "reconstruction_s", "act_calibration_s", "act_reconstruction_s",
                  "maintenance_s")
        return sum(self.timing.get(stage, 0.0) for stage in stages)


def _record(path: Path, summary: dict[str, Any]) -> RunRecord:
    metrics = summary.get("metrics", {})
    config = summary.get("config", {})
    return RunRecord(
        path=path.parent,
        status=summary.get("status", "unknown"),
        model=summary.get("model", config.get("model", {}).get("name", "?")),
        method=summary.get("method", config.get("method", {}).get("name", "?")),
        quant=summary.get("quant", "?"),
        seed=int(summary.get("seed", -1)),
        seed_set=int(metrics.get("seed_set", config.get("eval", {}).get("seed_set", summary.get("seed", -1)))),
        calib_seed=int(config.get("calib", {}).get("seed", -1)),
        metrics=metrics,
        temporal=summary.get("temporal", {}),
        timing=summary.get("timing", {}),
        error=summary.get("error", ""),
    )


def collect_runs(root: str | Path) -> tuple[list[RunRecord], list[RunRecord]]:
    """Return ``(finished, failed)`` runs under ``root``; unreadable summaries count as failed."""
    finished, failed = [], []
    for path in sorted(Path(root).rglob(SUMMARY_FILE)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            failed.append(RunRecord(path.parent, "unreadable", "?", "?", "?", -1, -1, error=str(error)))
            continue
        record = _record(path, summary)
        (finished if record.status == "ok" else failed).append(record)
    return finished, failed

"""End-to-end runs of the real pipeline through the CLI on the embedded digits model (few samples, few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tracking.wandb_records import logged_values

REPO = Path(__file__).resolve().parents[1]
SMALL = ["eval.num_samples=64", "eval.batch_size=64", "eval.trajectory_samples=8", "sampler=ddim20", "runtime.progress=false"]


def run_cli(run_dir: Path, cache: Path, *overrides: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "TFMQ_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", *SMALL, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_fp_run_writes_summary_grid_and_wandb(tmp_path: Path) -> None:
    summary = run_cli(tmp_path / "run", tmp_path / "cache", "method=fp")
    assert summary["status"] == "ok" and summary["method"] == "fp" and summary["model"] == "digits"
    metrics = summary["metrics"]
    for key in ("fid", "kid", "isc", "precision", "recall", "num_samples", "fid_fp"):
        assert key in metrics, key
    assert metrics["num_samples"] == 64 and metrics["fid"] == metrics["fid_fp"]
    assert summary["config"]["method"]["name"] == "fp" and "torch" in summary["versions"]
    assert summary["timing"]["total_s"] > 0 and "fp_reference_s" in summary["timing"]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    logged = logged_values(tmp_path / "run")
    assert logged["metrics/fid"] == pytest.approx(metrics["fid"])


def test_fp_run_is_deterministic_across_cold_caches(tmp_path: Path) -> None:
    first = run_cli(tmp_path / "a", tmp_path / "cache_a", "method=fp", "logger=none")
    second = run_cli(tmp_path / "b", tmp_path / "cache_b", "method=fp", "logger=none")
    assert first["metrics"]["fid"] == second["metrics"]["fid"]
    assert first["metrics"]["kid"] == second["metrics"]["kid"]
    assert not second["fp_reference_cached"]
    third = run_cli(tmp_path / "c", tmp_path / "cache_a", "method=fp", "logger=none")
    assert third["fp_reference_cached"] and third["metrics"]["fid"] == first["metrics"]["fid"]

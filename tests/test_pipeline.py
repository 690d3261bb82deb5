"""End-to-end runs of the real pipeline through the CLI on the embedded digits model (few samples, few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import table_row

REPO = Path(__file__).resolve().parents[1]
SMALL = ["eval.num_samples=64", "eval.batch_size=64", "eval.trajectory_samples=8", "sampler=ddim20", "runtime.progress=false"]


def run_cli_with_output(
    run_dir: Path, cache: Path, *overrides: str, env_extra: dict | None = None
) -> tuple[dict, str]:
    """One CLI run in a fresh process: its ``summary.json`` and what it printed on stdout."""
    env = {**os.environ, "TFMQ_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", *SMALL, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text()), result.stdout


def run_cli(run_dir: Path, cache: Path, *overrides: str, env_extra: dict | None = None) -> dict:
    return run_cli_with_output(run_dir, cache, *overrides, env_extra=env_extra)[0]


def test_fp_run_writes_summary_grid_and_wandb_and_ends_with_the_table(tmp_path: Path) -> None:
    summary, stdout = run_cli_with_output(tmp_path / "run", tmp_path / "cache", "method=fp")
    tail = stdout.strip().splitlines()[-14:]  # the result table (issue 14 item 8) ends a single run
    assert tail[0] == "method=fp, quant=fp32, model=digits, seed=0: ok", stdout[-2000:]
    assert table_row("\n".join(tail), "samples") == [str(tmp_path / "run" / "samples.png")]
    assert tail[-1].split() == ["figures", "-"]  # the FP reference draws no temporal figures
    assert summary["status"] == "ok" and summary["method"] == "fp" and summary["model"] == "digits"
    metrics = summary["metrics"]
    for key in ("fid", "kid", "isc", "precision", "recall", "num_samples", "fid_fp"):
        assert key in metrics, key
    assert metrics["num_samples"] == 64 and metrics["fid"] == metrics["fid_fp"]
    assert summary["config"]["method"]["name"] == "fp" and "torch" in summary["versions"]
    assert summary["timing"]["total_s"] > 0 and "fp_reference_s" in summary["timing"]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    assert list((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))  # a real offline W&B run


@pytest.mark.slow
def test_fp_run_is_deterministic_across_cold_caches(tmp_path: Path) -> None:
    first = run_cli(tmp_path / "a", tmp_path / "cache_a", "method=fp", "logger=none")
    second = run_cli(tmp_path / "b", tmp_path / "cache_b", "method=fp", "logger=none")
    assert first["metrics"]["fid"] == second["metrics"]["fid"]
    assert first["metrics"]["kid"] == second["metrics"]["kid"]
    assert not second["fp_reference_cached"]
    third = run_cli(tmp_path / "c", tmp_path / "cache_a", "method=fp", "logger=none")
    assert third["fp_reference_cached"] and third["metrics"]["fid"] == first["metrics"]["fid"]


TINY_QUANT = ["quant=w4a8", "sampler.num_steps=5", "calib.num_samples=8", "calib.recon_samples=32",
              "method.recon.iters=4", "method.recon.batch_size=8", "method.act_recon.iters=4",
              "method.act_recon.batch_size=8", "eval.num_samples=32", "eval.batch_size=32",
              "eval.trajectory_samples=4", "logger=none"]


@pytest.fixture(scope="module")
def tfmq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """One tiny ``method=tfmq`` run: ``(summary, run directory, cache directory)``."""
    root = tmp_path_factory.mktemp("tfmq_run")
    return run_cli(root / "run", root / "cache", "method=tfmq", *TINY_QUANT), root / "run", root / "cache"


@pytest.mark.parametrize("method", ["tfmq", pytest.param("tfmq_cache", marks=pytest.mark.slow)])
def test_quantized_run_and_its_artifact_give_the_same_numbers(
    tmp_path: Path, method: str, request: pytest.FixtureRequest
) -> None:
    if method == "tfmq":
        first, run_dir, cache = request.getfixturevalue("tfmq_run")
    else:
        run_dir, cache = tmp_path / "run", tmp_path / "cache"
        first = run_cli(run_dir, cache, f"method={method}", *TINY_QUANT)
    assert first["status"] == "ok" and first["quant"] == "w4a8"
    for key in ("capture_s", "reconstruction_s", "act_calibration_s", "sampling_and_metrics_s"):
        assert key in first["timing"], key
    temporal = first["temporal"]
    for key in ("rel_mse_mean", "cos_mean", "cos_min", "mismatch_rate", "trajectory_cos_final", "eps_rel_mse"):
        assert key in temporal, key
    assert 0 < first["model_size"]["ratio"] < 0.3 and first["metrics"]["eps_rel_mse"] > 0
    per_step = first["temporal"]["eps_rel_mse_per_step"]
    assert len(per_step) == len(first["temporal"]["timesteps"]) and all(value > 0 for value in per_step)
    if method == "tfmq_cache":  # the cache serves exactly the quantized FP features: error == quantization bound
        assert first["cache"]["bits"] == 8 and first["cache"]["cache_bytes"] > 0
        assert temporal["rel_mse_mean"] == pytest.approx(temporal["rel_mse_bound_cache"], rel=1e-3)
    again = run_cli(tmp_path / "again", cache, f"method={method}", *TINY_QUANT, f"artifact={run_dir / 'artifact'}")
    assert again["metrics"]["fid"] == first["metrics"]["fid"]
    assert again["temporal"]["rel_mse_mean"] == first["temporal"]["rel_mse_mean"]
    assert "reconstruction_s" not in again["timing"]


def test_artifact_for_another_config_fails_in_one_line(tmp_path: Path, tfmq_run: tuple[dict, Path, Path]) -> None:
    _, run_dir, cache = tfmq_run
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", "method=tfmq", *TINY_QUANT, "quant=w8a8",
         f"artifact={run_dir / 'artifact'}", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "TFMQ_CACHE_DIR": str(cache)},
        timeout=600,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfmq-exp: error:")]
    assert len(errors) == 1 and "quant.w_bits" in errors[0], result.stderr[-2000:]


def test_missing_artifact_fails_in_one_line_before_any_sampling(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", "method=naive", *TINY_QUANT, f"artifact={tmp_path / 'nowhere'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "TFMQ_CACHE_DIR": str(tmp_path / "cache")},
        timeout=600,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfmq-exp: error:")]
    assert len(errors) == 1 and "artifact.json is missing" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "cache" / "fp_reference").exists()

"""Honest exits (issue 14 item 7): a sweep with a failed job exits non-zero and names it; only configuration
errors become one-line usage errors; an internal error keeps its traceback and its summary says failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tfmq_exp import cli
from tfmq_exp.config.schema import register_configs
from tfmq_exp.tracking.summary import write_summary
from tfmq_exp.tracking.sweep_exit import EXIT_JOBS_FAILED, SweepExitCallback, failed_jobs

FAST = ["method=fp", "eval.num_samples=16", "eval.batch_size=16", "sampler.num_steps=5", "runtime.progress=false",
        "logger=none"]


def _fake_sweep(root: Path) -> None:
    write_summary(root / "method=fp,seed=0", {"status": "ok", "metrics": {"fid": 1.0}})
    write_summary(root / "method=fp,seed=1", {"status": "failed", "error": "MissingWeightsError: no weights\nat all"})


def test_failed_jobs_reads_every_summary_of_the_sweep(tmp_path: Path) -> None:
    _fake_sweep(tmp_path)
    jobs, failed = failed_jobs(tmp_path)
    assert jobs == 2
    assert [(job.name, job.error) for job in failed] == [
        ("method=fp,seed=1", "MissingWeightsError: no weights\nat all")
    ]


def test_callback_lists_the_failed_job_and_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback = SweepExitCallback()
    callback.on_multirun_start(config)
    _fake_sweep(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        callback.on_multirun_end(config)
    assert exit_info.value.code == EXIT_JOBS_FAILED != 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"tfmq-exp: 1 of 2 jobs failed in {tmp_path}:",
                     "  method=fp,seed=1: MissingWeightsError: no weights at all"]


def test_callback_is_silent_when_every_job_of_this_sweep_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_summary(tmp_path / "old", {"status": "failed", "error": "an earlier sweep into the same directory"})
    stale = time.time() - 3600
    os.utime(tmp_path / "old" / "summary.json", (stale, stale))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback = SweepExitCallback()
    callback.on_multirun_start(config)
    write_summary(tmp_path / "new", {"status": "ok"})
    callback.on_multirun_end(config)  # no SystemExit
    assert capsys.readouterr().err == ""


# basic: the jobs one after another in this process; local: joblib worker processes (slower to start).
@pytest.mark.parametrize("launcher", ["basic", pytest.param("local", marks=pytest.mark.slow)])
def test_a_sweep_with_a_failed_job_exits_non_zero_and_the_other_job_finishes(tmp_path: Path, launcher: str) -> None:
    (tmp_path / "empty").mkdir()
    sweep = tmp_path / "sweep"
    env = {**os.environ, "TFMQ_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "TFMQ_JOBS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", "--multirun", *FAST, "model.path=empty,null", f"hydra/launcher={launcher}",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr[-3000:]
    listed = [line.strip() for line in result.stderr.splitlines() if "model.path=" in line and "Error" in line]
    assert len(listed) == 1 and "model.path=empty" in listed[0] and "MissingWeightsError" in listed[0], result.stderr
    assert "1 of 2 jobs failed" in result.stderr
    summaries = {path.parent.name: json.loads(path.read_text()) for path in sweep.rglob("summary.json")}
    (ok,) = [s for name, s in summaries.items() if "model.path=null" in name]
    (failed,) = [s for name, s in summaries.items() if "model.path=empty" in name]
    assert ok["status"] == "ok" and ok["metrics"]["fid"] > 0
    assert failed["status"] == "failed" and failed["error"].startswith("MissingWeightsError")


@pytest.fixture()
def composed(conf_dir: Path):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


def test_a_job_that_fails_before_the_pipeline_is_recorded_as_failed(composed, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. a sweep value from an experiment file out of range: the job records it; the sweep goes on."""
    cfg = composed(*FAST, "runtime.threads=1", "quant.w_bits=0")
    write_summary(tmp_path, {"status": "ok"})  # left by an earlier sweep into the same directory
    monkeypatch.setattr(cli, "_in_multirun", lambda: True)
    monkeypatch.setattr("hydra.core.hydra_config.HydraConfig.get",
                        lambda: SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path))))
    assert cli.run_task(cfg) is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "quant.w_bits=0 is out of range" in summary["error"]


def test_an_internal_error_in_a_single_run_keeps_its_traceback_and_the_summary_says_failed(
    composed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tfmq_exp.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    cfg = composed(*FAST, "runtime.threads=1")
    monkeypatch.chdir(tmp_path)  # outside Hydra the run directory is the working directory
    monkeypatch.setattr(tfmq_exp.pipeline, "_run_stages", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):  # re-raised, not turned into a usage line
        cli.run_task(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: an internal bug"


def test_configuration_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "out of range" in cli.validate_arguments(["quant.w_bits=0"])
    assert "valid choices for 'method'" in cli.validate_arguments(["method=nosuch"])
    assert cli.validate_arguments(["--multirun", "method=fp,"])  # a syntax error in the sweep
    assert cli.validate_arguments(["seed=abc"])  # a wrong type
    assert cli.validate_arguments(["method=fp"]) is None

    def buggy(cfg):
        raise TypeError("a bug in validation")

    monkeypatch.setattr(cli, "to_config", buggy)
    with pytest.raises(TypeError, match="a bug in validation"):
        cli.validate_arguments(["method=fp"])


def test_a_bug_inside_a_resolver_is_not_a_usage_error() -> None:
    OmegaConf.register_new_resolver("tfmq_test_broken", lambda: 1 // 0, replace=True)
    try:
        with pytest.raises(Exception) as error_info:
            cli.validate_arguments(["seed=${tfmq_test_broken:}"])
    finally:
        OmegaConf.clear_resolver("tfmq_test_broken")
    assert not cli.is_config_error(error_info.value)
    missing_variable = cli.validate_arguments(["seed=${oc.env:TFMQ_TEST_UNSET}"])  # the user's environment
    assert "environment variable 'tfmq_test_unset'" in missing_variable.lower()

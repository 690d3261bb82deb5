"""A real offline W&B run holds what the tracker logged (read through W&B's public ``Run.summary``, which keeps
the last logged value of every key; W&B's private run-file format is not parsed)."""

from __future__ import annotations

from pathlib import Path

from tfmq_exp.config.schema import Config, LoggerConfig, MethodConfig, ModelConfig, QuantConfig
from tfmq_exp.tracking.wandb_run import run_tags, start_run


def _config(mode: str = "offline") -> Config:
    return Config(
        model=ModelConfig(name="digits"),
        quant=QuantConfig(name="w4a8", w_bits=4, a_bits=8),
        method=MethodConfig(name="tfmq"),
        logger=LoggerConfig(mode=mode),
    )


def test_offline_run_contains_logged_metrics(tmp_path: Path) -> None:
    run = start_run(_config(), {"method": {"name": "tfmq"}}, tmp_path, group="sweep-1")
    assert run.enabled
    run.log({"metrics/fid": 0.25, "temporal/rel_mse_mean": 1e-3})
    run.summary({"fid": 0.25})
    values = dict(run.run.summary)
    run.finish()
    assert values["metrics/fid"] == 0.25
    assert values["temporal/rel_mse_mean"] == 1e-3
    assert values["fid"] == 0.25
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_tags_name_method_bits_model_seed() -> None:
    tags = run_tags(_config())
    assert {"method:tfmq", "quant:w4a8", "w4", "a8", "model:digits", "seed:0"} <= set(tags)


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    run = start_run(_config(mode="disabled"), {}, tmp_path)
    run.log({"x": 1})
    run.finish()
    assert not run.enabled and not list(tmp_path.iterdir())

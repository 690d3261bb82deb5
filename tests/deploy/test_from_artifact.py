"""A calibrated project model, saved as a run's artifact, lowered to int8 matches its own fake-quant output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tfmq_exp.config import register_configs
from tfmq_exp.config.validate import to_config
from tfmq_exp.deploy.from_artifact import benchmark_artifact, load_calibrated
from tfmq_exp.errors import UserError
from tfmq_exp.paths import config_dir
from tfmq_exp.pipeline import run_pipeline


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    overrides = ["method=naive", "quant=w8a8", "sampler.num_steps=4", "calib.num_samples=8", "eval.num_samples=16",
                 "eval.batch_size=16", "eval.trajectory_samples=2", "eval.kid_subset_size=8", "logger=none",
                 "runtime.progress=false", f"runtime.cache_dir={root / 'cache'}"]  # fmt: skip
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_pipeline(cfg, to_config(cfg), run_dir=root / "run")
    return root / "run" / "artifact"


def test_lowered_artifact_matches_its_fake_quant_model(artifact: Path) -> None:
    result = benchmark_artifact(artifact, batch_size=2, repeats=1, compile=False)
    assert result["sqnr_db_vs_fake_quant"] >= 30.0, result
    if "int8_openvino" in result["median_ms"]:  # the ONNX paths of the same parameters (deploy extra installed)
        assert set(result["sqnr_db_vs_fake_quant_per_variant"]) == {"int8", "int8_ort", "int8_openvino"}
        assert min(result["sqnr_db_vs_fake_quant_per_variant"].values()) >= 30.0, result
    assert result["lowered_layers"] > 0 and result["model"] == "digits" and result["quant"] == "w8a8"
    unet_q, unet_fp, config = load_calibrated(artifact)
    assert config.method.name == "naive" and unet_q is not unet_fp
    assert any(not torch.equal(a, b) for a, b in zip(unet_q.state_dict().values(), unet_fp.state_dict().values()))


def test_not_an_artifact_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a quantized artifact"):
        load_calibrated(tmp_path)

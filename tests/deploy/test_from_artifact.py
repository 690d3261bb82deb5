"""A calibrated project model, saved as a run's artifact, lowered to int8 matches its own fake-quant output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.deploy.helpers import make_artifact
from tfmq_exp.deploy.from_artifact import benchmark_artifact, load_calibrated
from tfmq_exp.errors import UserError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("run"), "naive")


def test_lowered_artifact_matches_its_fake_quant_model(artifact: Path) -> None:
    result = benchmark_artifact(artifact, batch_size=2, repeats=1, compile=False)
    assert result["sqnr_db_vs_fake_quant"] >= 30.0, result
    if "int8_openvino" in result["median_ms"]:  # the ONNX paths of the same parameters (deploy extra installed)
        assert set(result["sqnr_db_vs_fake_quant_per_variant"]) == {"int8", "int8_ort", "int8_openvino"}
        assert result["kind"] == "static" and result["groups"] is None
        assert min(result["sqnr_db_vs_fake_quant_per_variant"].values()) >= 30.0, result
    assert result["lowered_layers"] > 0 and result["model"] == "digits" and result["quant"] == "w8a8"
    unet_q, unet_fp, config = load_calibrated(artifact)
    assert config.method.name == "naive" and unet_q is not unet_fp
    assert any(not torch.equal(a, b) for a, b in zip(unet_q.state_dict().values(), unet_fp.state_dict().values()))


def test_not_an_artifact_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a quantized artifact"):
        load_calibrated(tmp_path)

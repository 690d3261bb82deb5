"""Typed stage results: the JSON they write, read back, and what an artifact gives back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.helpers import composed_config, quantize_digits
from tfmq_exp.ptq import ARTIFACT_DIR, load_quantized
from tfmq_exp.stage_results import (
    ActReconstructionReport,
    CacheReport,
    CalibrationReport,
    FeatureSelection,
    MaintenanceReport,
    ModelSize,
    QuantizationResult,
    QuantizedLayers,
    ReconstructionReport,
    TimeEmbeddingSelection,
    selection_from_dict,
)
from tfmq_exp.timing import StageTimer


def _unit(converged: bool | None) -> dict:
    entry = {"kind": "resnet", "layers": ["conv1"], "loss_hard": 0.5, "resumed": False}
    return entry if converged is None else {**entry, "converged": converged}


def _cache(scope: str = "features") -> CacheReport:
    specific = (dict(features={"f0": {"channels": 8, "cached_timesteps": 2}}, tib_skipped_timesteps=2)
                if scope == "features" else dict(conditioning_modules=["class_embedding"]))  # fmt: skip
    return CacheReport(
        scope=scope, bits=8, timesteps=2, fallback=False, modules=1, cache_bytes=32, code_bytes=16, param_bytes=16,
        stored_bytes=40, **specific, tib_parameters=100, tib_macs_per_step=90, removed_parameters=100,
        removed_macs_per_step=45.0, removed_flops_per_step=90.0,
    )  # fmt: skip


def _selection(per_timestep: bool) -> FeatureSelection:
    return FeatureSelection(
        metric="feature_mse", score="feature_rel_mse", per_timestep=per_timestep,
        choice={"f0": {"1": "cache", "0": "tib"}} if per_timestep else {"f0": "cache"},
        errors={"f0": {"tib": {"feature_rel_mse": 0.2}, "cache": {"feature_rel_mse": 0.1}}}, cache_bytes=32,
        full_cache_bytes=64, budget_bytes=None, probe_timestep=None, timesteps=[1, 0],
        errors_per_timestep={"f0": {"tib": {"feature_rel_mse": [0.2, 0.3]}}} if per_timestep else None,
    )  # fmt: skip


def _full_result() -> QuantizationResult:
    return QuantizationResult(
        calibration=CalibrationReport(cache_hit=False, steps=4, samples=8),
        quantization=QuantizedLayers(layers=12),
        maintenance=MaintenanceReport(cache=_cache(), selection=_selection(per_timestep=True)),
        reconstruction=ReconstructionReport(tiar=True, recon=True, units={"tib": _unit(True)}, resumed_units=[],
                                            seconds=1.5, converged=True),
        act_reconstruction=ActReconstructionReport(enabled=True, units={"b": {"loss_final": 0.1}},
                                                   resumed_units=["b"], seconds=0.5),
        model_size=ModelSize(bits=1000, fp_bits=4000, ratio=0.25, quantized_parameters=100, cache_bytes=32),
        artifact="/runs/x/artifact",
    )  # fmt: skip


RECORDS = [
    CalibrationReport(cache_hit=True, steps=50, samples=128),
    QuantizedLayers(layers=3),
    _cache("features"),
    _cache("time_embedding"),
    _selection(per_timestep=False),
    _selection(per_timestep=True),
    TimeEmbeddingSelection(metric="feature_cos", choice="tib", errors={"tib": {"rel_mse": 0.1}}, pairs=16),
    MaintenanceReport(),
    MaintenanceReport(cache=_cache("time_embedding"),
                      selection=TimeEmbeddingSelection(metric="feature_mse", choice="cache", errors={}, pairs=4)),
    ReconstructionReport(tiar=False, recon=True, units={"a": _unit(False)}, resumed_units=["a"], seconds=2.0,
                         converged=False),
    ActReconstructionReport(enabled=True, units={}, resumed_units=[]),
    ModelSize(bits=10, fp_bits=20, ratio=0.5, quantized_parameters=1, cache_bytes=0),
    QuantizationResult(),
    _full_result(),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_every_record_reads_back_from_its_json(record) -> None:
    written = json.loads(json.dumps(record.to_dict()))  # what summary.json and meta.json hold
    assert type(record).from_dict(written) == record
    assert type(record).from_dict(written).to_dict() == written


def test_the_summary_sections_keep_their_names_and_order() -> None:
    result = _full_result().to_dict()
    # the maintenance's sections sit at the top level, between the quantization and the reconstruction
    assert list(result) == ["calibration", "quantization", "cache", "selection", "reconstruction",
                            "act_reconstruction", "model_size", "artifact"]
    assert result["calibration"] == {"cache_hit": False, "steps": 4, "samples": 8}
    assert list(result["reconstruction"]) == ["tiar", "recon", "units", "resumed_units", "seconds", "converged"]
    assert list(result["model_size"]) == ["bits", "fp_bits", "ratio", "quantized_parameters", "cache_bytes"]
    assert list(result["cache"])[:9] == ["scope", "bits", "timesteps", "fallback", "modules", "cache_bytes",
                                          "code_bytes", "param_bytes", "stored_bytes"]
    assert "conditioning_modules" not in result["cache"]  # the time embedding's field, absent for features
    assert result["selection"]["probe_timestep"] is None and result["selection"]["budget_bytes"] is None  # kept
    assert QuantizationResult().to_dict() == {}


def test_stages_that_did_not_run_are_left_out() -> None:
    result = dataclasses.replace(_full_result(), maintenance=MaintenanceReport(), act_reconstruction=None, artifact=None)
    assert set(result.to_dict()) == {"calibration", "quantization", "reconstruction", "model_size"}
    assert "seconds" not in ActReconstructionReport(enabled=False, units={}, resumed_units=[]).to_dict()
    assert "errors_per_timestep" not in _selection(per_timestep=False).to_dict()


def test_the_two_selection_kinds_are_told_apart_by_their_scope() -> None:
    time_embedding = TimeEmbeddingSelection(metric="feature_mse", choice="tib", errors={}, pairs=2)
    assert list(time_embedding.to_dict()) == ["scope", "metric", "choice", "errors", "pairs"]
    assert selection_from_dict(time_embedding.to_dict()) == time_embedding
    assert selection_from_dict(_selection(False).to_dict()) == _selection(False)


def test_reconstruction_merges_its_two_phases() -> None:
    tiar = {"tiar": True, "recon": True, "units": {"tib": _unit(True)}, "resumed_units": ["tib"], "seconds": 1.0}
    blocks = {"tiar": True, "recon": True, "units": {"b0": _unit(None), "b1": _unit(False)}, "resumed_units": [],
              "seconds": 2.5}
    merged = ReconstructionReport.from_phases(tiar, blocks)
    assert list(merged.units) == ["tib", "b0", "b1"] and merged.resumed_units == ["tib"] and merged.seconds == 3.5
    assert merged.converged is False  # b1 did not converge
    blocks["units"].pop("b1")
    assert ReconstructionReport.from_phases(tiar, blocks).converged is True  # a unit without the flag counts as converged


def test_maintenance_reports_the_cache_bytes_it_adds() -> None:
    assert MaintenanceReport().cache_bytes == 0
    assert MaintenanceReport(cache=_cache()).cache_bytes == 32


@pytest.mark.parametrize("method", ["tfmq_select", "qdiffusion"])
def test_the_result_read_back_from_a_saved_artifact_equals_the_one_written(conf_dir, tmp_path, method: str) -> None:
    config = composed_config(conf_dir, tmp_path / "cache", f"method={method}", "save_artifact=true")
    unet_fp, quantized = quantize_digits(config, tmp_path / "run")
    written = quantized.result
    assert written.artifact == str(tmp_path / "run" / ARTIFACT_DIR)
    assert written.reconstruction is not None and written.model_size is not None and written.calibration is not None
    if method == "tfmq_select":
        assert written.maintenance.selection is not None and written.act_reconstruction is None
    else:
        assert written.act_reconstruction is not None and written.act_reconstruction.units
    loaded = load_quantized(unet_fp, dataclasses.replace(config, artifact=written.artifact), StageTimer())
    assert loaded.result == written

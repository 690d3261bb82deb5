"""Resumable reconstruction: per-unit checkpoints, seeded units, a killed run ends identical to an
uninterrupted one; the LightningModule follows the rounding schedule and is seeded per unit."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.calib.helpers import make_config, quantized_copy
from tests.recon.resume_config import RESUME_PATTERNS, resume_config
from tfmq_exp.quant import RoundingSchedule
from tfmq_exp.recon import (
    BlockOutputObjective,
    CallTemplate,
    ReconstructionModule,
    RoundingRegulariser,
    UnitDataset,
    fit_unit,
    reconstruct,
)
from tfmq_exp.store import file_sha256

REPO = Path(__file__).resolve().parents[2]
UNITS = ["tib", "down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "down_blocks.1.attentions.0",
         "mid_block.attentions.0"]


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """An uninterrupted run: final state dict, report, checkpoint directory."""
    unet, data = digits
    directory = tmp_path_factory.mktemp("reference")
    config = resume_config(directory)
    unet_q = quantized_copy(unet, config)
    report = reconstruct(unet_q, unet, config, data, directory / "checkpoints")
    return {k: v.clone() for k, v in unet_q.state_dict().items()}, report, directory / "checkpoints"


def _assert_same_state(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(state[key], expected[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _resume(digits, directory: Path) -> tuple[dict, dict]:
    unet, data = digits
    config = resume_config(directory)
    unet_q = quantized_copy(unet, config)
    report = reconstruct(unet_q, unet, config, data, directory)
    return unet_q.state_dict(), report


def _copy_checkpoints(source: Path, target: Path, keep: int) -> None:
    """Copy the first ``keep`` units' checkpoints and a manifest that lists only them."""
    target.mkdir(parents=True)
    manifest = json.loads((source / "manifest.json").read_text())
    kept = sorted(manifest["units"])[:keep]
    for name in kept:
        shutil.copy(source / name, target / name)
    manifest["units"] = {name: manifest["units"][name] for name in kept}
    (target / "manifest.json").write_text(json.dumps(manifest))


def test_uninterrupted_run_checkpoints_every_unit(reference) -> None:
    _, report, directory = reference
    assert list(report["units"]) == UNITS and report["resumed_units"] == []
    names = sorted(path.name for path in directory.glob("*.safetensors"))
    assert names == [f"{index:03d}_{name}.safetensors" for index, name in enumerate(UNITS)]
    codes = load_file(str(directory / names[0]))
    assert "down_blocks.0.resnets.0.time_emb_proj.weight_quantizer.weight_codes" in codes  # frozen TIAR rounding


def test_resume_loads_valid_checkpoints_and_matches_the_uninterrupted_run(digits, reference, tmp_path: Path) -> None:
    expected, expected_report, source = reference
    _copy_checkpoints(source, tmp_path / "partial", keep=2)
    state, report = _resume(digits, tmp_path / "partial")
    assert report["resumed_units"] == UNITS[:2]
    assert [entry["resumed"] for entry in report["units"].values()] == [True, True, False, False, False]
    assert report["units"]["tib"]["loss_final"] == expected_report["units"]["tib"]["loss_final"]
    _assert_same_state(state, expected)


def test_invalid_checkpoints_are_recomputed(digits, reference, tmp_path: Path, caplog) -> None:
    expected, _, source = reference
    corrupt = tmp_path / "corrupt"
    shutil.copytree(source, corrupt)
    path = corrupt / f"001_{UNITS[1]}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tfmq_exp.recon"):
        state, report = _resume(digits, corrupt)
    assert "checksum mismatch" in caplog.text
    assert report["resumed_units"] == [UNITS[0]] + UNITS[2:]
    _assert_same_state(state, expected)

    # A checkpoint with the right checksum but a state that does not fit the unit is rejected and redone.
    misfit = tmp_path / "misfit"
    shutil.copytree(source, misfit)
    path = misfit / f"002_{UNITS[2]}.safetensors"
    state = load_file(str(path))
    del state[f"{UNITS[2]}.conv2.weight_quantizer.weight_codes"]
    save_file(state, str(path))
    manifest = json.loads((misfit / "manifest.json").read_text())
    manifest["units"][path.name]["sha256"] = file_sha256(path)
    (misfit / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfmq_exp.recon"):
        state, report = _resume(digits, misfit)
    assert "does not fit" in caplog.text and UNITS[2] not in report["resumed_units"]
    _assert_same_state(state, expected)

    other = tmp_path / "other_setup"
    shutil.copytree(source, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["setup_key"] = "from-another-config"
    (other / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfmq_exp.recon"):
        state, report = _resume(digits, other)
    assert "another setup" in caplog.text and report["resumed_units"] == []
    _assert_same_state(state, expected)


def test_checkpoints_serve_every_activation_setting(digits, reference, tmp_path: Path, caplog) -> None:
    """W4A8 checkpoints load unchanged into a W4A32 model (no activation or attention quantizers at all)."""
    expected, _, source = reference
    shutil.copytree(source, tmp_path / "shared")
    unet, data = digits
    config = make_config(tmp_path, tiar=True, recon=True, iters=30, lr=5e-3, quant_patterns=RESUME_PATTERNS, seed=5,
                         a_bits=None)
    unet_q = quantized_copy(unet, config)
    with caplog.at_level(logging.WARNING, logger="tfmq_exp.recon"):
        report = reconstruct(unet_q, unet, config, data, tmp_path / "shared")
    assert report["resumed_units"] == UNITS and "does not fit" not in caplog.text
    state = unet_q.state_dict()
    weights = [key for key in state if "weight_quantizer" in key or key.endswith((".weight", ".bias"))]
    assert weights and all(torch.equal(state[key], expected[key]) for key in weights)


@pytest.mark.slow
def test_killed_subprocess_resumes_to_identical_weights(digits, reference, recon_cache: Path, tmp_path: Path) -> None:
    expected, _, _ = reference
    checkpoints = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def child(kill_after: int) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tests.recon.resume_child", str(recon_cache), str(checkpoints),
                   str(tmp_path / "final"), str(kill_after)]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    killed = child(kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = list(json.loads((checkpoints / "manifest.json").read_text())["units"])
    assert 2 <= len(finished) < len(UNITS) and not (tmp_path / "final.json").exists()

    resumed = child(kill_after=0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "final.json").read_text())
    assert report["resumed_units"] == UNITS[: len(finished)]
    _assert_same_state(load_file(str(tmp_path / "final.safetensors")), expected)


def test_module_follows_the_rounding_schedule_and_is_seeded(digits, tmp_path: Path) -> None:
    unet, _ = digits
    config = resume_config(tmp_path)
    name = "down_blocks.0.resnets.0.time_emb_proj"
    inputs = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = unet.get_submodule(name)(inputs)
    dataset = UnitDataset({"arg0": inputs}, target)

    def fit(seed: int) -> tuple[ReconstructionModule, torch.Tensor]:
        layer = quantized_copy(unet, config).get_submodule(name)
        layer.set_quant_state(weight=True, act=False)
        layer.weight.requires_grad_(False)
        (alpha,) = layer.enable_adaround(soft=True)
        start = alpha.detach().clone()
        regulariser = RoundingRegulariser(RoundingSchedule(iters=20, warmup=0.25), [layer.weight_quantizer], 0.01)
        module = ReconstructionModule(layer, BlockOutputObjective(CallTemplate(1, [], {})), regulariser, [alpha], 1e-2)
        fit_unit(module, dataset, iters=20, batch_size=8, seed=seed)
        assert not torch.equal(alpha.detach(), start)
        return module, alpha.detach().clone()

    module, alpha = fit(seed=3)
    assert len(module.losses) == 20
    assert module.regulariser_losses[:5] == [0.0] * 5 and min(module.regulariser_losses[5:]) > 0
    assert module.losses[-1] < module.losses[0]
    assert torch.equal(fit(seed=3)[1], alpha) and not torch.equal(fit(seed=4)[1], alpha)

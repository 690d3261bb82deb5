"""Reconstruction: BRECQ lowers each unit's error below round-to-nearest; TIAR lowers the temporal-feature
error and later units keep its rounding; everything ends frozen; nothing happens without reconstruction."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.calib.helpers import make_config, quantized_copy
from tfmq_exp.calib import quant_state
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import adaround_parameters, iter_quant_modules
from tfmq_exp.recon import reconstruct

TIB_AND_FIRST_BLOCK = ["time_embedding.*", "*.time_emb_proj", "down_blocks.0.*"]


def _roundings(model: torch.nn.Module) -> dict[str, str]:
    return {name: module.weight_quantizer.rounding for name, module in iter_quant_modules(model)}


def _network_error(unet_q: torch.nn.Module, unet_fp: torch.nn.Module, data) -> float:
    """MSE of the UNet output (weights quantized, activations FP) against FP over every calibration input."""
    x = data.x.flatten(0, 1)
    timesteps = torch.tensor(data.timesteps).repeat_interleave(data.num_samples)
    with torch.no_grad(), quant_state(unet_q, weight=True, act=False):
        return float((unet_q(x, timesteps).sample - unet_fp(x, timesteps).sample).pow(2).mean())


def _temporal_error(unet_q: torch.nn.Module, unet_fp: torch.nn.Module, timesteps: list[int]) -> float:
    """``mean_t sum_i ||e_i(t) - e_hat_i(t)||^2`` with quantized weights and FP activations."""
    with torch.no_grad(), quant_state(unet_q, weight=True, act=False):
        reference = get_adapter(unet_fp).temporal_features(timesteps)
        quantized = get_adapter(unet_q).temporal_features(timesteps)
    return float(sum((quantized[name] - reference[name]).pow(2).sum(dim=1) for name in reference).mean())


def test_brecq_lowers_every_unit_error_below_round_to_nearest(digits, tmp_path: Path) -> None:
    unet, data = digits
    config = make_config(tmp_path, recon=True, iters=100, lr=5e-3, quant_patterns=["down_blocks.1.*"])
    unet_q, nearest = quantized_copy(unet, config), quantized_copy(unet, config)
    report = reconstruct(unet_q, unet, config, data, tmp_path / "checkpoints")

    json.dumps(report)  # JSON-serialisable
    assert list(report["units"]) == ["down_blocks.1.resnets.0", "down_blocks.1.attentions.0"]
    assert report["resumed_units"] == []
    for entry in report["units"].values():
        assert entry["iters"] == 100 and entry["samples"] == 32 and not entry["resumed"]
        assert entry["loss_final"] < 0.9 * entry["loss_nearest"]
        assert entry["regulariser_last_step"] > 0
    assert report["units"]["down_blocks.1.resnets.0"]["layers"] == [
        "down_blocks.1.resnets.0.conv1", "down_blocks.1.resnets.0.time_emb_proj", "down_blocks.1.resnets.0.conv2"
    ]
    # Every reconstructed layer ends hard-rounded and frozen; nothing is left to optimise.
    assert set(_roundings(unet_q).values()) == {"frozen"} and adaround_parameters(unet_q) == []
    # Switches and gradient flags are as before.
    assert all(module.use_weight_quant for _, module in iter_quant_modules(unet_q))
    assert all(parameter.requires_grad for parameter in unet_q.parameters())
    # The whole network is closer to full precision than with round-to-nearest.
    assert _network_error(unet_q, unet, data) < 0.9 * _network_error(nearest, unet, data)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        "000_down_blocks.1.resnets.0.safetensors", "001_down_blocks.1.attentions.0.safetensors", "manifest.json"
    ]


def test_tiar_lowers_temporal_error_and_later_units_keep_its_rounding(digits, tmp_path: Path) -> None:
    unet, data = digits
    tiar_only = make_config(tmp_path, tiar=True, iters=100, lr=5e-3, quant_patterns=TIB_AND_FIRST_BLOCK)
    unet_tiar, nearest = quantized_copy(unet, tiar_only), quantized_copy(unet, tiar_only)
    report = reconstruct(unet_tiar, unet, tiar_only, data, tmp_path / "tiar")
    (entry,) = report["units"].values()
    assert entry["name"] == "tib" and entry["kind"] == "tiar" and len(entry["layers"]) == 9
    assert entry["samples"] == len(data.timesteps)  # the finite timestep set, all of it
    assert entry["loss_final"] < 0.7 * entry["loss_nearest"]
    before, after = _temporal_error(nearest, unet, data.timesteps), _temporal_error(unet_tiar, unet, data.timesteps)
    assert after < 0.7 * before
    assert abs(after - entry["loss_final"]) < 1e-3 * after  # the report measures the same quantity
    tib_layers = entry["layers"]
    assert {name for name, rounding in _roundings(unet_tiar).items() if rounding == "frozen"} == set(tib_layers)

    both = make_config(tmp_path, tiar=True, recon=True, iters=100, lr=5e-3, quant_patterns=TIB_AND_FIRST_BLOCK)
    unet_both = quantized_copy(unet, both)
    report = reconstruct(unet_both, unet, both, data, tmp_path / "both")
    # The time-embedding MLP's unit and the ResNets' projections belong to TIAR; only conv1 / conv2 remain.
    assert list(report["units"]) == ["tib", "down_blocks.0.resnets.0"]
    assert report["units"]["down_blocks.0.resnets.0"]["layers"] == [
        "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2"
    ]
    for name in tib_layers:  # the later unit left TIAR's rounding untouched
        codes = unet_both.get_submodule(name).weight_quantizer.weight_codes
        assert torch.equal(codes, unet_tiar.get_submodule(name).weight_quantizer.weight_codes)
    assert set(_roundings(unet_both).values()) == {"frozen"}


def test_nothing_happens_without_reconstruction(digits, tmp_path: Path) -> None:
    unet, data = digits
    config = make_config(tmp_path, fsc=True)  # naive / fsc-only: weights stay round-to-nearest
    unet_q = quantized_copy(unet, config)
    state = {key: value.clone() for key, value in unet_q.state_dict().items()}
    report = reconstruct(unet_q, unet, config, data, tmp_path / "checkpoints")
    assert report["units"] == {} and report["resumed_units"] == []
    assert set(_roundings(unet_q).values()) == {"nearest"}
    after = unet_q.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in state.items())

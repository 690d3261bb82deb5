"""Q-Diffusion's activation pass: step sizes learned per unit lower the unit's error with quantized activations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.calib.helpers import make_config, quantized_copy
from tfmq_exp.calib import calibrate_activations
from tfmq_exp.config.schema import ActReconConfig
from tfmq_exp.quant import TimestepContext, attach_timestep_context, iter_act_quantizers
from tfmq_exp.recon import reconstruct
from tfmq_exp.recon.act_pass import plan_act_units, reconstruct_activations


def _prepared(unet, data, tmp_path: Path, iters: int = 40):
    config = make_config(tmp_path, recon=True, iters=20, lr=3e-2, a_bits=4, quant_patterns=["down_blocks.1.*"])
    config.method = dataclasses.replace(config.method, act_recon=ActReconConfig(enabled=True, iters=iters, lr=4e-4))
    unet_q = quantized_copy(unet, config)
    context = TimestepContext()
    attach_timestep_context(unet_q, context)
    reconstruct(unet_q, unet, config, data, tmp_path / "weights")
    calibrate_activations(unet_q, data, context, None)
    return config, unet_q, context


def _scales(unet_q) -> dict[str, torch.Tensor]:
    return {name: q.scale.clone() for name, q in iter_act_quantizers(unet_q) if not q.is_identity}


def test_the_pass_lowers_each_unit_error_below_its_initialisation(digits, tmp_path: Path) -> None:
    unet, data = digits
    config, unet_q, context = _prepared(unet, data, tmp_path)
    before = _scales(unet_q)
    report = reconstruct_activations(unet_q, unet, config, data, tmp_path / "act", context=context)
    assert set(report["units"]) == {"down_blocks.1.resnets.0", "down_blocks.1.attentions.0"}
    for entry in report["units"].values():
        assert entry["loss_final"] < entry["loss_init"], entry
        assert entry["iters"] == 40 and entry["p"] == 2.4 and not entry["resumed"]
    after = _scales(unet_q)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    # Step sizes are buffers again (nothing left to optimise) and quantization still works.
    assert all(not isinstance(q.scale, torch.nn.Parameter) for _, q in iter_act_quantizers(unet_q))

    # A rerun loads the checkpoints: same step sizes, nothing optimised again.
    _, again, context_again = _prepared(unet, data, tmp_path)
    resumed = reconstruct_activations(again, unet, config, data, tmp_path / "act", context=context_again)
    assert resumed["resumed_units"] == list(report["units"])
    assert all(torch.equal(value, _scales(again)[name]) for name, value in after.items())


def test_the_pass_refuses_per_timestep_quantizers(digits, tmp_path: Path) -> None:
    unet, data = digits
    config, unet_q, context = _prepared(unet, data, tmp_path)
    from tfmq_exp.quant import enable_per_timestep

    enable_per_timestep(unet_q.get_submodule("down_blocks.1.resnets.0"), data.timesteps, context)
    with pytest.raises(ValueError, match="per-timestep"):
        plan_act_units(unet_q, unet)


def test_fsc_with_the_pass_is_a_config_error() -> None:
    from tfmq_exp.config.schema import MethodConfig

    with pytest.raises(ValueError, match="act_recon"):
        MethodConfig(name="x", fsc=True, act_recon=ActReconConfig(enabled=True))

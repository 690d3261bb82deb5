"""Activation calibration over all steps in a Lightning predict loop; FSC per-timestep ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.calib.helpers import digits_unet, make_config, quantized_copy
from tfmq_exp.calib import CalibrationData, calibrate_activations, fsc_modules, load_or_capture, quant_state
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import (
    QuantModule,
    TimestepContext,
    attach_timestep_context,
    iter_act_quantizers,
    iter_quant_modules,
    range_to_qparams,
    set_quant_state,
)
from tfmq_exp.store import ArtifactStore


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, CalibrationData]:
    root = tmp_path_factory.mktemp("activation")
    unet = digits_unet(seed=0)
    data, _ = load_or_capture(unet, make_config(root, num_steps=4, num_samples=10), ArtifactStore(root / "store"))
    return unet, data


def _active_quantizers(model: torch.nn.Module) -> list:
    return [(name, q) for name, q in iter_act_quantizers(model) if not q.is_identity]


def test_every_quantizer_is_calibrated_and_switches_are_restored(setup, tmp_path: Path) -> None:
    unet, data = setup
    unet_q = quantized_copy(unet, make_config(tmp_path))
    quantizers = _active_quantizers(unet_q)
    assert len(quantizers) > 40 and not any(q.is_calibrated for _, q in quantizers)
    set_quant_state(unet_q, weight=False, act=True)
    calibrate_activations(unet_q, data, TimestepContext(), None, batch_size=4)
    assert all(q.is_calibrated and not q.per_timestep for _, q in quantizers)
    assert all(q.enabled and not q.observing for _, q in quantizers)  # the caller's switches are back
    assert not any(module.use_weight_quant for _, module in iter_quant_modules(unet_q))
    # The calibrated W4A8 model runs and stays close to full precision.
    set_quant_state(unet_q, weight=True, act=True)
    sample, timestep = data.x[1, :4], torch.full((4,), data.timesteps[1])
    with torch.no_grad():
        reference = unet(sample, timestep).sample
        output = unet_q(sample, timestep).sample
    assert torch.isfinite(output).all()
    assert torch.nn.functional.cosine_similarity(output.flatten(), reference.flatten(), dim=0) > 0.8


def test_fsc_gives_each_timestep_its_own_range(setup, tmp_path: Path) -> None:
    unet, data = setup
    config = make_config(tmp_path, fsc=True)
    unet_q = quantized_copy(unet, config)
    context = TimestepContext()
    modules = fsc_modules(unet_q, config.method)
    tib_names = [n for n in get_adapter(unet).tib().layer_names() if isinstance(unet_q.get_submodule(n), QuantModule)]
    assert modules == [unet_q.get_submodule(name) for name in tib_names] and len(modules) == 9
    calibrate_activations(unet_q, data, context, modules, batch_size=4)

    per_timestep = [(n, q) for n, q in _active_quantizers(unet_q) if q.per_timestep]
    assert {n.rsplit(".act_quantizer", 1)[0] for n, _ in per_timestep} == set(tib_names)
    assert all(q.is_calibrated for _, q in _active_quantizers(unet_q))
    for _, quantizer in per_timestep:
        assert quantizer.calibrated_timesteps() == data.timesteps
        assert quantizer.timestep_scale.unique().numel() == len(data.timesteps)  # one scale per timestep

    # Each s_t is the min / max of that layer's input at t (the input of g_i is SiLU(h(t)), weights quantized).
    feature = get_adapter(unet_q).tib().features[0]
    proj = unet_q.get_submodule(feature.proj_name)
    with torch.no_grad(), quant_state(unet_q, weight=True, act=False):
        embedding = get_adapter(unet_q).temporal_embedding(data.timesteps)  # [T, C]
        activations = unet_q.get_submodule(feature.resnet_name).nonlinearity(embedding)
    scale, zero_point = range_to_qparams(activations.amin(dim=1), activations.amax(dim=1), 8)
    torch.testing.assert_close(proj.act_quantizer.timestep_scale, scale)
    torch.testing.assert_close(proj.act_quantizer.timestep_zero_point, zero_point)


def test_fsc_rejects_an_uncalibrated_timestep(setup, tmp_path: Path) -> None:
    unet, data = setup
    config = make_config(tmp_path, fsc=True)
    unet_q = quantized_copy(unet, config)
    context = TimestepContext()
    calibrate_activations(unet_q, data, context, fsc_modules(unet_q, config.method), batch_size=5)
    attach_timestep_context(unet_q, context)
    set_quant_state(unet_q, weight=True, act=True)
    sample = data.x[0, :2]
    with torch.no_grad():
        unet_q(sample, torch.full((2,), data.timesteps[2]))  # a calibrated timestep works
        with pytest.raises(KeyError, match="timestep 123 was not calibrated"):
            unet_q(sample, torch.full((2,), 123))


def test_fsc_scope_all_switches_every_quantizer(setup, tmp_path: Path) -> None:
    unet, data = setup
    config = make_config(tmp_path, fsc=True)
    config.method.fsc_scope = "all"
    unet_q = quantized_copy(unet, config)
    assert fsc_modules(unet_q, config.method) == [unet_q]
    assert fsc_modules(unet_q, make_config(tmp_path).method) is None
    calibrate_activations(unet_q, data, TimestepContext(), fsc_modules(unet_q, config.method), batch_size=10)
    assert all(q.per_timestep and q.is_calibrated for _, q in _active_quantizers(unet_q))


def test_full_precision_activations_need_no_pass(setup, tmp_path: Path) -> None:
    unet, data = setup
    config = make_config(tmp_path, fsc=True, a_bits=None)  # W4A32
    unet_q = quantized_copy(unet, config)
    calibrate_activations(unet_q, data, TimestepContext(), fsc_modules(unet_q, config.method))
    assert _active_quantizers(unet_q) == []
    assert not any(q.per_timestep for _, q in iter_act_quantizers(unet_q))

"""Cache-based maintenance (DESIGN 1.5) on a real tiny digits UNet: exact lookup, no TIB compute, timestep errors."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from tests.helpers import attach_fsc, method_config, model_config, quant_config, quantized_copy
from tfmq_exp.errors import CacheMismatchError
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.tiny import build_tiny_unet
from tfmq_exp.quant import TimestepContext, fake_quantize, observing_activations, range_to_qparams
from tfmq_exp.temporal.feature_cache import (
    CachedTemporalFeature,
    TimeEmbeddingPlaceholder,
    code_dtype,
    dequantize_rows,
    quantize_rows,
)
from tfmq_exp.temporal.features import collect_temporal_features
from tfmq_exp.temporal.maintenance import check_cache_timesteps, install_cache
from tfmq_exp.temporal.observe import observe_temporal_features

NUM_STEPS = 5


def sampler_timesteps(num_steps: int = NUM_STEPS) -> list[int]:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(num_steps)
    return [int(t) for t in scheduler.timesteps]


def quantized_twin(
    form: str = "digits", timesteps: list[int] | None = None, fsc: bool = True, w_bits: int = 8, a_bits: int = 8
) -> tuple[nn.Module, nn.Module, TimestepContext]:
    """A tiny FP UNet and a calibrated quantized copy (TIB at per-timestep activation ranges when ``fsc``)."""
    timesteps = timesteps or sampler_timesteps()
    unet_fp = build_tiny_unet(form)
    adapter = get_adapter(unet_fp)
    unet_q = quantized_copy(unet_fp, quant_config(w_bits, a_bits), model_config(form), method_config())
    context = attach_fsc(unet_q, adapter.tib().layer_names() if fsc else [], timesteps)
    sample, _, kwargs = adapter.example_inputs(batch_size=2)
    with torch.no_grad(), observing_activations(unet_q):
        for t in timesteps:
            unet_q(sample, torch.tensor(t), **kwargs)
    return unet_fp, unet_q, context


@pytest.fixture(scope="module")
def twin() -> tuple[nn.Module, nn.Module, TimestepContext]:
    return quantized_twin()


def tib_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Every module of the TIB (time_proj, the embedding MLP and its parts, each projection and its parts)."""
    tib = get_adapter(unet).tib()
    roots = [tib.time_proj, tib.time_embedding] + [feature.proj_name for feature in tib.features]
    modules = {}
    for root in roots:
        for sub, module in unet.get_submodule(root).named_modules():
            modules[f"{root}.{sub}" if sub else root] = module
    return modules


def test_row_quantization_is_fake_quantization() -> None:
    values = torch.randn(6, 40) * torch.linspace(0.1, 5.0, 6)[:, None] + 0.3
    for bits in (4, 8, 12):
        codes, scale, zero_point = quantize_rows(values, bits)
        assert codes.dtype == code_dtype(bits) and int(codes.max()) <= 2**bits - 1
        expected_scale, expected_zero = range_to_qparams(values.amin(1), values.amax(1), bits)
        assert torch.equal(scale, expected_scale) and torch.equal(zero_point, expected_zero)
        expected = fake_quantize(values, expected_scale[:, None], expected_zero[:, None], bits)
        assert torch.equal(dequantize_rows(codes, scale, zero_point), expected)


def test_cache_lookup_equals_quantized_fp_feature(twin) -> None:
    unet_fp, unet_q, context = twin
    unet_q = copy.deepcopy(unet_q)
    timesteps = sampler_timesteps()
    summary = install_cache(unet_q, unet_fp, context, timesteps, bits=8)
    fp = collect_temporal_features(get_adapter(unet_fp), timesteps)
    observed = observe_temporal_features(unet_q, timesteps, feature_spec_unet=unet_fp)  # real UNet forwards
    for name in fp.names:
        scale, zero_point = range_to_qparams(fp[name].amin(1), fp[name].amax(1), 8)
        expected = fake_quantize(fp[name], scale[:, None], zero_point[:, None], 8)
        assert torch.equal(observed[name], expected), name
        assert isinstance(unet_q.get_submodule(f"{name}.time_emb_proj"), CachedTemporalFeature)
    assert isinstance(unet_q.time_embedding, TimeEmbeddingPlaceholder) and unet_q.time_embedding.fallback is None
    channels = sum(fp[name].shape[1] for name in fp.names)
    assert summary.cache_bytes == len(timesteps) * (channels + len(fp.names) * 8)  # 8-bit codes + (s, z) per row
    assert summary.removed_parameters == summary.tib_parameters > 0


def ddim_loop(unet: nn.Module, steps: int = NUM_STEPS, seed: int = 0) -> torch.Tensor:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(unet(sample, t).sample, t, sample).prev_sample
    return sample


@pytest.mark.parametrize("fallback", [False, True], ids=["no_fallback", "fallback"])
def test_tib_never_runs_during_cached_sampling(twin, fallback: bool) -> None:
    unet_fp, unet_q, context = twin
    unet_q = copy.deepcopy(unet_q)
    reference = ddim_loop(unet_q)  # the quantized TIB path
    originals = tib_modules(unet_q)  # references kept across the replacement
    calls: list[str] = []
    for name, module in originals.items():
        module.register_forward_hook(lambda _m, _a, _o, name=name: calls.append(name))
    ddim_loop(unet_q, steps=1)
    assert set(calls) == set(originals)  # every hook fires on the TIB path
    calls.clear()
    install_cache(unet_q, unet_fp, context, sampler_timesteps(), bits=8, fallback=fallback)
    cached = ddim_loop(unet_q)
    assert calls == []
    cosine = torch.nn.functional.cosine_similarity(cached.flatten(), reference.flatten(), dim=0)
    assert torch.isfinite(cached).all() and cosine > 0.99
    kept = {id(module) for module in unet_q.modules()}
    assert all(id(module) in kept for module in originals.values()) is fallback  # fallback keeps the TIB weights


def test_missing_timesteps_raise_a_clear_error(twin) -> None:
    unet_fp, unet_q, context = twin
    unet_q = copy.deepcopy(unet_q)
    timesteps = sampler_timesteps()
    install_cache(unet_q, unet_fp, context, timesteps, bits=8)
    check_cache_timesteps(unet_q, timesteps)  # the cache's own sampler passes
    expected = r"timesteps \[900, 500\].*cached timesteps: \[800, 600, 400, 200, 0\]"
    with pytest.raises(CacheMismatchError, match=expected):
        check_cache_timesteps(unet_q, [900, 800, 500])
    sample = torch.randn(1, 1, 8, 8)
    with pytest.raises(CacheMismatchError, match=r"timestep 500 is not in the temporal-feature cache.*\[800, 600"):
        unet_q(sample, torch.tensor(500))


def test_fallback_runs_the_quantized_tib_for_missing_timesteps() -> None:
    timesteps = sampler_timesteps()
    unet_fp, unet_q, context = quantized_twin(fsc=False)
    reference = copy.deepcopy(unet_q)
    install_cache(unet_q, unet_fp, context, timesteps, bits=8, fallback=True)
    check_cache_timesteps(unet_q, [500])
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(unet_q(sample, torch.tensor(500)).sample, reference(sample, torch.tensor(500)).sample)
        assert not torch.equal(unet_q(sample, torch.tensor(400)).sample, reference(sample, torch.tensor(400)).sample)


def test_fallback_with_fsc_uses_the_nearest_calibrated_parameters(twin) -> None:
    unet_fp, unet_q, context = twin
    unet_q = copy.deepcopy(unet_q)
    reference = get_adapter(copy.deepcopy(unet_q))
    install_cache(unet_q, unet_fp, context, sampler_timesteps(), bits=8, fallback=True)
    observed = observe_temporal_features(unet_q, [510], feature_spec_unet=unet_fp)
    assert context.current == 510  # the substitution below is scoped to the fallback calls
    with torch.no_grad(), context.at(600):  # 510 has no FSC parameters: 600 is the nearest calibrated timestep
        expected = reference.temporal_features([510])
    for name in observed.names:
        torch.testing.assert_close(observed[name], expected[name], rtol=0, atol=0)
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_q, out_fp = unet_q(sample, torch.tensor(510)).sample, unet_fp(sample, torch.tensor(510)).sample
    assert torch.nn.functional.cosine_similarity(out_q.flatten(), out_fp.flatten(), dim=0) > 0.99

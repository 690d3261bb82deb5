"""The maintenance entry point: config handling, summaries, conditioned embeddings (SD-XL form), artifacts."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tests.helpers import small_config
from tests.temporal.test_feature_cache import quantized_twin, sampler_timesteps, tib_modules
from tfmq_exp.config.schema import Config, MethodConfig, ModelConfig, QuantConfig, SelectConfig
from tfmq_exp.errors import UserError
from tfmq_exp.conditioning import flatten
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.tiny import build_sd_unet
from tfmq_exp.quant import (
    QuantLinear,
    TimestepContext,
    attach_timestep_context,
    fake_quantize,
    load_artifact,
    range_to_qparams,
    save_artifact,
)
from tfmq_exp.stage_results import MaintenanceReport, TimeEmbeddingSelection
from tfmq_exp.temporal.feature_cache import CachedTemporalFeature
from tfmq_exp.temporal.maintenance import apply_maintenance, cache_bits_for, install_cache, iter_cache_modules


def make_config(maintenance: str = "cache", a_bits: int | None = 8, **method: object) -> Config:
    return small_config(
        QuantConfig(name="q", w_bits=8, a_bits=a_bits), MethodConfig(name="m", maintenance=maintenance, **method),
        model=ModelConfig(name="digits"), num_steps=5,
    )  # fmt: skip


def test_cache_bits_follow_the_config() -> None:
    assert cache_bits_for(make_config()) == 8
    assert cache_bits_for(make_config(cache_bits=5)) == 5
    assert cache_bits_for(make_config(a_bits=None)) == 8
    config = make_config()
    config.quant.temporal_a_bits = 6
    assert cache_bits_for(config) == 6


def test_apply_maintenance_cache_summary() -> None:
    unet_fp, unet_q, context = quantized_twin()
    timesteps = sampler_timesteps()
    report = apply_maintenance(unet_q, unet_fp, make_config(cache_bits=4), context, timesteps)
    assert report.selection is None and report.cache is not None
    assert set(json.loads(json.dumps(report.to_dict()))) == {"cache"}  # JSON-serialisable
    cache = report.to_dict()["cache"]
    tib = get_adapter(unet_fp).tib()
    linears = [unet_fp.get_submodule(name) for name in tib.layer_names()]
    macs = sum(linear.in_features * linear.out_features for linear in linears)
    assert cache["removed_macs_per_step"] == cache["tib_macs_per_step"] == macs
    assert cache["removed_flops_per_step"] == 2 * cache["removed_macs_per_step"]
    channels = [unet_fp.get_submodule(feature.proj_name).out_features for feature in tib.features]
    assert cache["code_bytes"] == len(timesteps) * sum((c * 4 + 7) // 8 for c in channels)  # 4-bit codes
    assert cache["cache_bytes"] == cache["code_bytes"] + cache["param_bytes"]
    assert cache["bits"] == 4 and cache["tib_skipped_timesteps"] == len(timesteps)
    with pytest.raises(ValueError, match="maintenance was applied before"):
        apply_maintenance(unet_q, unet_fp, make_config(), context, timesteps)
    assert apply_maintenance(unet_q, unet_fp, make_config("tib"), context, timesteps).to_dict() == {}


def _received_embeddings(unet: nn.Module, inputs: tuple) -> dict[str, torch.Tensor]:
    """The ``temb`` each ResNet block receives in a real forward."""
    received, handles = {}, []
    for feature in get_adapter(unet).tib().features:
        block = unet.get_submodule(feature.resnet_name)
        record = lambda _m, args, name=feature.name: received.__setitem__(name, args[1])  # noqa: E731
        handles.append(block.register_forward_pre_hook(record))
    sample, timestep, kwargs = inputs
    with torch.no_grad():
        unet(sample, timestep, **kwargs)
    for handle in handles:
        handle.remove()
    return received


@pytest.mark.parametrize("form", ["sdxl", "digits_class"])
def test_conditioned_embedding_caches_the_t_only_part(form: str) -> None:
    timesteps = sampler_timesteps()
    unet_fp, unet_q, context = quantized_twin(form, timesteps)
    adapter = get_adapter(unet_fp)
    embedding_modules = {name: m for name, m in tib_modules(unet_q).items() if name.startswith("time_embedding")}
    projections = [unet_q.get_submodule(feature.proj_name) for feature in adapter.tib().features]
    summary = install_cache(unet_q, unet_fp, context, timesteps, bits=8)
    assert summary.scope == "time_embedding" and summary.conditioning_modules
    assert summary.features is None and "features" not in summary.to_dict()  # the per-feature accounting only
    assert isinstance(unet_q.time_embedding, CachedTemporalFeature)
    assert all(unet_q.get_submodule(f.proj_name) is p for f, p in zip(adapter.tib().features, projections))
    calls: list[str] = []
    for name, module in embedding_modules.items():
        module.register_forward_hook(lambda _m, _a, _o, name=name: calls.append(name))
    sample, _, kwargs = adapter.example_inputs(batch_size=2)
    t = timesteps[2]
    received = _received_embeddings(unet_q, (sample, torch.tensor(t), kwargs))
    assert calls == []  # the time-embedding MLP never runs; projections and conditioning do
    with torch.no_grad():
        h = adapter.time_only_embedding(timesteps)  # full-precision h(t), one row per timestep
        scale, zero_point = range_to_qparams(h.amin(1), h.amax(1), 8)
        cached = fake_quantize(h, scale[:, None], zero_point[:, None], 8)[timesteps.index(t)]
        unet_q_free = copy.deepcopy(unet_q)
        unet_q_free.time_embedding = _Constant(cached)  # same sum, built with the quantized model's own modules
        expected = get_adapter(unet_q_free).temporal_embedding(torch.tensor([t, t]), kwargs)
    for name, value in received.items():
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)



@pytest.mark.parametrize("form", ["sdxl", "digits_class"])
def test_selection_with_conditioned_features_is_one_measured_choice_for_the_time_embedding(form: str) -> None:
    timesteps = sampler_timesteps()
    unet_fp, unet_q, context = quantized_twin(form, timesteps)
    _, _, kwargs = get_adapter(unet_fp).example_inputs(batch_size=3)
    conditioning = flatten(kwargs)
    with pytest.raises(UserError, match="calibration data has none"):
        apply_maintenance(unet_q, unet_fp, make_config("select"), context, timesteps)
    report = apply_maintenance(unet_q, unet_fp, make_config("select"), context, timesteps, conditioning)
    selection = report.selection
    assert isinstance(selection, TimeEmbeddingSelection) and selection.choice in ("tib", "cache")
    assert report.to_dict()["selection"]["scope"] == "time_embedding"
    errors = selection.errors
    assert errors["tib"]["rel_mse"] > 0 and errors["cache"]["rel_mse"] > 0  # both measured, neither exact
    chose_cache = errors["cache"]["rel_mse"] < errors["tib"]["rel_mse"]
    assert (selection.choice == "cache") == chose_cache
    assert isinstance(unet_q.time_embedding, CachedTemporalFeature) == chose_cache
    assert (report.cache is not None) == chose_cache


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1)


def test_time_embedding_with_timestep_cond_is_refused() -> None:
    torch.manual_seed(0)
    unet_fp = build_sd_unet(time_cond_proj_dim=16).eval()
    with pytest.raises(UserError, match="timestep_cond"):
        install_cache(copy.deepcopy(unet_fp), unet_fp, TimestepContext(), [999, 1], bits=8)


@pytest.mark.parametrize(
    "method",
    [
        dict(maintenance="cache"),
        dict(maintenance="cache", cache_fallback=True),
        dict(maintenance="select", cache_bits=4, select=SelectConfig(metric="feature_mse", per_timestep=True)),
    ],
    ids=["cache", "cache_fallback", "select_per_timestep"],
)
def test_artifact_round_trip(tmp_path, method: dict) -> None:
    timesteps = sampler_timesteps()
    unet_fp, unet_q, context = quantized_twin(w_bits=4)
    config = make_config(**method)
    report = apply_maintenance(unet_q, unet_fp, config, context, timesteps)
    save_artifact(tmp_path / "artifact", unet_q, config, extra={"sections": report.to_dict()})
    loaded_context = TimestepContext()
    unet_loaded = copy.deepcopy(unet_fp)
    loaded = load_artifact(tmp_path / "artifact", unet_loaded, config, context=loaded_context)
    assert MaintenanceReport.from_dict(loaded.extra["sections"]) == report  # the report reads back as written
    attach_timestep_context(unet_loaded, loaded_context)
    names = [name for name, _ in iter_cache_modules(unet_q)]
    assert names and names == [name for name, _ in iter_cache_modules(unet_loaded)]
    assert unet_loaded.state_dict().keys() == unet_q.state_dict().keys()
    if method.get("maintenance") == "cache" and not method.get("cache_fallback"):
        assert not any(key.startswith("time_embedding.linear") for key in unet_loaded.state_dict())  # no TIB weights
    if method.get("maintenance") == "select":
        assert any(isinstance(m.fallback, QuantLinear) for _, m in iter_cache_modules(unet_loaded))  # routed TIB
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    extra = [510] if method.get("cache_fallback") else []
    with torch.no_grad():
        for t in timesteps + extra:
            assert torch.equal(unet_q(sample, torch.tensor(t)).sample, unet_loaded(sample, torch.tensor(t)).sample)


def test_every_configurable_maintenance_is_registered_once() -> None:
    from tfmq_exp.config.schema import MAINTENANCES as CONFIGURABLE
    from tfmq_exp.temporal.maintenance import MAINTENANCES

    assert tuple(MAINTENANCES) == CONFIGURABLE
    for name in CONFIGURABLE:
        MethodConfig(name="m", maintenance=name)
    with pytest.raises(ValueError, match="method.maintenance"):
        MethodConfig(name="m", maintenance="cached")

"""Disturbance-aware selection (DESIGN 1.6): per-feature minimum, per-timestep mix, memory budget."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.temporal.test_feature_cache import quantized_twin, sampler_timesteps
from tfmq_exp.config.schema import SelectConfig
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.quant import QuantLinear
from tfmq_exp.temporal.feature_cache import CachedTemporalFeature, TimeEmbeddingPlaceholder, row_bytes
from tfmq_exp.temporal.maintenance import install_cache, iter_cache_modules
from tfmq_exp.temporal.observe import observe_temporal_features
from tfmq_exp.temporal.disturbance_selection import METRIC_KEYS, SCORE_KEY, Disturbance, choose, measure_disturbance


def crafted(scores: dict[str, tuple[list[float], list[float]]], channels: dict[str, int]) -> Disturbance:
    """A disturbance whose every metric equals the given per-timestep (tib, cache) scores."""
    errors = {
        name: {option: {key: torch.tensor(values, dtype=torch.float64) for key in METRIC_KEYS} for option, values in
               zip(("tib", "cache"), pair)}
        for name, pair in scores.items()
    }  # fmt: skip
    timesteps = list(range(len(next(iter(scores.values()))[0])))[::-1]
    return Disturbance(timesteps, channels, errors, probe_timestep=timesteps[0])


def test_choice_is_the_smaller_score_and_the_budget_is_greedy_per_byte() -> None:
    disturbance = crafted(
        {
            "a": ([4.0, 4.0], [1.0, 1.0]),  # gain 3 per feature, 2 rows of 8 channels
            "b": ([1.0, 1.0], [2.0, 2.0]),  # the TIB is better
            "c": ([9.0, 1.0], [1.0, 3.0]),  # gain 3 on average, but mixed per timestep, 2 rows of 64 channels
        },
        {"a": 8, "b": 8, "c": 64},
    )
    unlimited = choose(disturbance, SelectConfig(metric="feature_mse"), bits=8)
    assert unlimited.cached == {"a": [1, 0], "b": [], "c": [1, 0]}
    assert unlimited.full_cache_bytes == 2 * (row_bytes(8, 8) * 2 + row_bytes(64, 8))
    budget = 2 * row_bytes(64, 8)  # fits only one of a / c: a gains as much with fewer bytes
    limited = choose(disturbance, SelectConfig(metric="feature_cos", cache_budget_bytes=budget), bits=8)
    assert limited.cached == {"a": [1, 0], "b": [], "c": []} and limited.cache_bytes <= budget
    per_step = choose(disturbance, SelectConfig(metric="block_output_mse", per_timestep=True), bits=8)
    assert per_step.cached == {"a": [1, 0], "b": [], "c": [1]}
    report = per_step.report()
    assert report.choice["c"] == {"1": "cache", "0": "tib"} and report.score == "block_output_rel_mse"
    assert set(report.errors_per_timestep) == {"a", "b", "c"}  # written for a per-timestep choice only
    assert choose(disturbance, SelectConfig(metric="feature_mse"), bits=8).report().errors_per_timestep is None


@pytest.fixture(scope="module")
def twin_w4():
    """W4A5 with FSC: against a 4-bit cache, the better option differs between features (seed 0)."""
    return quantized_twin(w_bits=4, a_bits=5)


@pytest.fixture(scope="module")
def disturbance(twin_w4) -> Disturbance:
    unet_fp, unet_q, context = twin_w4
    return measure_disturbance(unet_q, unet_fp, context, sampler_timesteps(), bits=4)


def test_measured_errors_are_consistent(twin_w4, disturbance: Disturbance) -> None:
    unet_fp, unet_q, context = twin_w4
    names = get_adapter(unet_fp).tib().feature_names()
    assert list(disturbance.errors) == names and disturbance.probe_timestep == sampler_timesteps()[2]
    for name in names:
        for option in ("tib", "cache"):
            values = disturbance.errors[name][option]
            assert set(values) == set(METRIC_KEYS) and all(v.shape == (5,) for v in values.values())
            assert all(bool((v > 0).all()) for v in values.values())  # both options disturb the feature
            assert bool((values["feature_cos_distance"] < 0.1).all())
        # a disturbed feature disturbs the block that consumes it
        cache, tib = disturbance.errors[name]["cache"], disturbance.errors[name]["tib"]
        assert cache["block_output_mse"].sum() > 0 and tib["block_output_mse"].sum() > 0


@pytest.mark.parametrize("metric", ["feature_mse", "feature_cos", "block_output_mse"])
def test_selection_picks_the_per_feature_minimum(twin_w4, disturbance: Disturbance, metric: str) -> None:
    unet_fp, unet_q, context = twin_w4
    selection = choose(disturbance, SelectConfig(metric=metric), bits=4)
    report = selection.report()
    key = SCORE_KEY[metric]
    for name, errors in report.errors.items():
        better = "cache" if errors["cache"][key] < errors["tib"][key] else "tib"
        assert report.choice[name] == better
    assert set(report.choice.values()) == {"cache", "tib"}  # a real mix of options
    unet_q = copy.deepcopy(unet_q)
    install_cache(unet_q, unet_fp, context, sampler_timesteps(), bits=4, cached=selection.cached_timesteps())
    for name, choice in report.choice.items():
        module = unet_q.get_submodule(f"{name}.time_emb_proj")
        assert isinstance(module, CachedTemporalFeature if choice == "cache" else QuantLinear)
    tib_still_needed = "tib" in report.choice.values()
    assert isinstance(unet_q.time_embedding, TimeEmbeddingPlaceholder) is not tib_still_needed


@pytest.mark.parametrize("per_timestep", [False, True], ids=["per_feature", "per_timestep"])
def test_half_budget_is_respected(twin_w4, per_timestep: bool) -> None:
    unet_fp, unet_q, context = twin_w4
    timesteps = sampler_timesteps()
    disturbance = measure_disturbance(unet_q, unet_fp, context, timesteps, bits=8)
    full = choose(disturbance, SelectConfig(per_timestep=per_timestep), bits=8)
    budget = full.full_cache_bytes // 2
    selection = choose(disturbance, SelectConfig(per_timestep=per_timestep, cache_budget_bytes=budget), bits=8)
    assert 0 < selection.cache_bytes <= budget < full.cache_bytes
    unet_q = copy.deepcopy(unet_q)
    summary = install_cache(unet_q, unet_fp, context, timesteps, bits=8, cached=selection.cached_timesteps())
    installed = sum(m.cache_bytes() for _, m in iter_cache_modules(unet_q) if isinstance(m, CachedTemporalFeature))
    assert summary.cache_bytes == installed == selection.cache_bytes


def test_per_timestep_choice_is_what_the_blocks_read(twin_w4, disturbance: Disturbance) -> None:
    unet_fp, unet_q, context = twin_w4
    timesteps = sampler_timesteps()
    reference = copy.deepcopy(unet_q)
    selection = choose(disturbance, SelectConfig(metric="feature_mse", per_timestep=True), bits=4)
    chosen = selection.cached_timesteps()
    assert any(0 < len(ts) < len(timesteps) for ts in chosen.values())  # a real per-timestep mix
    install_cache(unet_q := copy.deepcopy(unet_q), unet_fp, context, timesteps, bits=4, cached=chosen)
    observed = observe_temporal_features(unet_q, timesteps, feature_spec_unet=unet_fp)
    tib_path = observe_temporal_features(reference, timesteps, feature_spec_unet=unet_fp)
    for name, cached_steps in chosen.items():
        module = unet_q.get_submodule(f"{name}.time_emb_proj")
        for row, t in enumerate(timesteps):
            if t in cached_steps:
                expected = module.dequantized()[module.cached_timesteps().index(t)]
            else:
                expected = tib_path[name][row]
            assert torch.equal(observed[name][row], expected), (name, t)

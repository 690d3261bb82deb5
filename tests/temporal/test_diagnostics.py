"""Temporal diagnostics on synthetic feature sets with known answers."""

from __future__ import annotations

import json

import pytest
import torch

from tfmq_exp.temporal import (
    TemporalFeatureSet,
    diagnose_temporal_features,
    temporal_feature_errors,
    temporal_mismatch,
    trajectory_cosine,
)

TIMESTEPS = [900, 700, 500, 300, 100]


def _smooth_features(seed: int = 0) -> TemporalFeatureSet:
    """Features that drift smoothly with t, like real temporal features (distinct rows)."""
    generator = torch.Generator().manual_seed(seed)
    base = {name: torch.randn(2, width, generator=generator) for name, width in (("a", 16), ("b", 32))}
    weights = torch.linspace(0, 1, len(TIMESTEPS))[:, None]
    return TemporalFeatureSet(TIMESTEPS, {name: (1 - weights) * x[0] + weights * x[1] for name, x in base.items()})


def test_identical_features_have_no_error_and_no_mismatch() -> None:
    fp = _smooth_features()
    diagnostics = diagnose_temporal_features(fp, _smooth_features())
    summary = diagnostics.to_summary()
    assert summary["rel_mse_mean"] == 0.0 and summary["mse_mean"] == 0.0
    assert summary["cos_mean"] == pytest.approx(1.0, abs=1e-12) and summary["cos_min"] == pytest.approx(1.0, abs=1e-12)
    assert summary["mismatch_rate"] == 0.0
    assert summary["nearest_timestep"] == [TIMESTEPS, TIMESTEPS]
    json.dumps(summary)  # JSON-serialisable as logged


def test_permuted_timesteps_mismatch_everywhere() -> None:
    fp = _smooth_features()
    shift = [1, 2, 3, 4, 0]  # a derangement: row t holds the feature of another timestep
    quant = TemporalFeatureSet(TIMESTEPS, {name: fp[name][shift] for name in fp.names})
    mismatch = temporal_mismatch(fp, quant)
    assert mismatch.mismatch_rate == 1.0
    assert mismatch.nearest_timesteps()[0] == [TIMESTEPS[index] for index in shift]
    assert mismatch.to_summary()["mismatch_rate_per_feature"] == {"a": 1.0, "b": 1.0}


def test_errors_match_hand_computation() -> None:
    fp = TemporalFeatureSet([10, 20], {"x": torch.tensor([[1.0, 1.0], [2.0, 0.0]])})
    quant = TemporalFeatureSet([10, 20], {"x": torch.tensor([[1.0, 3.0], [0.0, 2.0]])})
    errors = temporal_feature_errors(fp, quant)
    # t=10: mse = (0 + 4) / 2 = 2, power = 1, cos = 4 / (sqrt2 * sqrt10); t=20: mse = (4 + 4) / 2 = 4, power 2, cos 0
    assert errors.mse.tolist() == [[2.0, 4.0]]
    assert errors.rel_mse.tolist() == [[2.0, 2.0]]
    assert errors.cosine[0, 0].item() == pytest.approx(4 / (2**0.5 * 10**0.5))
    assert errors.cosine[0, 1].item() == pytest.approx(0.0)
    assert errors.mse_mean == 3.0 and errors.rel_mse_mean == 2.0 and errors.cos_min == pytest.approx(0.0)
    summary = errors.to_summary()
    assert summary["feature_names"] == ["x"] and summary["timesteps"] == [10, 20] and summary["mse"] == [[2.0, 4.0]]


def test_small_noise_keeps_nearest_timestep() -> None:
    fp = _smooth_features()
    generator = torch.Generator().manual_seed(1)
    noisy = {name: fp[name] + 1e-3 * torch.randn(fp[name].shape, generator=generator) for name in fp.names}
    quant = TemporalFeatureSet(TIMESTEPS, noisy)
    diagnostics = diagnose_temporal_features(fp, quant)
    assert diagnostics.mismatch.mismatch_rate == 0.0
    assert 0 < diagnostics.errors.rel_mse_mean < 1e-4 and diagnostics.errors.cos_min > 0.999


def test_mismatched_sets_are_rejected() -> None:
    fp = _smooth_features()
    with pytest.raises(ValueError, match="timesteps differ"):
        temporal_feature_errors(fp, fp.select(TIMESTEPS[:3]))
    with pytest.raises(ValueError, match="features differ"):
        temporal_mismatch(fp, TemporalFeatureSet(TIMESTEPS, {"a": fp["a"]}))


def test_trajectory_cosine_per_step() -> None:
    generator = torch.Generator().manual_seed(0)
    xs_fp = [torch.randn(4, 1, 8, 8, generator=generator) for _ in range(3)]
    xs_q = [xs_fp[0].clone(), -xs_fp[1], 2.0 * xs_fp[2]]
    assert trajectory_cosine(xs_fp, xs_q) == pytest.approx([1.0, -1.0, 1.0])
    # per-sample cosine averaged over the batch: half the samples flipped -> 0
    flipped = xs_fp[0].clone()
    flipped[:2] *= -1
    assert trajectory_cosine(xs_fp[:1], [flipped]) == pytest.approx([0.0], abs=1e-12)
    with pytest.raises(ValueError, match="steps"):
        trajectory_cosine(xs_fp, xs_q[:2])

"""Step selection (all / uniform / skew-normal) and the reconstruction sample set drawn from the steps."""

from __future__ import annotations

import math

import pytest
import torch

from tfmq_exp.calib import (
    CalibrationData,
    normal_step_draws,
    reconstruction_indices,
    reconstruction_set,
    select_steps,
    step_counts,
)
from tfmq_exp.config.schema import CalibConfig


def test_all_selects_every_step() -> None:
    assert select_steps("all", 7, CalibConfig()) == list(range(7))


@pytest.mark.parametrize("every, expected", [(1, list(range(10))), (3, [0, 3, 6, 9]), (5, [0, 5]), (20, [0])])
def test_uniform_takes_every_kth_step(every: int, expected: list[int]) -> None:
    assert select_steps("uniform", 10, CalibConfig(uniform_every=every)) == expected


def test_uniform_matches_qdiffusion_lsun_setting() -> None:
    # Q-Diffusion on LSUN: 20 of 200 steps.
    steps = select_steps("uniform", 200, CalibConfig(uniform_every=10))
    assert len(steps) == 20 and steps[:3] == [0, 10, 20] and steps[-1] == 190


def _skew_normal_mean(mean: float, std: float, skew: float) -> float:
    delta = skew / math.sqrt(1 + skew**2)
    return mean + std * delta * math.sqrt(2 / math.pi)


@pytest.mark.parametrize("skew", [2.0, -2.0, 0.0], ids=["right", "left", "symmetric"])
def test_normal_draws_follow_the_skewed_normal_deterministically(skew: float) -> None:
    calib = CalibConfig(normal_mean=0.45, normal_std=0.15, normal_skew=skew, recon_samples=4000)
    draws = normal_step_draws(101, calib, calib.recon_samples)
    assert draws == normal_step_draws(101, calib, calib.recon_samples)  # deterministic, no RNG involved
    positions = torch.tensor(draws, dtype=torch.float64) / 100
    assert abs(float(positions.mean()) - _skew_normal_mean(0.45, 0.15, skew)) < 0.01
    if skew > 0:
        assert float(positions.mean()) > 0.45 + 0.05
    elif skew < 0:
        assert float(positions.mean()) < 0.45 - 0.05
    # Concentrated around the mode: the tails (first / last fifth of the steps) are rarely or never drawn.
    assert float(((positions < 0.1) | (positions > 0.9)).double().mean()) < 0.02


def test_normal_selection_and_counts_agree() -> None:
    calib = CalibConfig(normal_mean=0.4, normal_std=0.1, normal_skew=2.0, recon_samples=64)
    steps = select_steps("normal", 50, calib)
    counts = step_counts("normal", 50, calib, seed=0)
    assert steps == sorted(counts) and sum(counts.values()) == 64
    assert 3 < len(steps) < 50  # a concentrated subset, not every step
    mode = max(counts, key=counts.get)
    assert counts[mode] > counts[steps[0]] and counts[mode] > counts[steps[-1]]


def test_uniform_counts_are_balanced() -> None:
    counts = step_counts("uniform", 10, CalibConfig(uniform_every=3, recon_samples=10), seed=1)
    assert sorted(counts) == [0, 3, 6, 9] and sum(counts.values()) == 10
    assert max(counts.values()) - min(counts.values()) <= 1


def _data(num_steps: int = 6, num_samples: int = 5) -> CalibrationData:
    # x[s, n] is filled with the value 100 s + n, so every drawn row names its (step, sample).
    values = (100 * torch.arange(num_steps)[:, None] + torch.arange(num_samples)[None]).float()
    x = values[:, :, None, None, None].expand(num_steps, num_samples, 1, 2, 2).clone()
    return CalibrationData(x=x, timesteps=[900 - 150 * s for s in range(num_steps)])


@pytest.mark.parametrize("strategy", ["all", "uniform", "normal"])
def test_reconstruction_set_is_deterministic_and_drawn_from_selected_steps(strategy: str) -> None:
    data = _data()
    calib = CalibConfig(uniform_every=2, recon_samples=12, normal_mean=0.5, normal_std=0.2, normal_skew=1.0)
    x, t = reconstruction_set(data, strategy, calib, seed=3)
    x_again, t_again = reconstruction_set(data, strategy, calib, seed=3)
    assert torch.equal(x, x_again) and torch.equal(t, t_again)
    assert x.shape == (12, 1, 2, 2) and t.shape == (12,) and t.dtype == torch.long
    selected = select_steps(strategy, data.num_steps, calib)
    steps = (x[:, 0, 0, 0] // 100).long()
    samples = (x[:, 0, 0, 0] % 100).long()
    assert set(steps.tolist()) <= set(selected)
    assert torch.equal(t, torch.tensor(data.timesteps)[steps])  # each x_t paired with its own t
    # Within a step, trajectories are distinct until all N are used.
    for step in set(steps.tolist()):
        chosen = samples[steps == step].tolist()
        assert len(set(chosen)) == min(len(chosen), data.num_samples)


def test_reconstruction_set_depends_on_seed_and_cycles_when_a_step_needs_more_than_n() -> None:
    data = _data(num_steps=2, num_samples=3)
    calib = CalibConfig(recon_samples=10)
    first, _ = reconstruction_set(data, "all", calib, seed=0)
    second, _ = reconstruction_set(data, "all", calib, seed=1)
    assert not torch.equal(first, second)
    steps, samples = reconstruction_indices("all", 2, 3, calib, seed=0)
    for step in (0, 1):
        chosen = samples[steps == step].tolist()
        assert len(chosen) == 5 and sorted(chosen[:3]) == [0, 1, 2]  # a full permutation first, then a fresh one


def test_invalid_strategy_and_scale_are_rejected() -> None:
    with pytest.raises(ValueError, match="calib_steps"):
        select_steps("random", 10, CalibConfig())
    with pytest.raises(ValueError, match="normal_std"):
        select_steps("normal", 10, CalibConfig(normal_std=0.0))


def test_every_configurable_strategy_is_registered_once() -> None:
    from tfmq_exp.calib.steps import STEP_SELECTIONS
    from tfmq_exp.config.schema import CALIB_STEP_SELECTIONS, MethodConfig

    assert tuple(STEP_SELECTIONS) == CALIB_STEP_SELECTIONS
    calib = CalibConfig(uniform_every=2, recon_samples=12)
    for name in CALIB_STEP_SELECTIONS:
        MethodConfig(name="m", calib_steps=name)  # the schema accepts every registered name
        counts = step_counts(name, 6, calib, seed=0)
        assert sorted(counts) == select_steps(name, 6, calib) and sum(counts.values()) == 12
    with pytest.raises(ValueError, match="method.calib_steps"):
        MethodConfig(name="m", calib_steps="every_other")

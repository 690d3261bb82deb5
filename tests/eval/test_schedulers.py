"""The sampler registry: every sampler builds, visits a finite set of distinct timesteps, and samples."""

from __future__ import annotations

import pytest
import torch

from tfmq_exp.config.schema import SAMPLERS, ModelConfig, SamplerConfig
from tfmq_exp.eval.sampling import generate
from tfmq_exp.eval.schedulers import build_scheduler, distinct_in_order, sampling_timesteps
from tfmq_exp.models.tiny import build_tiny_unet

MODEL = ModelConfig(name="digits")


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_visits_distinct_timesteps_and_generates(name: str) -> None:
    sampler = SamplerConfig(name=name, num_steps=6)
    timesteps = sampling_timesteps(sampler, MODEL)
    assert len(timesteps) == len(set(timesteps)) and timesteps == sorted(timesteps, reverse=True)
    assert len(timesteps) == 6
    result = generate(build_tiny_unet("digits"), sampler, MODEL, 2, 2, seed_set=0, record_trajectory=True,
                      progress=False)
    assert result.trajectory is not None and result.trajectory.shape[0] == len(timesteps)
    assert torch.isfinite(result.images).all()


def test_plms_evaluates_one_timestep_twice_and_the_finite_set_keeps_it_once() -> None:
    scheduler = build_scheduler(SamplerConfig(name="plms", num_steps=5), MODEL)
    visited = [int(t) for t in scheduler.timesteps]
    assert len(visited) == 6 and len(set(visited)) == 5  # the warm-up repeats one timestep
    assert distinct_in_order(visited) == sampling_timesteps(SamplerConfig(name="plms", num_steps=5), MODEL)


def test_schedule_follows_the_model_config() -> None:
    model = ModelConfig(name="x", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    scheduler = build_scheduler(SamplerConfig(name="ddim", num_steps=10), model)
    assert scheduler.config.steps_offset == 1 and scheduler.config.beta_schedule == "scaled_linear"
    assert int(scheduler.timesteps[-1]) == 1

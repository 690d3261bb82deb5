"""The samplers, one registry: a sampler config name -> a diffusers scheduler built for the model's schedule.

Every scheduler gets the model's training noise schedule (betas, ``num_train_timesteps``, prediction type,
``steps_offset``) and the sampler's ``timestep_spacing``; each entry adds what its sampler needs.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from tfmq_exp.config.schema import SAMPLERS, ModelConfig, SamplerConfig

SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {"set_alpha_to_one": False, "clip_sample": False}),
    "ddpm": (DDPMScheduler, {"clip_sample": False}),
    # PLMS as the paper's Stable Diffusion runs (CompVis ``PLMSSampler``): the linear multistep warm-up without
    # Runge-Kutta steps; diffusers' warm-up evaluates the second-to-last timestep twice.
    "plms": (PNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
assert set(SCHEDULERS) == set(SAMPLERS), "schema.SAMPLERS and SCHEDULERS must list the same samplers"


def _accepted(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in kwargs.items() if key in parameters}


def build_scheduler(sampler: SamplerConfig, model: ModelConfig) -> SchedulerMixin:
    """A fresh scheduler for the model's training noise schedule, set to ``sampler.num_steps``."""
    cls, extra = SCHEDULERS[sampler.name]
    schedule = dict(
        num_train_timesteps=model.num_train_timesteps,
        beta_schedule=model.beta_schedule,
        beta_start=model.beta_start,
        beta_end=model.beta_end,
        prediction_type=model.prediction_type,
        timestep_spacing=sampler.timestep_spacing,
        steps_offset=model.steps_offset,
    )
    scheduler = cls(**_accepted(cls, {**schedule, **extra}))
    scheduler.set_timesteps(sampler.num_steps)
    return scheduler


def distinct_in_order(timesteps: Any) -> list[int]:
    """The timesteps a scheduler visits, each once, in sampling order (PLMS repeats one in its warm-up)."""
    seen: dict[int, None] = {}
    for t in timesteps:
        seen.setdefault(int(t), None)
    return list(seen)


def sampling_timesteps(sampler: SamplerConfig, model: ModelConfig) -> list[int]:
    """The finite set of timesteps the sampler visits, in sampling order (the set TIAR / FSC / the cache use)."""
    return distinct_in_order(build_scheduler(sampler, model).timesteps)



"""Sampling with diffusers schedulers as a Lightning predict loop.

Every sample ``i`` draws its initial noise ``x_T`` (and, for stochastic samplers, its per-step noise) from its own
generator seeded with :func:`sample_seed`, so the images do not depend on batch size, device count or order, and
every method sampled with the same ``seed_set`` starts from the same noise (paired comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import lightning as L
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch.utils.data import DataLoader, Dataset

from tfmq_exp.config.schema import ModelConfig, SamplerConfig

SEED_SET_STRIDE = 1_000_000


def sample_seed(seed_set: int, index: int) -> int:
    """Seed of sample ``index`` in evaluation noise set ``seed_set``."""
    return seed_set * SEED_SET_STRIDE + index


def build_scheduler(sampler: SamplerConfig, model: ModelConfig) -> SchedulerMixin:
    """A fresh diffusers scheduler for the model's training noise schedule, set to ``sampler.num_steps``."""
    kwargs = dict(
        num_train_timesteps=model.num_train_timesteps,
        beta_schedule=model.beta_schedule,
        beta_start=model.beta_start,
        beta_end=model.beta_end,
        prediction_type=model.prediction_type,
        timestep_spacing=sampler.timestep_spacing,
        clip_sample=False,
    )
    scheduler: SchedulerMixin
    if sampler.name == "ddim":
        scheduler = DDIMScheduler(**kwargs, set_alpha_to_one=False)
    else:
        scheduler = DDPMScheduler(**kwargs)
    scheduler.set_timesteps(sampler.num_steps)
    return scheduler


def sampling_timesteps(sampler: SamplerConfig, model: ModelConfig) -> list[int]:
    """The finite set of timesteps the sampler visits, in sampling order (the set TIAR / FSC / the cache use)."""
    return [int(t) for t in build_scheduler(sampler, model).timesteps]


class _Indices(Dataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


@dataclass
class SampleBatch:
    """Output of one predict step: final samples and, when recorded, ``x_t`` before every step."""

    indices: torch.Tensor  # [B]
    images: torch.Tensor  # [B, C, H, W], x_0
    trajectory: Optional[torch.Tensor] = None  # [S, B, C, H, W], x_t fed to the UNet at each of the S steps


StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called as ``callback(step_index, timestep, x_t)`` before each denoising step."""


class DiffusionSampler(L.LightningModule):
    """Runs the reverse process ``x_T -> x_0`` of a scheduler with a (possibly quantized) UNet.

    Args:
        unet: any module called as ``unet(x_t, t, **unet_kwargs).sample`` (diffusers UNets, quantized or not).
        sampler / model: the scheduler settings and the model's training noise schedule.
        seed_set: the evaluation noise set (see :func:`sample_seed`).
        record_trajectory: also return ``x_t`` at every step.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        sampler: SamplerConfig,
        model: ModelConfig,
        seed_set: int,
        record_trajectory: bool = False,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.sampler_cfg = sampler
        self.model_cfg = model
        self.seed_set = seed_set
        self.record_trajectory = record_trajectory

    def initial_noise(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Generator]]:
        """``x_T`` for each sample index, and the generators that go on to draw its per-step noise."""
        return initial_noise(self.model_cfg, self.seed_set, indices)

    @torch.no_grad()
    def predict_step(self, batch: torch.Tensor, batch_idx: int = 0) -> SampleBatch:
        scheduler = build_scheduler(self.sampler_cfg, self.model_cfg)  # schedulers are stateful: one per batch
        x, generators = self.initial_noise(batch)
        x = x.to(self.device)
        x = x * scheduler.init_noise_sigma
        recorded = []
        for t in scheduler.timesteps:
            if self.record_trajectory:
                recorded.append(x.detach().cpu())
            timestep = t.to(self.device)
            eps = self.unet(scheduler.scale_model_input(x, t), timestep).sample
            x = self._step(scheduler, eps, t, x, generators)
        trajectory = torch.stack(recorded) if recorded else None
        return SampleBatch(indices=batch.cpu(), images=x.cpu(), trajectory=trajectory)

    def _step(
        self, scheduler: SchedulerMixin, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generators: list
    ) -> torch.Tensor:
        # Per-step noise also comes from the per-sample CPU generators; diffusers' ``randn_tensor`` draws it on
        # the CPU and moves it to the sample's device, so every device gets the same noise.
        if isinstance(scheduler, DDIMScheduler):
            return scheduler.step(eps, t, x, eta=self.sampler_cfg.eta, generator=generators).prev_sample
        return scheduler.step(eps, t, x, generator=generators).prev_sample


def make_trainer(device: str = "cpu", progress: bool = True) -> L.Trainer:
    """A Lightning Trainer for predict loops (sampling, capture): no logger, no checkpoints."""
    accelerator = "auto" if device == "auto" else device
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )


def generate(
    unet: torch.nn.Module,
    sampler: SamplerConfig,
    model: ModelConfig,
    num_samples: int,
    batch_size: int,
    seed_set: int,
    record_trajectory: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> SampleBatch:
    """Generate ``num_samples`` images (and optionally trajectories) with a Lightning predict loop."""
    module = DiffusionSampler(unet, sampler, model, seed_set, record_trajectory)
    loader = DataLoader(_Indices(num_samples), batch_size=batch_size, shuffle=False)
    batches = make_trainer(device, progress).predict(module, loader)
    assert batches is not None
    return SampleBatch(
        indices=torch.cat([b.indices for b in batches]),
        images=torch.cat([b.images for b in batches]),
        trajectory=torch.cat([b.trajectory for b in batches], dim=1) if record_trajectory else None,
    )


def initial_noise(model: ModelConfig, seed_set: int, indices: Iterable[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """``x_T`` ``[B, C, H, W]`` of the given sample indices, from per-sample CPU generators (device independent).

    Returns the generators too: they go on to draw each sample's per-step noise.
    """
    shape = (model.in_channels, model.sample_size, model.sample_size)
    generators = [torch.Generator().manual_seed(sample_seed(seed_set, int(i))) for i in indices]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]), generators


def noise_fingerprint(model: ModelConfig, seed_set: int, num_samples: int) -> str:
    """sha256 of the initial noise ``x_T`` of samples ``0 .. num_samples - 1`` of a seed set.

    Recorded in every summary so that a sweep can prove its runs were paired (sampled from the same noise).
    """
    import hashlib

    noise, _ = initial_noise(model, seed_set, range(num_samples))
    return hashlib.sha256(noise.numpy().tobytes()).hexdigest()[:16]

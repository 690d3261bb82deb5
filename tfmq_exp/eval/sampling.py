"""Sampling with diffusers schedulers and pipelines as a Lightning predict loop.

Every sample ``i`` draws its initial noise ``x_T`` (and, for stochastic samplers, its per-step noise) from its own
generator seeded with :func:`sample_seed`, so the images do not depend on batch size, device count or order, and
every method sampled with the same ``seed_set`` starts from the same noise (paired comparisons).

Text-to-image models generate inside their stock diffusers pipeline (``StableDiffusionPipeline``,
``StableDiffusionXLPipeline``) with the (quantized) UNet dropped in: the per-sample noise goes in through
``latents=``, the final latents come out through ``callback_on_step_end``. Pixel, latent and class-conditional
UNet2D models use the loop below: diffusers' ``DDPMPipeline`` / ``DDIMPipeline`` / ``LDMPipeline`` take no initial
latents (so no per-sample noise shared across methods), no class labels and no guidance. In both cases a forward
pre-hook records what the UNet receives (:class:`~tfmq_exp.eval.unet_inputs.UNetInputRecorder`).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import lightning as L
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from tfmq_exp.config.schema import ModelConfig, SamplerConfig
from tfmq_exp.eval.schedulers import build_scheduler, sampling_timesteps
from tfmq_exp.eval.unet_inputs import UNetInputRecorder
from tfmq_exp.eval.distributed import predict_on_devices

__all__ = ["GenerationParts", "SampleBatch", "build_scheduler", "generate", "initial_noise",
           "noise_fingerprint", "sample_seed", "sampling_timesteps"]  # fmt: skip

SEED_SET_STRIDE = 1_000_000


def sample_seed(seed_set: int, index: int) -> int:
    """Seed of sample ``index`` in evaluation noise set ``seed_set``."""
    return seed_set * SEED_SET_STRIDE + index


@dataclass
class GenerationParts:
    """What a family generates with besides the UNet (all ``None``: an unconditional pixel model).

    Attributes:
        vae: the latent autoencoder; samples are decoded with ``vae.decode(x / scaling_factor)``.
        pipeline: a text-to-image pipeline whose other components are used (its UNet and scheduler are replaced).
        labels: sample indices ``[B]`` -> class labels ``[B]`` (class-conditional models).
        null_class: the label of guidance's unconditional branch.
        prompts: sample indices -> prompts (text-to-image).
        guidance_scale: classifier-free guidance weight ``w``; 1 runs the conditional branch alone.
        image_size: side of the generated images in pixels (text-to-image pipelines' ``height`` / ``width``).
    """

    vae: Optional[torch.nn.Module] = None
    pipeline: Optional[Any] = None
    labels: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    null_class: Optional[int] = None
    prompts: Optional[Callable[[torch.Tensor], list[str]]] = None
    guidance_scale: float = 1.0
    image_size: Optional[int] = None


@dataclass
class SampleBatch:
    """Output of one predict step: final samples and, when recorded, what the UNet received at every step.

    Attributes:
        indices: ``[B]`` sample indices.
        images: ``[B, C, H, W]`` decoded images in [-1, 1] (``x_0`` itself for pixel models).
        trajectory: ``[S, B', C, h, w]``: the UNet's input ``x_t`` at each of the ``S`` distinct timesteps
            (``B' = 2B`` rows ``[unconditional; conditional]`` under guidance).
        conditioning: the UNet's conditioning keyword arguments, flat, ``[B', ...]`` each.
        final: ``[B', C, h, w]``: ``x_0`` in the model's space (latents for latent models), rows as ``trajectory``.
    """

    indices: torch.Tensor
    images: torch.Tensor
    trajectory: Optional[torch.Tensor] = None
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)
    final: Optional[torch.Tensor] = None


def _guided_rows(x: torch.Tensor, guided: bool) -> torch.Tensor:
    return torch.cat([x, x]) if guided else x


class DiffusionSampler(L.LightningModule):
    """Runs the reverse process ``x_T -> x_0`` with a (possibly quantized) UNet.

    Args:
        unet: any module called as ``unet(x_t, t, **conditioning).sample`` (diffusers UNets, quantized or not).
        sampler / model: the scheduler settings and the model's training noise schedule.
        seed_set: the evaluation noise set (see :func:`sample_seed`).
        record_trajectory: also return the UNet's inputs at every step.
        parts: the family's other parts (VAE, labels, prompts, guidance); default: an unconditional pixel model.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        sampler: SamplerConfig,
        model: ModelConfig,
        seed_set: int,
        record_trajectory: bool = False,
        parts: Optional[GenerationParts] = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.sampler_cfg = sampler
        self.model_cfg = model
        self.seed_set = seed_set
        self.record_trajectory = record_trajectory
        self.parts = parts or GenerationParts()
        self.vae = self.parts.vae  # a submodule, so Lightning moves it with the UNet
        if self.parts.pipeline is not None:  # the text encoders too
            self.pipeline_modules = torch.nn.ModuleDict({
                name: module for name, module in self.parts.pipeline.components.items()
                if isinstance(module, torch.nn.Module) and name not in ("unet", "vae")
            })  # fmt: skip

    def initial_noise(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Generator]]:
        """``x_T`` for each sample index, and the generators that go on to draw its per-step noise."""
        return initial_noise(self.model_cfg, self.seed_set, indices)

    @torch.no_grad()
    def predict_step(self, batch: torch.Tensor, batch_idx: int = 0) -> SampleBatch:
        scheduler = build_scheduler(self.sampler_cfg, self.model_cfg)  # schedulers are stateful: one per batch
        x, generators = self.initial_noise(batch)
        recorder = UNetInputRecorder(self.unet) if self.record_trajectory else nullcontext()
        with recorder:
            if self.parts.pipeline is not None:
                images, final = self._pipeline_run(scheduler, batch, x.to(self.device), generators)
            else:
                final = self._loop(scheduler, batch, x.to(self.device), generators)
                images = self._decode(final)
        result = SampleBatch(indices=batch.cpu(), images=images.float().cpu())
        if isinstance(recorder, UNetInputRecorder):
            result.trajectory, _, result.conditioning = recorder.trajectory()
            rows = result.trajectory.shape[1]
            final = final.detach().float().cpu()
            result.final = torch.cat([final] * (rows // final.shape[0]))
        return result

    def _loop(self, scheduler: SchedulerMixin, batch: torch.Tensor, x: torch.Tensor, generators: list) -> torch.Tensor:
        x = x * scheduler.init_noise_sigma
        labels = self.parts.labels(batch).to(self.device) if self.parts.labels is not None else None
        for t in scheduler.timesteps:
            timestep = t.to(self.device)
            eps = self._predict(scheduler.scale_model_input(x, t), timestep, labels)
            x = self._step(scheduler, eps, t, x, generators)
        return x

    def _predict(self, x: torch.Tensor, timestep: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """``eps(x_t, t)``; with labels and ``w != 1``, ``eps_u + w (eps_c - eps_u)`` on the doubled batch."""
        if labels is None:
            return self.unet(x, timestep).sample
        scale = self.parts.guidance_scale
        if scale == 1.0:
            return self.unet(x, timestep, class_labels=labels).sample
        assert self.parts.null_class is not None
        null = torch.full_like(labels, self.parts.null_class)
        eps_u, eps_c = self.unet(_guided_rows(x, True), timestep, class_labels=torch.cat([null, labels])).sample.chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    def _step(
        self, scheduler: SchedulerMixin, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generators: list
    ) -> torch.Tensor:
        # Per-step noise also comes from the per-sample CPU generators; diffusers' ``randn_tensor`` draws it on
        # the CPU and moves it to the sample's device, so every device gets the same noise.
        if isinstance(scheduler, DDIMScheduler):
            return scheduler.step(eps, t, x, eta=self.sampler_cfg.eta, generator=generators).prev_sample
        if "generator" in inspect.signature(scheduler.step).parameters:
            return scheduler.step(eps, t, x, generator=generators).prev_sample
        return scheduler.step(eps, t, x).prev_sample

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], as ``LDMPipeline`` decodes (``x / scaling_factor`` through the VAE)."""
        if self.vae is None:
            return x
        return self.vae.decode(x / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def _pipeline_run(
        self, scheduler: SchedulerMixin, batch: torch.Tensor, x: torch.Tensor, generators: list
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock text-to-image pipeline with this UNet and a fresh scheduler; images in [-1, 1]."""
        template = self.parts.pipeline
        assert self.parts.prompts is not None and self.parts.image_size is not None
        pipeline = type(template)(**{**template.components, "unet": self.unet, "scheduler": scheduler})
        pipeline.set_progress_bar_config(disable=True)
        final: dict[str, torch.Tensor] = {}

        def keep_latents(_pipe: Any, _step: int, _t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            final["latents"] = tensors["latents"]
            return tensors

        extra = {"eta": self.sampler_cfg.eta} if isinstance(scheduler, DDIMScheduler) else {}
        output = pipeline(
            prompt=self.parts.prompts(batch), latents=x, generator=generators,
            num_inference_steps=self.sampler_cfg.num_steps, guidance_scale=self.parts.guidance_scale,
            height=self.parts.image_size, width=self.parts.image_size, output_type="pt",
            callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"], **extra,
        )  # fmt: skip
        return output.images * 2.0 - 1.0, final["latents"]


def _cat_rows(batches: Sequence[SampleBatch]) -> dict[str, torch.Tensor]:
    names = batches[0].conditioning.keys()
    return {name: torch.cat([b.conditioning[name] for b in batches]) for name in names}


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
    parts: Optional[GenerationParts] = None,
    devices: int = 1,
    precision: str = "32-true",
) -> SampleBatch:
    """Generate ``num_samples`` images (and optionally the UNet's inputs) with a Lightning predict loop.

    ``devices`` > 1 runs it under DDP (:mod:`~tfmq_exp.eval.distributed`); the result is the same as on one.
    ``precision``: Lightning's (``32-true``, or ``bf16-mixed`` / ``16-mixed`` for a full-precision reference).
    """
    module = DiffusionSampler(unet, sampler, model, seed_set, record_trajectory, parts)
    batches = predict_on_devices(module, num_samples, batch_size, device, devices, progress, SampleBatch, precision)
    result = SampleBatch(indices=torch.cat([b.indices for b in batches]), images=torch.cat([b.images for b in batches]))
    if record_trajectory:
        result.trajectory = torch.cat([b.trajectory for b in batches], dim=1)
        result.conditioning = _cat_rows(batches)
        result.final = torch.cat([b.final for b in batches])
    return result


def initial_noise(model: ModelConfig, seed_set: int, indices: Iterable[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """``x_T`` ``[B, C, H, W]`` of the given sample indices, from per-sample CPU generators (device independent).

    Returns the generators too: they go on to draw each sample's per-step noise.
    """
    assert model.in_channels is not None and model.sample_size is not None, "resolve the model config first"
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

"""The paper's real denoiser architectures with random weights, for cost measurements where no weights exist here.

Nothing is downloaded at run time, so the published checkpoints are absent on this machine; their *architectures*
are not: :func:`ddpm_cifar10_unet` is the ``UNet2DModel`` of ``google/ddpm-cifar10-32`` (35.7 M parameters),
:func:`ldm4_unet` the LDM-4 ``UNet2DModel`` of ``CompVis/ldm-celebahq-256`` (the LSUN LDM-4 models share it: model
channels 224, multipliers 1-2-3-4, attention at 32/16/8, heads of 32 channels, 3 x 64 x 64 latents; 274 M),
:func:`sd14_unet` Stable Diffusion 1.4's ``UNet2DConditionModel`` (860 M; 4 x 64 x 64 latents, CLIP ViT-L
context 77 x 768), each with its hub config's values; and :func:`save_ddpm_cifar10_pipeline` saves it with its DDPM scheduler as a
``DDPMPipeline`` directory that ``model=ddpm_cifar10 model.path=DIR`` loads exactly like the real weights.
Speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

M = TypeVar("M", bound=nn.Module)


# Each hub config's values (``unet/config.json``); what is not listed is the diffusers class's default.
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
)  # google/ddpm-cifar10-32
LDM4 = dict(
    sample_size=64, in_channels=3, out_channels=3, block_out_channels=(224, 448, 672, 896), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=32,
)  # CompVis/ldm-celebahq-256
SD14 = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    cross_attention_dim=768, attention_head_dim=8,
)  # CompVis/stable-diffusion-v1-4


def _seeded(cls: type[M], config: dict, seed: int) -> M:
    """``cls(**config)`` with weights drawn from ``seed`` (the global RNG state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**config)


def ddpm_cifar10_unet(seed: int = 0) -> UNet2DModel:
    """The google/ddpm-cifar10-32 ``UNet2DModel`` (35.7 M parameters), weights drawn from ``seed``."""
    return _seeded(UNet2DModel, DDPM_CIFAR10, seed)


def ldm4_unet(seed: int = 0) -> UNet2DModel:
    """The LDM-4 ``UNet2DModel`` (274 M parameters), weights drawn from ``seed``."""
    return _seeded(UNet2DModel, LDM4, seed)


def sd14_unet(seed: int = 0) -> UNet2DConditionModel:
    """Stable Diffusion 1.4's ``UNet2DConditionModel`` (860 M parameters), weights drawn from ``seed``."""
    return _seeded(UNet2DConditionModel, SD14, seed)


def save_ddpm_cifar10_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Write :func:`ddpm_cifar10_unet` with the published DDPM schedule (1 000 linear betas 1e-4..0.02) as a
    ``DDPMPipeline`` directory (safetensors); returns ``out_dir``."""
    out_dir = Path(out_dir)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    DDPMPipeline(unet=ddpm_cifar10_unet(seed), scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)
    return out_dir

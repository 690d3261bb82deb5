"""Tiny random-weight diffusers models of every supported form, for tests and quick experiments.

All models are built from constructor arguments (no download, no saved weights) with a fixed seed, so two
calls with the same seed give identical weights. Forms (the adapter's ``form`` in brackets):

- ``digits``: the embedded digits ``UNet2DModel`` (``unet2d``); ``digits_ss`` its scale-shift variant;
- ``digits_class``: the digits geometry with a class embedding (``unet2d_class``);
- ``sd``: an SD-1.x-form ``UNet2DConditionModel`` with cross attention (``sd``); ``sd_class`` adds a class
  embedding (``sd_class``); ``sd_shallow`` is the SD form with one layer per block (``sd``);
- ``sdxl``: the SD-XL form, ``addition_embed_type="text_time"`` (pooled text + size conditioning, ``sdxl``).

:func:`build_tiny_sd_pipeline` wraps a tiny SD-form UNet, a tiny ``AutoencoderKL`` and a DDIM scheduler into
a stock ``StableDiffusionPipeline`` without text encoder or tokenizer (prompts are given as embeddings).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

from tfmq_exp.models.digits import DIGITS_UNET_KWARGS, build_digits_unet

SD_CROSS_ATTENTION_DIM = 32
SDXL_TEXT_EMBED_DIM = 16
SDXL_TIME_EMBED_DIM = 8
SDXL_NUM_TIME_IDS = 6

DIGITS_COMMON: dict[str, Any] = DIGITS_UNET_KWARGS
SD_COMMON: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=SD_CROSS_ATTENTION_DIM,
    attention_head_dim=8,
    norm_num_groups=8,
)


def build_unet2d(**overrides: Any) -> UNet2DModel:
    """A ``UNet2DModel`` of the digits geometry (1 x 8 x 8, widths (32, 64), attention at 4 x 4).

    Args:
        overrides: constructor arguments replacing those of :data:`DIGITS_COMMON` (e.g. another time
            embedding type or block type).
    """
    return UNet2DModel(**{**DIGITS_COMMON, **overrides})


def build_digits_class_unet(num_classes: int = 10) -> UNet2DModel:
    """The digits geometry with an ``nn.Embedding`` class embedding added to ``h(t)``."""
    return build_unet2d(num_class_embeds=num_classes)


def build_sd_unet(**overrides: Any) -> UNet2DConditionModel:
    """An SD-1.x-form ``UNet2DConditionModel`` (4 latent channels, cross attention of width 32).

    Args:
        overrides: constructor arguments replacing those of :data:`SD_COMMON`.
    """
    return UNet2DConditionModel(**{**SD_COMMON, **overrides})


def build_sd_class_unet(num_classes: int = 10) -> UNet2DConditionModel:
    """The SD form with a class embedding (``num_class_embeds``) added to ``h(t)``."""
    return build_sd_unet(num_class_embeds=num_classes)


def build_sd_shallow_unet() -> UNet2DConditionModel:
    """The SD form with one layer per block, widths (32, 64) and cross attention of width 16.

    Four transformer blocks (down 0, mid, up 1 x 2), each with one self- and one cross-attention.
    """
    return build_sd_unet(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16)


def build_sdxl_unet() -> UNet2DConditionModel:
    """The SD-XL form: ``add_embedding(cat(pooled text [16], add_time_proj(6 time ids) [6 x 8]))`` joins ``h``."""
    return build_sd_unet(
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=SDXL_TEXT_EMBED_DIM + SDXL_NUM_TIME_IDS * SDXL_TIME_EMBED_DIM,
        use_linear_projection=True,
    )


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "digits": build_digits_unet,
    "digits_ss": lambda: build_digits_unet(scale_shift=True),
    "digits_class": build_digits_class_unet,
    "sd": build_sd_unet,
    "sd_class": build_sd_class_unet,
    "sd_shallow": build_sd_shallow_unet,
    "sdxl": build_sdxl_unet,
}
FORMS = tuple(BUILDERS)


def build_tiny_unet(form: str, seed: int = 0) -> nn.Module:
    """A tiny random-weight UNet of one form, in eval mode.

    Args:
        form: one of :data:`FORMS`.
        seed: ``torch.manual_seed`` applied before construction (weights are drawn from it).

    Raises:
        KeyError: unknown form (the message lists the known ones).
    """
    if form not in BUILDERS:
        raise KeyError(f"unknown tiny model form {form!r}; choose one of: {', '.join(FORMS)}")
    torch.manual_seed(seed)
    return BUILDERS[form]().eval()


def build_tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    """A two-level ``AutoencoderKL`` (VAE scale factor 2): 16 x 16 RGB images <-> 8 x 8 latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        latent_channels=latent_channels, norm_num_groups=8, sample_size=16, layers_per_block=1,
    )  # fmt: skip


def build_tiny_sd_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's training schedule (scaled linear betas 0.00085..0.012)."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def build_tiny_sd_pipeline(seed: int = 0, unet: nn.Module | None = None) -> Any:
    """A stock ``StableDiffusionPipeline`` around tiny random-weight parts, with no text encoder.

    Call it with ``prompt_embeds`` / ``negative_prompt_embeds`` of shape ``[B, L, 32]`` and
    ``height = width = 16``. Needs the ``transformers`` package (diffusers' pipeline class requires it even
    when the text encoder and tokenizer are ``None``).

    Args:
        seed: seed of the UNet and VAE weights.
        unet: a UNet to use instead of a fresh SD-form one (e.g. a quantized copy).
    """
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    vae = build_tiny_vae().eval()
    unet = unet if unet is not None else build_tiny_unet("sd", seed)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=build_tiny_sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    return pipeline

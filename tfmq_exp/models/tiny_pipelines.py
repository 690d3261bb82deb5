"""Tiny random-weight diffusers pipelines of every supported model family, saved as real pipeline directories.

:func:`save_tiny_pipeline` builds a stock diffusers pipeline from tiny configs and writes it with
``save_pretrained``; the directory then loads with
``DiffusionPipeline.from_pretrained(dir, local_files_only=True)`` exactly like downloaded weights, and generates
16 x 16 images on the CPU in well under a second.
Kinds (:data:`FAMILIES`):

- ``pixel``: ``DDPMPipeline``, a ``UNet2DModel`` on 3 x 16 x 16 images (attention at 8 x 8), DDPM linear betas;
- ``latent``: ``LDMPipeline``, a two-level ``VQModel`` (16 x 16 images <-> 3 x 8 x 8 latents), a ``UNet2DModel``
  on the latents and DDIM with CompVis LDM's betas (scaled linear 0.0015..0.0195);
- ``class_conditional``: an ``LDMPipeline`` directory whose ``UNet2DModel`` has ``num_class_embeds =``
  :data:`NUM_CLASSES` ``+ 1`` (the last label is the null class for classifier-free guidance, as LDM cin256 uses
  label 1000 of 1001) on 4 x 8 x 8 latents, with an ``AutoencoderKL`` as its ``vqvae`` component (diffusers
  loads it with the warning ``Expected types for vqvae: (VQModel,), got AutoencoderKL``). The pipeline class is
  only a container: the stock ``LDMPipeline.__call__`` passes no class labels (the UNet raises
  ``class_labels should be provided when doing class conditioning``); sample with the framework's own loop;
- ``text_to_image``: ``StableDiffusionPipeline`` (SD-1.x form): CLIP text encoder of width 32, a CLIP tokenizer
  with a tiny vocabulary, ``AutoencoderKL``, PNDM with SD's betas, no safety checker;
- ``sdxl``: ``StableDiffusionXLPipeline``: two CLIP text encoders (widths 12 and 20, the second with a
  projection to :data:`~tfmq_exp.models.tiny.SDXL_TEXT_EMBED_DIM`), two tokenizers, the tiny SD-XL-form UNet
  (cross attention of width 12 + 20 = 32), ``AutoencoderKL``, Euler with SD-XL's betas.

The tokenizer vocabulary (97 tokens) holds the lowercase letters, digits, a few punctuation marks (each in
word-inner and word-final ``</w>`` form) and some merges (``the``, ``cat``, ``and`` ...); the tokenizer lowercases,
and any other character maps to the unknown token ``<|unk|>``, so every prompt tokenizes. Weights are drawn from
``torch.manual_seed(seed)`` (the global RNG state is restored afterwards): the same seed gives byte-identical
files.

Command line: ``python -m tfmq_exp.models.tiny_pipelines KIND OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tfmq_exp.models.tiny import SDXL_TEXT_EMBED_DIM, build_sd_unet, build_sdxl_unet, build_tiny_vae

FAMILIES = ("pixel", "latent", "class_conditional", "text_to_image", "sdxl")

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the class label of the unconditional branch of classifier-free guidance
IMAGE_SIZE = 16
LATENT_SIZE = 8
MAX_PROMPT_TOKENS = 77
SD_TEXT_HIDDEN = 32
SDXL_TEXT_HIDDEN = (12, 20)  # text_encoder, text_encoder_2 (unequal, so a swapped concatenation shows)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789!,.'-"
# BPE merges (in priority order); each result is added to the vocabulary.
_MERGES = (
    ("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>"),
    ("o", "f</w>"), ("i", "n</w>"), ("o", "n</w>"), ("a", "n</w>"), ("d", "o"), ("do", "g</w>"),
)  # fmt: skip


def tiny_clip_vocab() -> tuple[dict[str, int], list[str]]:
    """The tiny CLIP BPE vocabulary and merges (``"left right"`` lines, priority order).

    Ids: ``<|startoftext|>`` 0, ``<|endoftext|>`` 1 (also the padding token), ``<|unk|>`` 2, then each
    character of the alphabet, then each character with the word-end marker ``</w>``, then the merge results.
    The unknown token is not ``<|endoftext|>`` (as in real CLIP, whose byte-level vocabulary never needs it):
    CLIP pools the text embedding at the first end-of-text token, which an unknown character must not fake.
    """
    tokens = [BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *_TOKEN_CHARS, *(f"{c}</w>" for c in _TOKEN_CHARS)]
    tokens += [left + right for left, right in _MERGES]
    return {token: index for index, token in enumerate(tokens)}, [f"{left} {right}" for left, right in _MERGES]


def write_tiny_clip_vocab(directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of :func:`tiny_clip_vocab` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_clip_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n", encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def build_tiny_clip_tokenizer(pad_token: str = EOS_TOKEN) -> Any:
    """A ``CLIPTokenizer`` loaded from the tiny ``vocab.json`` / ``merges.txt`` (77 tokens per prompt).

    Args:
        pad_token: the padding token (SD-XL's second tokenizer pads with ``"!"``, the first with
            ``<|endoftext|>``).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as directory:
        write_tiny_clip_vocab(directory)
        return CLIPTokenizer.from_pretrained(
            directory, model_max_length=MAX_PROMPT_TOKENS, pad_token=pad_token, unk_token=UNK_TOKEN,
            bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        )  # fmt: skip


def _clip_text_config(hidden: int, hidden_act: str, projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    vocab, _ = tiny_clip_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_PROMPT_TOKENS, hidden_act=hidden_act,
        projection_dim=projection_dim if projection_dim is not None else hidden,
        bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN],
    )  # fmt: skip


def build_tiny_clip_text_model(hidden: int = SD_TEXT_HIDDEN, hidden_act: str = "quick_gelu") -> Any:
    """A two-layer, two-head ``CLIPTextModel`` of width ``hidden`` over the tiny vocabulary, in eval mode."""
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_text_config(hidden, hidden_act)).eval()


def build_tiny_clip_text_model_with_projection(
    hidden: int = SDXL_TEXT_HIDDEN[1], projection_dim: int = SDXL_TEXT_EMBED_DIM, hidden_act: str = "gelu"
) -> Any:
    """A two-layer ``CLIPTextModelWithProjection`` (pooled output projected to ``projection_dim``), eval mode."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_text_config(hidden, hidden_act, projection_dim)).eval()


def _small_unet2d(channels: int, sample_size: int, **overrides: Any) -> Any:
    """A small ``UNet2DModel``: widths (16, 32), one layer per block, attention at the lower resolution."""
    from diffusers import UNet2DModel

    kwargs: dict[str, Any] = dict(
        sample_size=sample_size, in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    return UNet2DModel(**{**kwargs, **overrides}).eval()


def build_tiny_vq_model(latent_channels: int = 3) -> Any:
    """A two-level ``VQModel`` (scale factor 2): 16 x 16 RGB images <-> 8 x 8 latents, a codebook of 32 entries.

    ``scaling_factor`` keeps diffusers' default 0.18215, as the CompVis LDM checkpoints load (their configs
    set none; ``LDMPipeline`` divides the latents by it before decoding).
    """
    from diffusers import VQModel

    return VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=latent_channels, num_vq_embeddings=32, norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    ).eval()  # fmt: skip


def _ldm_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        clip_sample=False,
    )  # fmt: skip


def build_pixel_pipeline() -> Any:
    """``DDPMPipeline``: a ``UNet2DModel`` on 3 x 16 x 16 images and a linear-beta ``DDPMScheduler``."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = _small_unet2d(3, IMAGE_SIZE)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return DDPMPipeline(unet=unet, scheduler=scheduler)


def build_latent_pipeline() -> Any:
    """``LDMPipeline``: a two-level ``VQModel``, a ``UNet2DModel`` on 3 x 8 x 8 latents, DDIM with LDM's betas."""
    from diffusers import LDMPipeline

    vqvae = build_tiny_vq_model(latent_channels=3)
    unet = _small_unet2d(3, LATENT_SIZE)
    return LDMPipeline(vqvae=vqvae, unet=unet, scheduler=_ldm_scheduler())


def build_class_conditional_pipeline() -> Any:
    """``LDMPipeline`` container: ``AutoencoderKL`` (as ``vqvae``) and a class-embedding ``UNet2DModel``.

    The UNet has ``NUM_CLASSES + 1`` class embeddings; label :data:`NULL_CLASS` is the unconditional one.
    """
    from diffusers import LDMPipeline

    vae = build_tiny_vae(latent_channels=4).eval()
    unet = _small_unet2d(4, LATENT_SIZE, num_class_embeds=NUM_CLASSES + 1)
    return LDMPipeline(vqvae=vae, unet=unet, scheduler=_ldm_scheduler())


def build_text_to_image_pipeline() -> Any:
    """``StableDiffusionPipeline``: tiny CLIP text encoder + tokenizer, SD-form UNet, ``AutoencoderKL``, PNDM."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    text_encoder = build_tiny_clip_text_model(SD_TEXT_HIDDEN)
    unet = build_sd_unet(cross_attention_dim=SD_TEXT_HIDDEN).eval()
    vae = build_tiny_vae().eval()
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def build_sdxl_pipeline() -> Any:
    """``StableDiffusionXLPipeline``: two tiny CLIP encoders and tokenizers, the SD-XL-form UNet, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    hidden_1, hidden_2 = SDXL_TEXT_HIDDEN
    text_encoder = build_tiny_clip_text_model(hidden_1, hidden_act="quick_gelu")
    text_encoder_2 = build_tiny_clip_text_model_with_projection(hidden_2, projection_dim=SDXL_TEXT_EMBED_DIM)
    unet = build_sdxl_unet().eval()
    check_sdxl_dims(unet, text_encoder, text_encoder_2)
    vae = build_tiny_vae().eval()
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False,
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=build_tiny_clip_tokenizer(),
        tokenizer_2=build_tiny_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )  # fmt: skip


def check_sdxl_dims(unet: Any, text_encoder: Any, text_encoder_2: Any) -> None:
    """Raise ``ValueError`` unless the UNet's cross attention and added-conditioning widths fit the encoders.

    SD-XL concatenates both encoders' hidden states (cross attention width ``hidden_1 + hidden_2``) and feeds
    ``cat(pooled projection of text_encoder_2, add_time_proj(6 time ids))`` to ``add_embedding``.
    """
    config = unet.config
    hidden = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    if config.cross_attention_dim != hidden:
        raise ValueError(f"UNet cross_attention_dim {config.cross_attention_dim} != text hidden sizes {hidden}")
    added = text_encoder_2.config.projection_dim + 6 * config.addition_time_embed_dim
    if config.projection_class_embeddings_input_dim != added:
        raise ValueError(
            f"UNet projection_class_embeddings_input_dim {config.projection_class_embeddings_input_dim} != "
            f"pooled text projection {text_encoder_2.config.projection_dim} + 6 x {config.addition_time_embed_dim}"
        )


BUILDERS: dict[str, Callable[[], Any]] = {
    "pixel": build_pixel_pipeline,
    "latent": build_latent_pipeline,
    "class_conditional": build_class_conditional_pipeline,
    "text_to_image": build_text_to_image_pipeline,
    "sdxl": build_sdxl_pipeline,
}


def build_tiny_pipeline(kind: str, seed: int = 0) -> Any:
    """A tiny random-weight stock diffusers pipeline of one family (see the module docstring).

    The global torch RNG is seeded with ``seed`` for the construction and restored afterwards.

    Raises:
        KeyError: unknown kind (the message lists the known ones).
    """
    if kind not in BUILDERS:
        raise KeyError(f"unknown tiny pipeline kind {kind!r}; choose one of: {', '.join(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = BUILDERS[kind]()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_tiny_pipeline(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline of ``kind`` and write it with ``save_pretrained`` (safetensors) to ``out_dir``.

    Args:
        kind: one of :data:`FAMILIES`.
        out_dir: the pipeline directory (created; existing files of the same names are overwritten).
        seed: seed of all weights; the same seed gives byte-identical files.

    Returns:
        ``out_dir`` as a ``Path``; load it with
        ``DiffusionPipeline.from_pretrained(out_dir, local_files_only=True)``.
    """
    out_dir = Path(out_dir)
    pipeline = build_tiny_pipeline(kind, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):  # transformers 5 saves only tokenizer.json; add the classic files
        if getattr(pipeline, name, None) is not None:
            write_tiny_clip_vocab(out_dir / name)
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m tfmq_exp.models.tiny_pipelines KIND OUT_DIR [--seed N]``: write a tiny pipeline directory."""
    parser = argparse.ArgumentParser(
        prog="python -m tfmq_exp.models.tiny_pipelines",
        description="Write a tiny random-weight diffusers pipeline directory (loadable with from_pretrained).",
    )
    parser.add_argument("kind", choices=FAMILIES, help="model family")
    parser.add_argument("out_dir", type=Path, help="output pipeline directory")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    path = save_tiny_pipeline(args.kind, args.out_dir, args.seed)
    print(path)
    return path


if __name__ == "__main__":
    main()

"""Tiny random-weight pipelines of every family save, load with ``DiffusionPipeline.from_pretrained``, generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the text pipelines need transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, EulerDiscreteScheduler,
    LDMPipeline, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel,
    UNet2DModel, VQModel,
)  # fmt: skip
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from tfmq_exp.models import tiny_pipelines  # noqa: E402
from tfmq_exp.models.tiny import SDXL_TEXT_EMBED_DIM, build_sdxl_unet  # noqa: E402
from tfmq_exp.models.tiny_pipelines import (  # noqa: E402
    FAMILIES, MAX_PROMPT_TOKENS, NULL_CLASS, NUM_CLASSES, UNK_TOKEN, build_tiny_clip_text_model,
    build_tiny_clip_text_model_with_projection, build_tiny_clip_tokenizer, check_sdxl_dims, save_tiny_pipeline,
)  # fmt: skip

SIZE = 16
STEPS = 2

EXPECTED = {
    "pixel": (DDPMPipeline, {"unet": UNet2DModel, "scheduler": DDPMScheduler}),
    "latent": (LDMPipeline, {"vqvae": VQModel, "unet": UNet2DModel, "scheduler": DDIMScheduler}),
    "class_conditional": (LDMPipeline, {"vqvae": AutoencoderKL, "unet": UNet2DModel, "scheduler": DDIMScheduler}),
    "text_to_image": (
        StableDiffusionPipeline,
        {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "tokenizer": CLIPTokenizer,
         "unet": UNet2DConditionModel, "scheduler": PNDMScheduler},
    ),  # fmt: skip
    "sdxl": (
        StableDiffusionXLPipeline,
        {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
         "tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "unet": UNet2DConditionModel,
         "scheduler": EulerDiscreteScheduler},
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family saved once (seed 0) into a module-wide temporary directory."""
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in FAMILIES}


_loaded: dict[str, DiffusionPipeline] = {}


def load(saved: dict[str, Path], kind: str) -> DiffusionPipeline:
    """The saved pipeline of ``kind`` loaded exactly as a downloaded one (cached per module)."""
    if kind not in _loaded:
        pipeline = DiffusionPipeline.from_pretrained(saved[kind], local_files_only=True)
        pipeline.set_progress_bar_config(disable=True)
        _loaded[kind] = pipeline
    return _loaded[kind]


def check_images(images: np.ndarray, count: int = 1) -> None:
    assert images.shape == (count, SIZE, SIZE, 3)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.0


@pytest.mark.parametrize("kind", FAMILIES)
def test_loads_with_stock_classes(saved: dict[str, Path], kind: str) -> None:
    assert (saved[kind] / "model_index.json").is_file()
    pipeline = load(saved, kind)
    pipeline_class, components = EXPECTED[kind]
    assert type(pipeline) is pipeline_class
    for name, component_class in components.items():
        assert isinstance(pipeline.components[name], component_class), name


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_unconditional_generation(saved: dict[str, Path], kind: str) -> None:
    pipeline = load(saved, kind)
    out = pipeline(batch_size=2, num_inference_steps=STEPS, output_type="np", generator=torch.manual_seed(0))
    check_images(out.images, 2)


def test_latent_geometry(saved: dict[str, Path]) -> None:
    pipeline = load(saved, "latent")
    assert pipeline.unet.config.in_channels == pipeline.vqvae.config.latent_channels == 3
    assert pipeline.unet.config.sample_size == SIZE // 2
    config = pipeline.scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.0015, 0.0195, "scaled_linear")
    assert not config.clip_sample


def test_class_conditional_unet_and_decoder(saved: dict[str, Path]) -> None:
    pipeline = load(saved, "class_conditional")
    unet = pipeline.unet
    assert unet.config.num_class_embeds == NUM_CLASSES + 1 and NULL_CLASS == NUM_CLASSES
    latents = torch.randn(3, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, NUM_CLASSES - 1, NULL_CLASS])
    with torch.no_grad():
        eps = unet(latents, torch.tensor(500), class_labels=labels).sample
        eps_other = unet(latents, torch.tensor(500), class_labels=torch.tensor([1, 2, 3])).sample
        image = pipeline.vqvae.decode(latents / pipeline.vqvae.config.scaling_factor).sample
    assert eps.shape == latents.shape and torch.isfinite(eps).all()
    assert not torch.allclose(eps, eps_other)  # the label changes the prediction
    assert image.shape == (3, 3, SIZE, SIZE)


def test_text_to_image_generation_with_guidance(saved: dict[str, Path]) -> None:
    pipeline = load(saved, "text_to_image")
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    out = pipeline(
        prompt=["a cat on the mat", "Photo of an astronaut, 42 UEBER café!"], negative_prompt=["blurry", ""],
        num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=7.5, output_type="np",
        generator=torch.manual_seed(0),
    )  # fmt: skip
    check_images(out.images, 2)


def test_sdxl_generation_with_guidance(saved: dict[str, Path]) -> None:
    pipeline = load(saved, "sdxl")
    check_sdxl_dims(pipeline.unet, pipeline.text_encoder, pipeline.text_encoder_2)
    out = pipeline(
        prompt="a dog", num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=7.5, output_type="np",
        generator=torch.manual_seed(0),
    )  # fmt: skip
    check_images(out.images)


@pytest.mark.parametrize("kind", ["text_to_image", "sdxl"])
def test_callback_on_step_end_and_given_latents(saved: dict[str, Path], kind: str) -> None:
    pipeline = load(saved, kind)
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(3))
    seen: list[tuple[int, float, tuple[int, ...], tuple[int, ...]]] = []

    def record(pipe, step: int, timestep: torch.Tensor, kwargs: dict) -> dict:
        seen.append((step, float(timestep), tuple(kwargs["latents"].shape), tuple(kwargs["prompt_embeds"].shape)))
        return {}

    def run(generator_seed: int, callback=None) -> np.ndarray:
        extra = {} if callback is None else dict(
            callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]
        )  # fmt: skip
        return pipeline(
            prompt="the cat", num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=7.5,
            latents=latents.clone(), output_type="np", generator=torch.manual_seed(generator_seed), **extra,
        ).images  # fmt: skip

    first = run(0, record)
    timesteps = [float(t) for t in pipeline.scheduler.timesteps]  # PNDM's PLMS steps repeat the first timestep
    assert len(timesteps) >= STEPS
    assert [s[0] for s in seen] == list(range(len(timesteps))) and [s[1] for s in seen] == timesteps
    assert all(s[2] == (1, 4, SIZE // 2, SIZE // 2) for s in seen)
    assert all(s[3][0] == 2 for s in seen)  # classifier-free guidance: negative and positive embeddings
    np.testing.assert_array_equal(first, run(1))  # the given latents, not the generator, fix the result

    def zero_latents(pipe, step: int, timestep: torch.Tensor, kwargs: dict) -> dict:
        return {"latents": torch.zeros_like(kwargs["latents"])}

    assert not np.array_equal(first, run(0, zero_latents))  # the callback's returned latents are used


def test_same_seed_gives_identical_files(saved: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("latent", "sdxl"):
        again = save_tiny_pipeline(kind, tmp_path / kind, seed=0)
        files = sorted(p.relative_to(saved[kind]) for p in saved[kind].rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
        for name in files:
            assert (saved[kind] / name).read_bytes() == (again / name).read_bytes(), name
    other = save_tiny_pipeline("pixel", tmp_path / "pixel1", seed=1)
    weights = Path("unet/diffusion_pytorch_model.safetensors")
    assert (saved["pixel"] / weights).read_bytes() != (other / weights).read_bytes()


def test_rng_state_is_restored(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipelines.build_tiny_pipeline("pixel", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_handles_any_prompt() -> None:
    tokenizer = build_tiny_clip_tokenizer()
    for prompt in ["", "The CAT and the dog.", "café 42 日本語 ~@# it's", "x " * 200]:
        ids = tokenizer(prompt, padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True).input_ids
        assert len(ids) == MAX_PROMPT_TOKENS and ids[0] == tokenizer.bos_token_id
        assert max(ids) < len(tokenizer)
    tokens = tokenizer.tokenize("the cat é")
    assert tokens[:2] == ["the</w>", "cat</w>"] and UNK_TOKEN in tokens
    assert build_tiny_clip_text_model().config.vocab_size == len(tokenizer)


def test_check_sdxl_dims_rejects_mismatch() -> None:
    unet = build_sdxl_unet()
    check_sdxl_dims(unet, build_tiny_clip_text_model(12), build_tiny_clip_text_model_with_projection(20))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        check_sdxl_dims(unet, build_tiny_clip_text_model(16), build_tiny_clip_text_model_with_projection(20))
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim"):
        check_sdxl_dims(
            unet, build_tiny_clip_text_model(12),
            build_tiny_clip_text_model_with_projection(20, projection_dim=SDXL_TEXT_EMBED_DIM + 1),
        )  # fmt: skip


def test_unknown_kind() -> None:
    with pytest.raises(KeyError, match="choose one of"):
        tiny_pipelines.build_tiny_pipeline("video")


def test_command_line(tmp_path: Path) -> None:
    path = tiny_pipelines.main(["pixel", str(tmp_path / "cli"), "--seed", "2"])
    assert (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file()
    with pytest.raises(SystemExit):
        tiny_pipelines.main(["video", str(tmp_path / "bad")])

"""A quantized SD-form UNet (tiny, random weights) runs inside a stock diffusers ``StableDiffusionPipeline``.

The pipeline is built from configs with no text encoder or tokenizer (prompts are given as embeddings); the
quantized UNet (W8A8, FSC on the TIB through the UNet's timestep pre-hook) replaces the original one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="diffusers' StableDiffusionPipeline needs transformers")

from tests.helpers import attach_fsc, method_config, model_config, quant_config, quantized_copy  # noqa: E402
from tfmq_exp.models.adapters import get_adapter  # noqa: E402
from tfmq_exp.models.tiny import SD_CROSS_ATTENTION_DIM, build_tiny_sd_pipeline  # noqa: E402
from tfmq_exp.quant import TimestepContext, iter_quant_modules, observing_activations  # noqa: E402
from tfmq_exp.temporal.maintenance import install_cache, iter_cache_modules  # noqa: E402

STEPS = 3
IMAGE_SIZE = 16


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = float(np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-20))


def generate(pipeline, prompt_embeds: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    return pipeline(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, num_inference_steps=STEPS,
        height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="np", generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def with_unet(pipeline, unet: nn.Module):
    """The same stock pipeline class and components, with ``unet`` in place of the pipeline's UNet."""
    swapped = type(pipeline)(**{**pipeline.components, "unet": unet}, requires_safety_checker=False)
    swapped.set_progress_bar_config(disable=True)
    return swapped


def quantize_unet(unet_fp: nn.Module, timesteps: list[int]) -> tuple[nn.Module, TimestepContext]:
    """W8A8 copy of the UNet, activations calibrated on random inputs at ``timesteps`` (FSC on the TIB)."""
    unet_q = quantized_copy(unet_fp, quant_config(8, 8), model_config("sd"), method_config(name="fsc", fsc=True))
    context = attach_fsc(unet_q, get_adapter(unet_fp).tib().layer_names(), timesteps)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad(), observing_activations(unet_q):
        for t in timesteps:
            for _ in range(2):
                sample = torch.randn(2, 4, 8, 8, generator=generator)
                states = torch.randn(2, 4, SD_CROSS_ATTENTION_DIM, generator=generator)
                unet_q(sample, torch.tensor(t), encoder_hidden_states=states)
    return unet_q, context


@pytest.fixture(scope="module")
def setup():
    pipeline = build_tiny_sd_pipeline(seed=0)
    pipeline.scheduler.set_timesteps(STEPS)
    timesteps = [int(t) for t in pipeline.scheduler.timesteps]
    generator = torch.Generator().manual_seed(2)
    prompt_embeds = torch.randn(1, 4, SD_CROSS_ATTENTION_DIM, generator=generator)
    negative = torch.randn(1, 4, SD_CROSS_ATTENTION_DIM, generator=generator)
    reference = generate(pipeline, prompt_embeds, negative)
    unet_q, context = quantize_unet(pipeline.unet, timesteps)
    return pipeline, timesteps, prompt_embeds, negative, reference, unet_q, context


def test_quantized_unet_runs_inside_the_stock_pipeline(setup) -> None:
    pipeline, timesteps, prompt_embeds, negative, reference, unet_q, context = setup
    assert timesteps == [667, 334, 1]
    quantized_pipeline = with_unet(pipeline, unet_q)
    assert sum(1 for _ in iter_quant_modules(quantized_pipeline.unet)) > 20
    seen: list[int] = []
    handle = unet_q.register_forward_pre_hook(lambda module, args: seen.append(context.current))
    images = generate(quantized_pipeline, prompt_embeds, negative)
    handle.remove()
    assert seen == timesteps  # the pipeline's 0-d timestep reached the FSC context, one call per step (CFG batch)
    assert images.shape == reference.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.isfinite(images).all()
    assert psnr(reference, images) > 30.0


def test_cache_maintained_unet_runs_inside_the_stock_pipeline(setup) -> None:
    pipeline, timesteps, prompt_embeds, negative, reference, unet_q, context = setup
    unet_cached = copy.deepcopy(unet_q)
    install_cache(unet_cached, pipeline.unet, context, timesteps, bits=8)
    assert sum(1 for _ in iter_cache_modules(unet_cached)) == 2 + len(get_adapter(pipeline.unet).tib().features)
    images = generate(with_unet(pipeline, unet_cached), prompt_embeds, negative)
    assert np.isfinite(images).all() and psnr(reference, images) > 30.0

"""Sampling: per-sample noise makes samples independent of batch size; same seed set, same samples."""

from __future__ import annotations

import pytest
import torch

from tfmq_exp.config.schema import ModelConfig, SamplerConfig
from tfmq_exp.eval.sampling import generate, sampling_timesteps
from tfmq_exp.models.digits import build_digits_unet

MODEL = ModelConfig(name="digits")


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_digits_unet().eval()


@pytest.mark.parametrize("sampler", [SamplerConfig(num_steps=4), SamplerConfig(num_steps=4, eta=1.0),
                                     SamplerConfig(name="ddpm", num_steps=4, eta=1.0)], ids=["ddim", "ddim-eta1", "ddpm"])
def test_samples_do_not_depend_on_batch_size(unet: torch.nn.Module, sampler: SamplerConfig) -> None:
    whole = generate(unet, sampler, MODEL, 6, 6, seed_set=3, progress=False)
    split = generate(unet, sampler, MODEL, 6, 4, seed_set=3, progress=False)
    torch.testing.assert_close(whole.images, split.images, atol=1e-4, rtol=0)
    other = generate(unet, sampler, MODEL, 6, 6, seed_set=4, progress=False)
    assert (other.images - whole.images).abs().max() > 1e-2


def test_trajectory_records_every_step(unet: torch.nn.Module) -> None:
    result = generate(unet, SamplerConfig(num_steps=5), MODEL, 3, 3, seed_set=0, record_trajectory=True, progress=False)
    assert result.trajectory is not None and result.trajectory.shape == (5, 3, 1, 8, 8)
    assert sampling_timesteps(SamplerConfig(num_steps=5), MODEL) == [800, 600, 400, 200, 0]

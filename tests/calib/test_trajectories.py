"""Calibration trajectories: one FP sampling pass, cached in the store (hit / miss / corruption)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.calib.helpers import digits_unet, make_config
from tfmq_exp.calib import CALIBRATION_KIND, calibration_seed_set, load_or_capture
from tfmq_exp.eval.sampling import DiffusionSampler, sampling_timesteps
from tfmq_exp.store import TENSORS_FILE, ArtifactStore


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return digits_unet(seed=0)


def test_capture_records_every_step_then_hits(unet: torch.nn.Module, tmp_path: Path) -> None:
    config = make_config(tmp_path, num_steps=5, num_samples=6)
    store = ArtifactStore(tmp_path / "store")
    data, hit = load_or_capture(unet, config, store)
    assert not hit
    assert data.x.shape == (5, 6, 1, 8, 8) and data.conditioning == {}
    assert data.timesteps == sampling_timesteps(config.sampler, config.model) == [800, 600, 400, 200, 0]
    # Step 0 is the initial noise of the calibration seed set, not of the evaluation seed set.
    sampler = DiffusionSampler(unet, config.sampler, config.model, calibration_seed_set(config.calib.seed))
    noise, _ = sampler.initial_noise(torch.arange(6))
    torch.testing.assert_close(data.x[0], noise)
    eval_sampler = DiffusionSampler(unet, config.sampler, config.model, config.eval.seed_set)
    eval_noise, _ = eval_sampler.initial_noise(torch.arange(6))
    assert not torch.allclose(data.x[0], eval_noise)
    # Later steps differ from the noise (the sampler actually ran).
    assert (data.x[-1] - data.x[0]).abs().mean() > 1e-3

    again, hit = load_or_capture(unet, config, store)
    assert hit and torch.equal(again.x, data.x) and again.timesteps == data.timesteps
    assert len(list((tmp_path / "store" / CALIBRATION_KIND).iterdir())) == 2  # entry + its lock file


def test_anything_that_produced_the_data_changes_the_key(unet: torch.nn.Module, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    base, _ = load_or_capture(unet, make_config(tmp_path, num_samples=4), store)
    other_seed, hit = load_or_capture(unet, make_config(tmp_path, num_samples=4, calib_seed=7), store)
    assert not hit and not torch.equal(other_seed.x, base.x)
    more, hit = load_or_capture(unet, make_config(tmp_path, num_samples=5), store)
    assert not hit and torch.equal(more.x[:, :4], base.x)  # per-sample noise: the first 4 trajectories agree
    _, hit = load_or_capture(unet, make_config(tmp_path, num_samples=4, num_steps=3), store)
    assert not hit
    _, hit = load_or_capture(digits_unet(seed=1), make_config(tmp_path, num_samples=4), store)
    assert not hit
    # Settings that only change how the pass runs do not change the key.
    config = make_config(tmp_path, num_samples=4)
    config.eval.batch_size = 3
    _, hit = load_or_capture(unet, config, store)
    assert hit


def test_corrupt_entry_is_rebuilt_with_a_warning(
    unet: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, num_samples=4)
    store = ArtifactStore(tmp_path / "store")
    data, _ = load_or_capture(unet, config, store)
    (tensors_file,) = (tmp_path / "store" / CALIBRATION_KIND).glob(f"*/{TENSORS_FILE}")
    raw = bytearray(tensors_file.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the tensor data
    tensors_file.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tfmq_exp.store"):
        rebuilt, hit = load_or_capture(unet, config, store)
    assert not hit and "corrupt" in caplog.text
    assert torch.equal(rebuilt.x, data.x)
    _, hit = load_or_capture(unet, config, store)
    assert hit

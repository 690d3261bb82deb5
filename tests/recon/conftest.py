"""Fixtures of the reconstruction tests: the tiny digits UNet and its calibration data (captured once)."""

from __future__ import annotations

import pytest
import torch

from tests.calib.helpers import digits_unet, make_config
from tfmq_exp.calib import CalibrationData, load_or_capture
from tfmq_exp.store import ArtifactStore


@pytest.fixture(scope="session")
def recon_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("recon_cache")


@pytest.fixture(scope="session")
def digits(recon_cache) -> tuple[torch.nn.Module, CalibrationData]:
    """The FP digits UNet (random weights, seed 0) and its calibration data (DDIM-4, 16 trajectories)."""
    unet = digits_unet(seed=0)
    data, _ = load_or_capture(unet, make_config(recon_cache), ArtifactStore(recon_cache / "store"))
    return unet, data

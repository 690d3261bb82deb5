"""Model loading: local directories of every family, and a clear offline error for absent weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tfmq_exp.config.schema import ModelConfig
from tfmq_exp.errors import MissingWeightsError, UserError
from tfmq_exp.models.loading import load_unet
from tfmq_exp.models.tiny import build_tiny_unet


@pytest.mark.parametrize(
    ("family", "form"), [("pixel", "digits"), ("text_to_image", "sd_shallow")], ids=["pixel", "text_to_image"]
)
def test_model_path_loads_a_saved_unet(tmp_path: Path, family: str, form: str) -> None:
    unet = build_tiny_unet(form, seed=0)
    unet.save_pretrained(tmp_path / "unet")
    config = ModelConfig(name="custom", family=family, path=str(tmp_path), subfolder="unet", sample_size=None,
                         in_channels=None)
    loaded = load_unet(config)
    assert type(loaded) is type(unet) and not loaded.training
    for (name, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["ddpm_cifar10", "sd_v1_4"])
def test_real_model_without_weights_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = {"ddpm_cifar10": "google/ddpm-cifar10-32", "sd_v1_4": "CompVis/stable-diffusion-v1-4"}[name]
    family = "pixel" if name == "ddpm_cifar10" else "text_to_image"
    with pytest.raises(MissingWeightsError) as error:
        load_unet(ModelConfig(name=name, family=family, path=hub_id))
    message = str(error.value)
    assert hub_id in message and "model.path" in message and "\n" not in message


def test_missing_local_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="cannot load"):
        load_unet(ModelConfig(name="custom", path=str(tmp_path / "nowhere")))


def test_stated_geometry_that_the_weights_contradict_fails_clearly(tmp_path: Path) -> None:
    build_tiny_unet("digits", seed=0).save_pretrained(tmp_path / "unet")
    with pytest.raises(UserError, match="model.in_channels=3 but the loaded UNet has 1"):
        load_unet(ModelConfig(name="custom", path=str(tmp_path), subfolder="unet", in_channels=3))

"""Model loading: local directories of every family, and a clear offline error for absent weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from tfmq_exp.config.schema import ModelConfig
from tfmq_exp.errors import MissingWeightsError
from tfmq_exp.models.loading import load_unet


def _tiny_condition_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )


@pytest.mark.parametrize(
    ("family", "build"),
    [("unet2d", lambda: UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32), norm_num_groups=8,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))),
     ("unet2d_condition", _tiny_condition_unet)],
    ids=["unet2d", "unet2d_condition"],
)
def test_model_path_loads_a_saved_unet(tmp_path: Path, family: str, build) -> None:
    torch.manual_seed(0)
    unet = build()
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_unet(ModelConfig(name="custom", family=family, path=str(tmp_path), subfolder="unet"))
    assert type(loaded) is type(unet) and not loaded.training
    for (name, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["ddpm_cifar10", "sd_v1_4"])
def test_real_model_without_weights_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = {"ddpm_cifar10": "google/ddpm-cifar10-32", "sd_v1_4": "CompVis/stable-diffusion-v1-4"}[name]
    family = "unet2d" if name == "ddpm_cifar10" else "unet2d_condition"
    with pytest.raises(MissingWeightsError) as error:
        load_unet(ModelConfig(name=name, family=family, path=hub_id, subfolder=None if family == "unet2d" else "unet"))
    message = str(error.value)
    assert hub_id in message and "model.path" in message and "\n" not in message


def test_missing_local_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="cannot load"):
        load_unet(ModelConfig(name="custom", path=str(tmp_path / "nowhere")))

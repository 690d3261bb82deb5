"""The digits DDPM trainer: a real Lightning fit, deterministic for a seed, loadable output."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tfmq_exp.config.schema import ModelConfig, TrainConfig
from tfmq_exp.models.loading import load_unet
from tfmq_exp.models.train_digits import train_digits


def test_few_iterations_train_deterministically(tmp_path: Path) -> None:
    model = ModelConfig(name="digits")
    train = TrainConfig(iters=3, batch_size=16)
    first = train_digits(model, train, seed=0, out_dir=tmp_path / "a", progress=False)
    second = train_digits(model, train, seed=0, out_dir=tmp_path / "b", progress=False)
    unet_a = load_unet(ModelConfig(name="digits", path=str(first)))
    unet_b = load_unet(ModelConfig(name="digits", path=str(second)))
    for (name, a), (_, b) in zip(unet_a.state_dict().items(), unet_b.state_dict().items()):
        assert torch.equal(a, b), name
    provenance = json.loads((first / "training.json").read_text())
    assert provenance["iters"] == 3 and "tfmq-exp task=train_digits" in provenance["command"]


def test_scale_shift_variant_is_built_for_digits_ss(tmp_path: Path) -> None:
    out = train_digits(ModelConfig(name="digits_ss"), TrainConfig(iters=1, batch_size=8), 0, tmp_path, progress=False)
    assert load_unet(ModelConfig(name="digits_ss", path=str(out))).config.resnet_time_scale_shift == "scale_shift"

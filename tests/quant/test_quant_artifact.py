"""Quantized artifacts: bitwise round trip (AdaRound, frozen codes, FSC tables, split), loud mismatches."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from tests.quant.helpers import digits_model_config, digits_split_model_config, digits_unet, method_config, quant_config
from tfmq_exp.models.adapters import get_adapter
from tfmq_exp.models.digits import build_digits_unet
from tfmq_exp.quant.api import enable_adaround, enable_per_timestep, freeze_weights, observing_activations, quantize_
from tfmq_exp.quant.artifact import ArtifactError, load_artifact, save_artifact
from tfmq_exp.quant.context import TimestepContext, attach_timestep_context

TIMESTEPS = [999, 500, 1]
TEMPORAL = {"time_embedding.linear_2"} | {
    f"{block}.resnets.{i}.time_emb_proj"
    for block, count in (
        ("down_blocks.0", 1),
        ("down_blocks.1", 1),
        ("mid_block", 2),
        ("up_blocks.0", 2),
        ("up_blocks.1", 2),
    )
    for i in range(count)
}


def run_config(w_bits: int = 4, **quant_overrides) -> dict:
    return {
        "model": dataclasses.asdict(digits_split_model_config()),
        "quant": dataclasses.asdict(quant_config(w_bits, 8, temporal_a_bits=6, **quant_overrides)),
        "method": dataclasses.asdict(method_config(split_shortcut=True, fsc=True)),
        "eval": {"num_samples": 10},
    }


def build_quantized(context: TimestepContext) -> torch.nn.Module:
    unet = digits_unet(seed=0)
    quantize_(
        unet,
        quant_config(4, 8, temporal_a_bits=6),
        digits_split_model_config(),  # conv_shortcut quantized: the up blocks' shortcut convs are split
        method_config(split_shortcut=True, fsc=True),
        split_points=get_adapter(unet).shortcut_split_points(),
        temporal_names=TEMPORAL,
    )
    attach_timestep_context(unet, context)
    enable_per_timestep([unet.get_submodule(name) for name in sorted(TEMPORAL)], TIMESTEPS, context)
    with torch.no_grad(), observing_activations(unet):
        for timestep in TIMESTEPS:
            unet(torch.randn(4, 1, 8, 8), torch.full((4,), timestep))
    blocks = (unet.mid_block.resnets[0], unet.mid_block.resnets[1], unet.up_blocks[0].resnets[0],
              unet.up_blocks[0].resnets[1])  # fmt: skip
    for block in blocks:
        for quantizer in enable_adaround(block, soft=False):
            with torch.no_grad():
                quantizer.alpha.add_(torch.randn_like(quantizer.alpha))  # a "learned" rounding
    freeze_weights(blocks[0])  # frozen codes here, live AdaRound variables in blocks[1]
    freeze_weights(blocks[2])  # the same for split layers: both halves frozen here, both live in blocks[3]
    return unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    context = TimestepContext()
    unet = build_quantized(context)
    sample = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        outputs = {t: unet(sample, torch.full((2,), t)).sample for t in TIMESTEPS}
    directory = save_artifact(tmp_path_factory.mktemp("artifact") / "w4a8", unet, run_config(), extra={"seed": 0})
    return directory, outputs, sample


def test_round_trip_is_bitwise_identical(saved) -> None:
    directory, outputs, sample = saved
    metadata = json.loads((directory / "artifact.json").read_text())
    assert metadata["format_version"] == 1 and len(metadata["sha256"]) == 64 and metadata["extra"] == {"seed": 0}
    layers = metadata["quantization_map"]["layers"]
    assert layers["mid_block.resnets.0.conv1"]["weight_rounding"] == "frozen"
    assert layers["mid_block.resnets.1.conv1"]["weight_rounding"] == "adaround"
    assert layers["mid_block.resnets.0.time_emb_proj"]["act_timesteps"] == {"act_quantizer": TIMESTEPS}
    frozen_split = layers["up_blocks.0.resnets.0.conv_shortcut"]  # both halves frozen
    live_split = layers["up_blocks.0.resnets.1.conv_shortcut"]  # both halves with live AdaRound variables
    assert frozen_split["split"] == 64 and live_split["split"] == 64
    assert "weight_rounding_split" not in layers["up_blocks.0.resnets.0.conv1"]  # conv1 is not split
    assert frozen_split["weight_rounding"] == frozen_split["weight_rounding_split"] == "frozen"
    assert live_split["weight_rounding"] == live_split["weight_rounding_split"] == "adaround"

    context = TimestepContext()
    fresh = build_digits_unet()  # different random float weights: everything must come from the artifact
    loaded = load_artifact(directory, fresh, run_config(), context=context)
    attach_timestep_context(loaded.unet, context)
    assert loaded.extra == {"seed": 0} and loaded.quant_map.summary()["QuantAttnProcessor"] == 4
    shortcut = loaded.unet.up_blocks[0].resnets[0].conv_shortcut
    assert shortcut.weight_quantizer_split.weight_codes.shape == (64, 64, 1, 1)  # weight[:, 64:] of a 128-in conv
    assert loaded.unet.up_blocks[0].resnets[1].conv_shortcut.weight_quantizer_split.alpha.shape == (64, 32, 1, 1)
    with torch.no_grad():
        for timestep, expected in outputs.items():
            assert torch.equal(loaded.unet(sample, torch.full((2,), timestep)).sample, expected)
        with pytest.raises(KeyError, match="timestep 7 was not calibrated"):
            loaded.unet(sample, torch.full((2,), 7))


def test_config_mismatch_names_the_difference(saved) -> None:
    directory, _, _ = saved
    expected = run_config(w_bits=8)
    expected["model"]["name"] = "digits_ss"
    expected["eval"]["num_samples"] = 99  # not part of the artifact's identity: ignored
    with pytest.raises(ArtifactError) as error:
        load_artifact(directory, build_digits_unet(), expected)
    message = str(error.value)
    assert "quant.w_bits: artifact has 4, expected 8" in message
    assert "model.name: artifact has 'digits', expected 'digits_ss'" in message
    assert "eval" not in message and "quant.name" in message


def test_model_mismatch_lists_keys(saved) -> None:
    directory, _, _ = saved
    with pytest.raises(ArtifactError, match=r"(?s)different shapes.*time_emb_proj\.weight \(model \(64, 128\)"):
        load_artifact(directory, build_digits_unet(scale_shift=True), run_config())
    other = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=8,
    )
    with pytest.raises(ArtifactError, match=r"(?s)does not fit this model.*down_blocks\.1\.attentions\.0: missing"):
        load_artifact(directory, other, run_config())


def test_corrupt_tensor_file_detected(saved, tmp_path: Path) -> None:
    directory, _, _ = saved
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for name in ("artifact.json", "model.safetensors"):
        (copy_dir / name).write_bytes((directory / name).read_bytes())
    data = bytearray((copy_dir / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (copy_dir / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch.*corrupt"):
        load_artifact(copy_dir, build_digits_unet(), run_config())
    (copy_dir / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(copy_dir, build_digits_unet(), run_config())


def test_map_of_an_activation_only_split_is_rejected(saved, tmp_path: Path) -> None:
    # Before weight splits, a split layer had one weight quantizer and its map entry no weight_rounding_split.
    directory, _, _ = saved
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    metadata = json.loads((directory / "artifact.json").read_text())
    del metadata["quantization_map"]["layers"]["up_blocks.0.resnets.0.conv_shortcut"]["weight_rounding_split"]
    (old / "artifact.json").write_text(json.dumps(metadata))
    with pytest.raises(ArtifactError, match=r"up_blocks\.0\.resnets\.0\.conv_shortcut: a split layer recorded before"):
        load_artifact(old, build_digits_unet(), run_config())


def test_load_requires_fresh_float_unet(saved) -> None:
    directory, _, _ = saved
    unet = digits_unet()
    quantize_(unet, quant_config(), digits_model_config(), method_config())
    with pytest.raises(ArtifactError, match="fresh float UNet"):
        load_artifact(directory, unet, run_config())

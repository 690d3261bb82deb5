"""Packed checkpoints: exact round trip, nibble packing, and size against the float32 file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.deploy.helpers import calibrated, digits_unet
from tfmq_exp.deploy.pack import (
    load_packed,
    pack_nibbles,
    pack_state_dict,
    save_packed,
    size_report,
    unpack,
    unpack_nibbles,
)
from tfmq_exp.deploy.qparams import fake_quantize_weight, quantize_weight_codes


@pytest.mark.parametrize("count", [1, 7, 8], ids=["one", "odd", "even"])
def test_nibbles_round_trip(count: int) -> None:
    codes = torch.randint(0, 16, (count,), generator=torch.Generator().manual_seed(count), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.numel() == (count + 1) // 2
    assert torch.equal(unpack_nibbles(packed, count), codes)


@pytest.mark.parametrize("w_bits", [4, 8], ids=["w4", "w8"])
def test_round_trip_is_exact(tmp_path: Path, w_bits: int) -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=w_bits)
    state_dict = unet.state_dict()
    path = tmp_path / "unet.safetensors"
    save_packed(pack_state_dict(state_dict, qparams, float_dtype=torch.float32), path)
    restored, restored_qparams = unpack(load_packed(path))
    assert set(restored) == set(state_dict)
    for name, params in qparams.items():
        weight = state_dict[f"{name}.weight"]
        assert torch.equal(restored[f"{name}.weight"], fake_quantize_weight(weight, params))
        again = restored_qparams[name]
        assert torch.equal(again.weight_scale, params.weight_scale)
        assert torch.equal(again.weight_zero_point, params.weight_zero_point)
        assert (again.act_scale, again.act_zero_point, again.a_bits) == (params.act_scale, params.act_zero_point, 8)
        # packing the unpacked weights gives the same integer codes (idempotent grid)
        codes = quantize_weight_codes(weight, params)
        assert torch.equal(quantize_weight_codes(restored[f"{name}.weight"], again), codes)
    packed_weights = {f"{name}.weight" for name in qparams}
    assert all(torch.equal(restored[k], v) for k, v in state_dict.items() if k not in packed_weights)
    model = digits_unet(seed=1)
    model.load_state_dict(restored)  # strict: the rebuilt state dict fits the architecture


@pytest.mark.parametrize("w_bits, limit", [(4, 0.15), (8, 0.27)], ids=["w4", "w8"])
def test_packed_size_ratio(tmp_path: Path, w_bits: int, limit: float) -> None:
    """Every Conv2d / Linear quantized; biases, norms in float16; all bytes of both files counted."""
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=w_bits, fp_patterns=())
    path = tmp_path / "unet.safetensors"
    written = save_packed(pack_state_dict(unet.state_dict(), qparams), path)
    report = size_report(unet.state_dict(), path)
    assert report["packed_bytes"] == written
    assert report["ratio"] <= limit


def test_foreign_file_is_rejected(tmp_path: Path) -> None:
    packed = pack_state_dict({"bias": torch.zeros(3)}, {})
    packed.metadata["format"] = "something-else"
    with pytest.raises(ValueError, match="tfmq-packed"):
        unpack(packed)


def test_per_timestep_params_survive_the_round_trip() -> None:
    unet = digits_unet()
    qparams = calibrated(unet, w_bits=4)
    name = "down_blocks.0.resnets.0.time_emb_proj"
    params = qparams[name]
    params.act_per_timestep = {999: (0.25, 7), 49: (0.125, 3)}
    _, restored = unpack(pack_state_dict(unet.state_dict(), {name: params}))
    assert restored[name].act_per_timestep == {999: (0.25, 7), 49: (0.125, 3)}

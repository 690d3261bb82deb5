"""The full-precision reference sampled in bfloat16 / float16 mixed precision (``eval.fp_dtype``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.calib.helpers import digits_unet, make_config
from tfmq_exp.devices import sampling_precision
from tfmq_exp.errors import UserError
from tfmq_exp.eval.protocol import protocol_payload
from tfmq_exp.eval.sampling import generate


def test_each_dtype_maps_to_lightning_precision_and_fp16_needs_cuda() -> None:
    assert sampling_precision("float32", "cpu") == "32-true"
    assert sampling_precision("bfloat16", "cpu") == "bf16-mixed"
    assert sampling_precision("float16", "cuda") == "16-mixed"
    with pytest.raises(UserError, match="float16 needs runtime.device=cuda"):
        sampling_precision("float16", "cpu")  # Lightning would silently run bfloat16
    with pytest.raises(UserError, match="fp_dtype"):
        sampling_precision("float64", "cpu")


def test_bfloat16_sampling_runs_in_half_precision_and_stays_close(tmp_path) -> None:
    config = make_config(tmp_path)
    unet = digits_unet(seed=0)
    runs = {
        precision: generate(unet, config.sampler, config.model, num_samples=4, batch_size=4, seed_set=0,
                            record_trajectory=True, progress=False, precision=precision)
        for precision in ("32-true", "bf16-mixed")
    }  # fmt: skip
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    assert bf16.images.dtype == torch.float32 and bf16.trajectory is not None and fp32.trajectory is not None
    difference = (bf16.images - fp32.images).abs()
    assert difference.max() > 0  # the convolutions really ran in bfloat16
    assert difference.mean() < 0.05 * fp32.images.abs().mean()  # images in [-1, 1]; bf16 keeps ~3 digits
    assert all(p.dtype == torch.float32 for p in unet.parameters())  # weights untouched


def test_the_dtype_keys_the_reference_and_float32_keeps_its_old_key(tmp_path) -> None:
    config = make_config(tmp_path)
    fp32 = protocol_payload(config, "weights")
    assert "fp_dtype" not in fp32  # references computed before eval.fp_dtype existed stay valid
    bf16 = protocol_payload(dataclasses.replace(config, eval=dataclasses.replace(config.eval, fp_dtype="bfloat16")),
                            "weights")
    assert bf16 == {**fp32, "fp_dtype": "bfloat16"}

"""The project's calibrated fake-quant model maps onto the deployment format without re-calibration."""

from __future__ import annotations

import pytest
import torch

from tests.deploy.helpers import project_calibrated
from tfmq_exp.deploy.from_quantized import deployment_inputs
from tfmq_exp.deploy.reference import FakeQuantReference
from tfmq_exp.errors import UserError
from tfmq_exp.quant import iter_attn_processors


def _sqnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).mean() / (reference - other).pow(2).mean()))


def test_exported_parameters_reproduce_the_fake_quant_model() -> None:
    unet_fp, unet_q = project_calibrated()
    for _, processor in iter_attn_processors(unet_q):
        processor.set_quant_state(act=False)  # deployment keeps attention matmuls in floating point
    float_unet, qparams = deployment_inputs(unet_q, unet_fp)
    assert qparams and all(p.w_bits == 4 and p.a_bits == 8 for p in qparams.values())
    sample, timestep = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(500.0)
    with torch.no_grad():
        expected = unet_q(sample, timestep).sample
        deployed = FakeQuantReference(float_unet, qparams)(sample, timestep)
    assert _sqnr(expected, deployed) >= 30.0


@pytest.mark.parametrize(("a_bits", "split", "message"), [(None, False, "full-precision activations"),
                                                           (8, True, "split activation / weight quantizers")],
                         ids=["w4a32", "split"])
def test_unsupported_features_fail_clearly(a_bits: int | None, split: bool, message: str) -> None:
    unet_fp, unet_q = project_calibrated(a_bits=a_bits, split=split)
    with pytest.raises(UserError, match=message):
        deployment_inputs(unet_q, unet_fp)

"""Capturing a unit's inputs (all args and kwargs) and its FP output inside a UNet forward, stopped early."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.upsampling import Upsample2D

from tests.calib.helpers import digits_unet
from tfmq_exp.quant import TimestepContext, attach_timestep_context
from tfmq_exp.recon import ReconSamples, capture_inputs, capture_output


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return digits_unet(seed=0)


def _samples() -> ReconSamples:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 8, 8, generator=generator)
    timesteps = torch.tensor([900] * 4 + [500] * 3 + [100] * 3)
    return ReconSamples(x, timesteps)


def test_batches_never_mix_timesteps() -> None:
    batches = list(_samples().batches(batch_size=3))
    assert [t.tolist() for _, t, _ in batches] == [[900] * 3, [900], [500] * 3, [100] * 3]


@pytest.mark.parametrize(
    "name, num_args", [("down_blocks.0.resnets.0", 2), ("mid_block.attentions.0", 1), ("up_blocks.0.upsamplers.0", 1)]
)
def test_captured_inputs_reproduce_the_unit_output(unet: torch.nn.Module, name: str, num_args: int) -> None:
    # A timestep pre-hook is attached: it raises for a batch with mixed timesteps, so this also checks batching.
    handle = attach_timestep_context(unet, TimestepContext())
    try:
        module = unet.get_submodule(name)
        inputs = capture_inputs(unet, module, _samples(), batch_size=4)
        output = capture_output(unet, module, _samples(), batch_size=4)
    finally:
        handle.remove()
    assert inputs.template.num_args == num_args and len(output) == 10
    assert inputs.tensors["arg0"].shape[0] == 10
    if name.endswith("resnets.0"):
        assert inputs.tensors["arg1"].shape == (10, 128)  # the time embedding temb
    with torch.no_grad():
        replay = inputs.template(module, inputs.tensors)
    torch.testing.assert_close(replay, output)


class _UpsampleNet(torch.nn.Module):
    """Calls a diffusers upsampler the way ``UpBlock2D`` does: with a non-tensor ``output_size`` and a kwarg."""

    def __init__(self) -> None:
        super().__init__()
        self.upsampler = Upsample2D(1, use_conv=True)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, return_dict: bool = False) -> torch.Tensor:
        return self.upsampler(sample, None, scale=torch.tensor(1.0))


def test_non_batched_arguments_become_constants() -> None:
    torch.manual_seed(0)
    net = _UpsampleNet()
    inputs = capture_inputs(net, net.upsampler, _samples(), batch_size=4)
    assert set(inputs.tensors) == {"arg0"} and inputs.template.kwarg_names == ["scale"]
    constants = inputs.template.constants
    assert constants["arg1"] is None and torch.equal(constants["kw:scale"], torch.tensor(1.0))
    output = capture_output(net, net.upsampler, _samples(), batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(inputs.template(net.upsampler, inputs.tensors), output)
    assert output.shape == (10, 1, 16, 16)


def test_the_forward_stops_at_the_unit(unet: torch.nn.Module) -> None:
    called = []
    handle = unet.conv_out.register_forward_pre_hook(lambda module, args: called.append(True))
    try:
        capture_output(unet, unet.get_submodule("down_blocks.0.resnets.0"), _samples(), batch_size=10)
    finally:
        handle.remove()
    assert not called

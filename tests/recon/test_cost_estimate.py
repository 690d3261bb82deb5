"""The protocol estimates' inputs match what the engine really captures, and the formula adds up."""

from __future__ import annotations

import pytest
import torch

from tests.calib.helpers import digits_unet
from tfmq_exp.recon import ReconSamples, capture_inputs, capture_output
from tfmq_exp.recon.cost_estimate import Protocol, UnitProfile, estimate, unit_profiles


def test_profiled_bytes_per_sample_are_what_a_capture_holds() -> None:
    unet = digits_unet(seed=0).eval()
    profiles = unit_profiles(unet, lambda model: model(torch.randn(1, 1, 8, 8), torch.tensor([500])))
    assert [p.prefix_flops for p in profiles] == sorted(p.prefix_flops for p in profiles)  # forward order
    assert profiles[-1].prefix_flops == pytest.approx(sum(p.flops for p in profiles))
    samples = ReconSamples(torch.randn(3, 1, 8, 8), torch.full((3,), 500))
    for profile in profiles[1:4]:
        unit = unet.get_submodule(profile.name)
        inputs = capture_inputs(unet, unit, samples, batch_size=3)
        output = capture_output(unet, unit, samples, batch_size=3)
        held = sum(t.numel() * t.element_size() for t in inputs.tensors.values()) + output.numel() * output.element_size()
        assert profile.bytes_per_sample == held // 3, profile.name
        assert profile.flops > 0


def test_the_estimate_adds_iterations_capture_and_the_activation_pass() -> None:
    units = [UnitProfile("a", 100, 1e9, 1e9), UnitProfile("b", 300, 2e9, 3e9)]
    figures = estimate(units, Protocol("p", samples=10, iters=4, batch_size=2, act_iters=0), rate=1e9, min_seconds=0.0)
    adaround = 4 * 3 * 2 * (1 + 2)  # iters * (fwd + bwd) * batch * unit seconds
    capture = 2 * 10 * (1 + 3)
    assert figures["hours"] * 3600 == pytest.approx(adaround + capture)
    assert figures["largest_unit_captured_gib"] * 2**30 == pytest.approx(3000)
    floored = estimate(units, Protocol("p", samples=10, iters=4, batch_size=2), rate=1e9, min_seconds=100.0)
    assert floored["hours"] * 3600 == pytest.approx(4 * 100 * 2 + capture)
    with_pass = estimate(units, Protocol("p", 10, 4, 2, act_iters=4), rate=1e9, min_seconds=0.0)
    assert with_pass["hours"] * 3600 == pytest.approx(2 * adaround + 2 * capture)

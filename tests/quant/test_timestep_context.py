"""The timestep context and the UNet forward pre-hook that feeds it."""

from __future__ import annotations

import pytest
import torch

from tests.quant.helpers import digits_unet
from tfmq_exp.quant.context import TimestepContext, attach_timestep_context, timestep_value


@pytest.mark.parametrize(
    ("timestep", "expected"),
    [(7, 7), (7.0, 7), (2.5, 2.5), (torch.tensor(9), 9), (torch.tensor([4.0, 4.0, 4.0]), 4)],
    ids=["int", "float_integral", "float", "tensor0d", "batch"],
)
def test_timestep_value(timestep: object, expected: object) -> None:
    value = timestep_value(timestep)
    assert value == expected and type(value) is type(expected)


def test_mixed_batch_rejected() -> None:
    with pytest.raises(ValueError, match=r"one timestep per UNet call.*\[1, 2\]"):
        timestep_value(torch.tensor([1, 2, 1]))


def test_pre_hook_reads_positional_and_keyword_timestep() -> None:
    unet = digits_unet()
    context = TimestepContext()
    handle = attach_timestep_context(unet, context)
    sample = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        unet(sample, torch.tensor([321, 321]))
        assert context.current == 321
        unet(sample, timestep=17.0)
        assert context.current == 17
        with pytest.raises(ValueError, match="one timestep per UNet call"):
            unet(sample, torch.tensor([1, 2]))
    handle.remove()
    with torch.no_grad():
        unet(sample, 5)
    assert context.current == 17  # detached: no longer updated


def test_context_at_restores() -> None:
    context = TimestepContext(3)
    with context.at(torch.tensor(8)):
        assert context.current == 8
    assert context.current == 3


def test_the_context_owns_one_hook_per_unet() -> None:
    unet = digits_unet()
    context = TimestepContext()
    first = attach_timestep_context(unet, context)
    assert context.attach(unet) is first and len(unet._forward_pre_hooks) == 1
    with context.attached_to(unet):  # already attached: left in place afterwards
        assert len(unet._forward_pre_hooks) == 1
    assert context.is_attached(unet) and len(unet._forward_pre_hooks) == 1
    context.detach(unet)
    with context.attached_to(unet):  # attached only for the block
        assert len(unet._forward_pre_hooks) == 1
    assert not context.is_attached(unet) and len(unet._forward_pre_hooks) == 0

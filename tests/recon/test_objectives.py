"""The block loss is the published lp_loss: channel sum, mean over batch and spatial positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfmq_exp.recon import BlockOutputObjective, CallTemplate
from tfmq_exp.recon.objectives import lp_per_sample


@pytest.mark.parametrize("p", [2.0, 2.4], ids=["p2", "p2.4"])
def test_block_loss_matches_a_hand_computed_lp_loss(p: float) -> None:
    generator = torch.Generator().manual_seed(0)
    output, target = torch.randn(3, 4, 5, 6, generator=generator), torch.randn(3, 4, 5, 6, generator=generator)
    total = 0.0
    for b in range(3):
        for h in range(5):
            for w in range(6):
                total += sum(abs(float(output[b, c, h, w] - target[b, c, h, w])) ** p for c in range(4))
    expected = total / (3 * 5 * 6)  # BRECQ: (pred - tgt).abs().pow(p).sum(1).mean()
    objective = BlockOutputObjective(CallTemplate(1, [], {}), p=p)
    loss = objective(nn.Identity(), {"inputs": {"arg0": output}, "target": target})
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Not the sum over every element: that would be H * W = 30 times larger.
    assert float((output - target).abs().pow(p).flatten(1).sum(1).mean()) == pytest.approx(30 * expected, rel=1e-5)


def test_vector_outputs_sum_over_channels() -> None:
    output, target = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert lp_per_sample(output, target).tolist() == [5.0, 2.0]

"""AdaRound's convergence evidence: the undecided share and the hard / soft loss of every unit."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.calib.helpers import make_config, quantized_copy
from tfmq_exp.quant import WeightQuantizer
from tfmq_exp.recon import convergence_report, reconstruct, undecided_fraction


def test_undecided_fraction_counts_h_away_from_both_ends() -> None:
    quantizer = WeightQuantizer(4, num_channels=1)
    quantizer.set_range(torch.tensor([-1.0]), torch.tensor([1.0]))
    quantizer.enable_adaround(torch.zeros(1, 5))
    with torch.no_grad():  # h(a) = 0, 1, 0.5, 0.009 (decided: within 0.01 of 0) and 0.043 (undecided)
        quantizer.alpha.copy_(torch.tensor([[-20.0, 20.0, 0.0, -2.3, -2.0]]))
    assert undecided_fraction([quantizer]) == 2 / 5


def test_convergence_needs_both_criteria() -> None:
    assert convergence_report(0.0, 1.0, 1.2)["converged"]
    assert not convergence_report(0.02, 1.0, 1.0)["converged"]
    assert not convergence_report(0.0, 1.0, 1.3)["converged"]


def test_every_unit_reports_soft_hard_and_undecided(digits, tmp_path: Path) -> None:
    unet, data = digits
    config = make_config(tmp_path, recon=True, tiar=True, iters=60, lr=3e-2, quant_patterns=["down_blocks.1.*",
                                                                                           "time_embedding.*"])
    unet_q = quantized_copy(unet, config)
    report = reconstruct(unet_q, unet, config, data, tmp_path / "checkpoints")
    assert set(report["units"]) == {"tib", "down_blocks.1.resnets.0", "down_blocks.1.attentions.0"}
    for entry in report["units"].values():
        assert 0.0 <= entry["undecided_fraction"] <= 1.0
        assert entry["loss_hard"] == entry["loss_final"] and entry["loss_soft"] > 0
        assert entry["hard_soft_ratio"] == entry["loss_hard"] / entry["loss_soft"]
        assert entry["loss_hard"] < entry["loss_nearest"]

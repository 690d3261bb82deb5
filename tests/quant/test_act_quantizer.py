"""Activation quantizer: explicit observe / finalize, EMA and MSE ranges, unsigned, per-timestep (FSC)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.quant.helpers import sqnr_db
from tfmq_exp.quant.act_quantizer import ActQuantizer
from tfmq_exp.quant.context import TimestepContext


def calibrate(
    quantizer: ActQuantizer,
    batches: list[torch.Tensor],
    context: TimestepContext | None = None,
    timesteps: list[int] | None = None,
) -> None:
    quantizer.observing, quantizer.enabled = True, False
    for index, batch in enumerate(batches):
        if context is not None and timesteps is not None:
            context.current = timesteps[index]
        quantizer(batch)
    quantizer.finalize()
    quantizer.observing, quantizer.enabled = False, True


def test_observe_mode_passes_through_and_tracks_ema() -> None:
    quantizer = ActQuantizer(8, momentum=0.9)
    quantizer.observing, quantizer.enabled = True, False
    first, second = torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 4.0])
    assert torch.equal(quantizer(first), first)
    quantizer(second)
    assert quantizer.observed_min == pytest.approx(0.9 * -1.0 + 0.1 * -3.0)
    assert quantizer.observed_max == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    assert not quantizer.is_calibrated  # computing parameters is explicit
    quantizer.finalize()
    assert quantizer.scale == pytest.approx((2.2 + 1.2) / 255)


def test_unsigned_range_for_probabilities() -> None:
    quantizer = ActQuantizer(8, unsigned=True)
    probs = torch.softmax(torch.randn(4, 16, 16), dim=-1)
    calibrate(quantizer, [probs])
    assert quantizer.zero_point == 0
    assert quantizer.scale == pytest.approx(float(probs.max()) / 255)
    assert sqnr_db(probs, quantizer(probs)) > 30


def test_mse_range_beats_minmax_with_outliers() -> None:
    x = torch.randn(4096)
    x[:4] = torch.tensor([40.0, -35.0, 30.0, -30.0])  # a few outliers stretch min / max
    minmax, mse = ActQuantizer(4), ActQuantizer(4, range_method="mse")
    calibrate(minmax, [x])
    calibrate(mse, [x])
    assert mse.scale < minmax.scale
    assert sqnr_db(x, mse(x)) > sqnr_db(x, minmax(x))


def test_per_timestep_parameters_follow_context() -> None:
    context = TimestepContext()
    quantizer = ActQuantizer(8)
    quantizer.enable_per_timestep([999, 500, 1], context)
    scales = {999: 10.0, 500: 1.0, 1: 0.1}
    batches = [torch.linspace(-s, s, 64) for s in scales.values()]
    calibrate(quantizer, batches + batches, context, list(scales) * 2)  # min / max over repeated batches
    assert quantizer.timestep_scale.tolist() == pytest.approx([2 * s / 255 for s in scales.values()])
    x = torch.linspace(-0.1, 0.1, 64)
    outputs = {}
    for timestep in scales:
        context.current = timestep
        outputs[timestep] = quantizer(x)
    assert not torch.equal(outputs[999], outputs[1])
    assert sqnr_db(x, outputs[1]) > sqnr_db(x, outputs[999]) + 30  # t=1's fine grid fits x
    context.current = 42
    with pytest.raises(KeyError, match=r"timestep 42 was not calibrated.*\[999, 500, 1\]"):
        quantizer(x)
    context.current = None
    with pytest.raises(RuntimeError, match="context.current is None"):
        quantizer(x)


def test_per_timestep_finalize_names_missing_timesteps() -> None:
    context = TimestepContext()
    quantizer = ActQuantizer(8)
    quantizer.enable_per_timestep([10, 20, 30], context)
    quantizer.observing = True
    with context.at(20):
        quantizer.observe(torch.randn(8))
    with pytest.raises(RuntimeError, match=r"never observed timesteps \[10, 30\]"):
        quantizer.finalize()
    with pytest.raises(RuntimeError, match="not calibrated"):
        with context.at(20):
            quantizer(torch.randn(8))


def test_per_timestep_state_dict_round_trip_and_deepcopy() -> None:
    context = TimestepContext()
    quantizer = ActQuantizer(6)
    quantizer.enable_per_timestep([3, 7], context)
    calibrate(quantizer, [torch.randn(32), 5 * torch.randn(32)], context, [3, 7])
    rebuilt = ActQuantizer(6)
    rebuilt.enable_per_timestep([3, 7], None)
    rebuilt.load_state_dict(quantizer.state_dict())
    rebuilt.set_context(context)
    x = torch.randn(32)
    for timestep in (3, 7):
        context.current = timestep
        assert torch.equal(rebuilt(x), quantizer(x))
    clone = copy.deepcopy(quantizer)
    assert clone.context is context  # the context is shared by reference, even across deep copies


def test_enable_per_timestep_validates() -> None:
    with pytest.raises(ValueError, match="distinct integers"):
        ActQuantizer(8).enable_per_timestep([1, 1], TimestepContext())
    with pytest.raises(ValueError, match="distinct integers"):
        ActQuantizer(8).enable_per_timestep([1.5], TimestepContext())


def test_per_timestep_mse_range_is_an_opt_in_ablation() -> None:
    """FSC's per-timestep statistic is min / max (the paper's) unless ``mse`` is asked for; ``mse`` clips outliers."""
    context = TimestepContext()
    x = torch.randn(4096)
    x[:4] = torch.tensor([40.0, -35.0, 30.0, -30.0])
    paper, ablation = ActQuantizer(4), ActQuantizer(4)
    paper.enable_per_timestep([7], context)
    ablation.enable_per_timestep([7], context, range_method="mse")
    calibrate(paper, [x], context, [7])
    calibrate(ablation, [x], context, [7])
    assert paper.timestep_scale[0] == pytest.approx(float(x.max() - x.min()) / 15)
    assert ablation.timestep_scale[0] < paper.timestep_scale[0]
    with context.at(7):
        assert sqnr_db(x, ablation(x)) > sqnr_db(x, paper(x))
    with pytest.raises(ValueError, match="range_method='lsq' is not valid"):
        ActQuantizer(4).enable_per_timestep([7], context, range_method="lsq")

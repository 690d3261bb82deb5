"""Captured unit data in bounded memory: buffers held or spilled give the same rows, the budget bounds what is
held, and a reconstruction whose data spills ends bit-identical to one that holds everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.calib.helpers import quantized_copy
from tests.recon.resume_config import resume_config
from tfmq_exp.recon import ReconSamples, capture_inputs, capture_output, reconstruct
from tfmq_exp.recon.capture_buffer import CaptureBudget, CaptureBuffer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_a_spilled_buffer_returns_the_rows_written(tmp_path: Path, dtype: torch.dtype) -> None:
    rows = (torch.randn(37, 3, 5, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    held, spilled = CaptureBuffer(37, (3, 5), dtype), CaptureBuffer(37, (3, 5), dtype, tmp_path / "rows")
    for start in range(0, 37, 8):  # written in chunks, as batches come
        held.append(rows[start : start + 8])
        spilled.append(rows[start : start + 8])
    assert spilled.spilled and not held.spilled and held.materialized() is not held
    for index in ([4, 5, 6, 30, 0, 1, 36], torch.randperm(37)[:11], list(range(37))):
        assert torch.equal(spilled[index], rows[torch.as_tensor(index)])
        assert torch.equal(held[index], rows[torch.as_tensor(index)])
    assert torch.equal(spilled[5:9], rows[5:9])
    spilled.close()
    assert not (tmp_path / "rows").exists()


def test_a_buffer_refuses_rows_of_another_shape_or_too_many(tmp_path: Path) -> None:
    buffer = CaptureBuffer(4, (2,), torch.float32, tmp_path / "rows")
    with pytest.raises(ValueError, match="does not fit"):
        buffer.append(torch.zeros(2, 3))
    buffer.append(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="5 rows written into a buffer of 4"):
        buffer.append(torch.zeros(1, 2))
    buffer.close()


def test_the_budget_holds_until_full_then_spills_and_reports_its_peaks(tmp_path: Path) -> None:
    budget = CaptureBudget(1000 / (1024 * 1024), tmp_path)  # 1 000 bytes
    first = budget.allocate(10, (20,), torch.float32)  # 800 bytes: held
    second = budget.allocate(10, (20,), torch.float32)  # would be 1 600: spilled
    assert not first.spilled and second.spilled and second.path is not None and second.path.exists()
    assert budget.report().to_dict() == {"budget_bytes": 1000, "peak_held_bytes": 800, "peak_spilled_bytes": 800}
    spill_dir = second.path.parent
    budget.release()
    assert not spill_dir.exists() and budget.held_bytes == 0
    assert not budget.allocate(10, (20,), torch.float32).spilled  # after the release it is held again
    budget.release()


def test_captured_inputs_spill_and_replay_the_unit(digits, tmp_path: Path) -> None:
    unet, data = digits
    samples = ReconSamples(data.x[0, :10], torch.full((10,), data.timesteps[0]))
    module = unet.get_submodule("down_blocks.0.resnets.0")
    budget = CaptureBudget(0, tmp_path)
    inputs = capture_inputs(unet, module, samples, batch_size=4, budget=budget)
    output = capture_output(unet, module, samples, batch_size=4, budget=budget)
    assert all(isinstance(value, CaptureBuffer) and value.spilled for value in inputs.tensors.values())
    assert isinstance(output, CaptureBuffer) and budget.report().peak_held_bytes == 0
    held = capture_inputs(unet, module, samples, batch_size=4)
    assert all(torch.equal(inputs.tensors[key][range(10)], held.tensors[key]) for key in held.tensors)
    with torch.no_grad():
        rows = [2, 7, 3]
        replay = inputs.template(module, {key: value[rows] for key, value in inputs.tensors.items()})
        torch.testing.assert_close(replay, output[rows])
    budget.release()


def test_a_reconstruction_whose_data_spills_matches_one_that_holds_it(digits, tmp_path: Path) -> None:
    unet, data = digits
    states, reports = [], []
    for name, budget in (("held", None), ("spilled", CaptureBudget(0.01, tmp_path / "spill"))):  # 10 kB
        config = resume_config(tmp_path / name, iters=10)
        unet_q = quantized_copy(unet, config)
        reports.append(reconstruct(unet_q, unet, config, data, tmp_path / name / "checkpoints", budget=budget))
        states.append(unet_q.state_dict())
    assert budget is not None and budget.peak_spilled_bytes > 0 and budget.peak_held_bytes <= budget.budget_bytes
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert [u["loss_hard"] for u in reports[0]["units"].values()] == [u["loss_hard"] for u in reports[1]["units"].values()]


def test_rows_keep_the_layout_the_unit_received(digits, tmp_path: Path) -> None:
    # mid_block.resnets.0 receives the attention block's output, strided channels-last: reconstruction must see
    # the same layout (a convolution on it takes another kernel path), held or spilled
    unet, data = digits
    samples = ReconSamples(data.x[0, :10], torch.full((10,), data.timesteps[0]))
    module = unet.get_submodule("mid_block.resnets.0")
    received = []
    handle = module.register_forward_pre_hook(lambda _m, args: received.append(args[0].clone(memory_format=torch.preserve_format)))
    with torch.no_grad():
        unet(samples.x[:4], samples.timesteps[:4])
    handle.remove()
    expected = received[0].is_contiguous(memory_format=torch.channels_last) and not received[0].is_contiguous()
    held = capture_inputs(unet, module, samples, batch_size=4)
    budget = CaptureBudget(0, tmp_path)
    spilled = capture_inputs(unet, module, samples, batch_size=4, budget=budget)
    for rows in (held.tensors["arg0"][[1, 5]], spilled.tensors["arg0"][[1, 5]]):
        assert (rows.is_contiguous(memory_format=torch.channels_last) and not rows.is_contiguous()) == expected
    assert expected, "the digits attention block no longer hands on channels-last strides: pick another unit"
    budget.release()


def test_spill_directories_of_killed_runs_are_cleared_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tfmq_exp.recon.capture_buffer import spill_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / (spill_prefix(int(dead.stdout)) + "abc")
    stale.mkdir()
    (stale / "0.rows").write_bytes(b"\0" * 64)
    live = tmp_path / (spill_prefix(os.getpid()) + "def")
    live.mkdir()
    other_host = tmp_path / "capture-elsewhere-1-xyz"
    other_host.mkdir()
    budget = CaptureBudget(0, tmp_path)
    buffer = budget.allocate(2, (4,), torch.float32)  # the first spill clears what killed runs left
    assert buffer.spilled and not stale.exists() and live.exists() and other_host.exists()
    budget.release()

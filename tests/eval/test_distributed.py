"""Sampling on two processes (DDP on the CPU) gives exactly the images and trajectories of one process."""

from __future__ import annotations

import torch

from tests.calib.helpers import digits_unet, make_config
from tfmq_exp.eval.distributed import IndexBatches
from tfmq_exp.eval.sampling import generate
from tfmq_exp.trainer import sampling_strategy


def test_index_batches_cover_every_sample_once_in_order() -> None:
    batches = [IndexBatches(10, 4)[i].tolist() for i in range(len(IndexBatches(10, 4)))]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_strategy_forks_on_the_cpu_and_spawns_on_cuda() -> None:
    assert sampling_strategy("cpu", 1) == "auto"
    assert sampling_strategy("cpu", 2) == "ddp_fork"
    assert sampling_strategy("cuda", 4) == "ddp_spawn"


def test_two_processes_sample_what_one_does(tmp_path) -> None:
    config = make_config(tmp_path)
    unet = digits_unet(seed=0)
    runs = [
        generate(unet, config.sampler, config.model, num_samples=7, batch_size=2, seed_set=3,
                 record_trajectory=True, progress=False, devices=devices)
        for devices in (1, 2)
    ]
    one, two = runs
    assert torch.equal(one.indices, two.indices) and one.indices.tolist() == list(range(7))
    assert torch.equal(one.images, two.images)
    assert one.trajectory is not None and two.trajectory is not None
    assert torch.equal(one.trajectory, two.trajectory)

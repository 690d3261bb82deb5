"""The whole pipeline on the real DDPM CIFAR-10 architecture (35.7 M parameters, random weights saved as a
``DDPMPipeline`` directory and loaded through ``model.path``), TFMQ then Q-Diffusion with its activation pass, at
tiny sizes in bounded memory: every unit's captured data spills beyond a 1 MiB budget, and the process's peak
resident set stays below :data:`PEAK_RSS_BOUND_MIB`, a stated bound (``tfmq-cost`` measured 2.1-2.3 GiB peaks for the
reconstruction of this architecture; a failing run prints its peak)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfmq_exp.eval.tiny_fidelity import save_random_inception_weights
from tfmq_exp.models.architectures import save_ddpm_cifar10_pipeline

PEAK_RSS_BOUND_MIB = 3072  # the model (143 MB of weights, twice: FP and quantized), torch, Inception, batches
TINY = [
    "quant=w8a8", "sampler.num_steps=2", "calib.num_samples=2", "calib.recon_samples=4", "method.recon.iters=2",
    "method.recon.batch_size=2", "method.act_recon.iters=2", "method.act_recon.batch_size=2", "eval.num_samples=4",
    "eval.batch_size=4", "eval.trajectory_samples=2", "eval.kid_subset_size=2", "eval.metrics=[fid,kid]",
    "calib.memory_budget_mb=1", "logger=none", "runtime.progress=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cifar10")
    paths = {"pipeline": save_ddpm_cifar10_pipeline(root / "pipeline"), "inception": root / "inception.pth",
             "reference": root / "reference"}  # fmt: skip
    save_random_inception_weights(paths["inception"])
    paths["reference"].mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths["reference"] / f"{index}.png")
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tfmq", "qdiffusion"])
def test_the_cifar10_architecture_runs_in_bounded_memory(tmp_path: Path, assets: dict[str, Path], method: str) -> None:
    run_dir = tmp_path / method
    command = [
        sys.executable, "-m", "tfmq_exp", "model=ddpm_cifar10", f"model.path={assets['pipeline']}", f"method={method}",
        *TINY, f"eval.reference={assets['reference']}", f"eval.inception_weights={assets['inception']}",
        f"runtime.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**os.environ, "CI": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and np.isfinite(summary["metrics"]["fid"])
    captured = summary["captured_memory"]
    assert captured["budget_bytes"] == 2**20 and captured["peak_held_bytes"] <= 2**20
    assert captured["peak_spilled_bytes"] > 0
    if method == "qdiffusion":
        assert summary["act_reconstruction"]["units"]
    peak = summary["memory"]["peak_rss_mib"]
    assert peak < PEAK_RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"

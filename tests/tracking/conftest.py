"""Fixtures for the tracking tests: one tiny real multirun shared by the report and notebook tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "eval.num_samples=32", "eval.batch_size=32", "eval.trajectory_samples=4", "sampler.num_steps=5",
    "calib.num_samples=8", "calib.recon_samples=32", "method.recon.iters=4", "method.recon.batch_size=8",
    "method.act_recon.iters=4", "method.act_recon.batch_size=8",
    "runtime.progress=false", "logger=none",
]


@pytest.fixture(scope="session")
def multirun_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    env = {**os.environ, "TFMQ_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tfmq_exp", "--multirun", "method=naive,tfmq", "quant=w8a8,w4a8", *TINY,
         f"hydra.sweep.dir={root / 'sweep'}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # these overrides make job directory names of 288 bytes: the sweep shortens them (config.resolvers)
    assert all(len(job.name.encode()) <= 255 for job in (root / "sweep").iterdir())
    return root / "sweep"

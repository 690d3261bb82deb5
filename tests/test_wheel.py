"""A wheel built from the repository carries its configs and runs from a directory outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed from a freshly built wheel into its own directory (dependencies from this venv)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building leaves build/ and *.egg-info behind, not in the checkout
    skipped = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "outputs", "multirun", "wandb",
                                     "experiments", "notebooks", "tests", "__pycache__")
    shutil.copytree(REPO, source, ignore=skipped, symlinks=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = root.glob("tfmq_exp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "tfmq_exp/conf/config.yaml" in names and "tfmq_exp/conf/method/tfmq.yaml" in names
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return target


def _run(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "TFMQ_CACHE_DIR": str(cwd / "cache"), "WANDB_MODE": "offline"}
    env.pop("TFMQ_CONF_DIR", None)
    return subprocess.run([sys.executable, "-m", "tfmq_exp", *arguments], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_prints_its_config_and_runs_digits_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    located = subprocess.run([sys.executable, "-c", "import tfmq_exp.paths as p; print(p.config_dir())"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True,
                             text=True, check=True)
    assert Path(located.stdout.strip()).is_relative_to(installed)  # the shipped tree, not the checkout's
    job = _run(installed, tmp_path, "--cfg", "job")
    assert job.returncode == 0 and "name: tfmq" in job.stdout, job.stderr[-2000:]
    run_dir = tmp_path / "run"
    result = _run(installed, tmp_path, "method=fp", "sampler=ddim20", "eval.num_samples=16", "eval.batch_size=16",
                  "eval.trajectory_samples=4", "logger=none", "runtime.progress=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"

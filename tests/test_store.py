"""The shared artifact store: hit, miss, corruption, and processes racing on a cold cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tfmq_exp.store as store_module
from tfmq_exp.store import ArtifactStore, file_sha256

PAYLOAD = {"model": "digits", "steps": 5}


def _build(marker: Path | None = None):
    def build():
        if marker is not None:
            with open(marker, "a") as handle:
                handle.write("built\n")
            time.sleep(0.5)  # widen the race window
        return {"x": torch.arange(6.0).reshape(2, 3)}, {"note": "hello"}

    return build


def test_miss_then_hit(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tensors, info, hit = store.get_or_build("calibration", PAYLOAD, _build())
    assert not hit and info == {"note": "hello"}
    again, _, hit = store.get_or_build("calibration", PAYLOAD, _build())
    assert hit and torch.equal(again["x"], tensors["x"])
    _, _, hit = store.get_or_build("calibration", {**PAYLOAD, "steps": 6}, _build())
    assert not hit


def test_a_new_version_of_the_computation_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path)
    store.get_or_build("calibration", PAYLOAD, _build())
    monkeypatch.setitem(store_module.ENTRY_VERSIONS, "calibration", store_module.ENTRY_VERSIONS["calibration"] + 1)
    _, _, hit = store.get_or_build("calibration", PAYLOAD, _build())
    assert not hit


def test_unknown_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown artifact kind"):
        ArtifactStore(tmp_path).get_or_build("nosuch", PAYLOAD, _build())


def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path)
    store.get_or_build("calibration", PAYLOAD, _build())
    tensor_file = store.entry_dir("calibration", store.key("calibration", PAYLOAD)) / "tensors.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    _, _, hit = store.get_or_build("calibration", PAYLOAD, _build())
    assert not hit and "corrupt" in caplog.text
    meta = json.loads((tensor_file.parent / "meta.json").read_text())
    assert meta["sha256"] == file_sha256(tensor_file)


def _race(root: str, marker: str, queue: multiprocessing.Queue) -> None:
    _, _, hit = ArtifactStore(root).get_or_build("calibration", PAYLOAD, _build(Path(marker)))
    queue.put(hit)


def test_racing_processes_build_once(tmp_path: Path) -> None:
    marker = tmp_path / "builds.txt"
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_race, args=(str(tmp_path / "store"), str(marker), queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    hits = sorted(queue.get() for _ in workers)
    assert hits == [False, True, True]
    assert marker.read_text().count("built") == 1


@pytest.mark.slow
def test_two_cli_runs_at_once_on_a_cold_cache(tmp_path: Path) -> None:
    """Two real quantized runs started together share one cache; both succeed with identical entries."""
    repo = Path(__file__).resolve().parents[1]
    tiny = ["method=qdiffusion", "quant=w8a8", "eval.num_samples=32", "eval.batch_size=32", "eval.trajectory_samples=4",
            "sampler.num_steps=5", "calib.num_samples=8", "calib.recon_samples=32", "method.recon.iters=4",
            "method.recon.batch_size=8", "method.act_recon.iters=4", "method.act_recon.batch_size=8",
            "runtime.progress=false", "logger=none"]
    env = {**os.environ, "TFMQ_CACHE_DIR": str(tmp_path / "shared"), "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "tfmq_exp", *tiny, f"hydra.run.dir={tmp_path / name}"],
                         cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-2000:]
    first, second = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("a", "b"))
    assert first["metrics"]["fid"] == second["metrics"]["fid"]
    entries = sorted(p for p in (tmp_path / "shared").rglob("meta.json"))
    assert {p.parent.parent.name for p in entries} >= {"calibration", "fp_reference"}
    for meta in entries:
        assert json.loads(meta.read_text())["sha256"] == file_sha256(meta.parent / "tensors.safetensors")
    assert not list((tmp_path / "shared").rglob(".*.tmp*"))


def _hold_lock(root: str, marker: str) -> None:
    with ArtifactStore(root).locked(Path(root) / "reconstruction" / "abc"):
        Path(marker).write_text("start")
        time.sleep(1.0)
        Path(marker).write_text("end")


def test_locked_directory_makes_a_second_process_wait(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    child = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(str(tmp_path), str(marker)))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with ArtifactStore(tmp_path).locked(tmp_path / "reconstruction" / "abc"):
            assert marker.read_text() == "end"  # we got the lock only after the holder finished
    finally:
        child.join(60)
    assert child.exitcode == 0

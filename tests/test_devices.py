"""Device handling in one place (:mod:`tfmq_exp.devices`), and every stage on CUDA where a GPU exists (``gpu``
marker: skipped on machines without CUDA)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import weakref
from pathlib import Path

import pytest
import torch

from tests.test_pipeline import TINY_QUANT, run_cli
from tfmq_exp import devices
from tfmq_exp.devices import peak_memory, resolve_device
from tfmq_exp.errors import UserError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_resolves_to_what_exists_and_a_missing_gpu_is_a_user_error() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="runtime.device=cuda"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not valid"):
        resolve_device("tpu")


def test_peak_memory_reports_the_resident_peak_in_mib() -> None:
    block = torch.ones(512 * 2**20, dtype=torch.uint8)  # 512 MiB, touched
    assert peak_memory()["peak_rss_mib"] >= 512 and int(block[-1]) == 1


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["tfmq", "qdiffusion", "tfmq_cache"])
def test_every_stage_runs_on_cuda(tmp_path: Path, method: str) -> None:
    summary = run_cli(tmp_path / "run", tmp_path / "cache", f"method={method}", *TINY_QUANT, "runtime.device=cuda",
                      "method.act_recon.iters=4")
    assert summary["status"] == "ok" and summary["config"]["runtime"]["device"] == "cuda"
    assert summary["memory"]["peak_cuda_allocated_mib"] > 0


@pytest.mark.gpu
@needs_cuda
def test_cuda_and_cpu_give_close_numbers(tmp_path: Path) -> None:
    cpu = run_cli(tmp_path / "cpu", tmp_path / "cache_cpu", "method=tfmq", *TINY_QUANT)
    cuda = run_cli(tmp_path / "cuda", tmp_path / "cache_cuda", "method=tfmq", *TINY_QUANT, "runtime.device=cuda")
    assert cuda["temporal"]["rel_mse_mean"] == pytest.approx(cpu["temporal"]["rel_mse_mean"], rel=0.2)


@pytest.mark.gpu
@needs_cuda
def test_the_fp_reference_samples_in_float16_on_cuda(tmp_path: Path) -> None:
    fp32 = run_cli(tmp_path / "fp32", tmp_path / "cache", "method=tfmq", *TINY_QUANT, "runtime.device=cuda")
    fp16 = run_cli(tmp_path / "fp16", tmp_path / "cache", "method=tfmq", *TINY_QUANT, "runtime.device=cuda",
                   "eval.fp_dtype=float16")
    assert not fp16["fp_reference_cached"]  # its own reference, not the float32 one
    assert fp16["metrics"]["fid_fp"] == pytest.approx(fp32["metrics"]["fid_fp"], rel=0.2)


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_release_freed_memory_frees_tensors_held_only_by_reference_cycles() -> None:
    class Holder:
        pass

    enabled = gc.isenabled()
    gc.disable()  # as between two automatic collections
    try:
        holder = Holder()
        holder.myself, holder.rows = holder, torch.ones(1024)
        alive = weakref.ref(holder)
        del holder
        assert alive() is not None  # a cycle: reference counting alone never frees it
        devices.release_freed_memory()
        assert alive() is None
    finally:
        if enabled:
            gc.enable()


def test_inside_old_objects_frozen_collections_skip_old_objects_and_still_free_new_cycles() -> None:
    class Holder:
        pass

    def holder_in_a_cycle() -> Holder:
        holder = Holder()
        holder.myself, holder.rows = holder, torch.ones(1024)
        return holder

    def cycle() -> "weakref.ref[Holder]":
        return weakref.ref(holder_in_a_cycle())

    enabled = gc.isenabled()
    gc.disable()
    try:
        stale = cycle()  # garbage before the block: the entry collection frees it
        kept = [holder_in_a_cycle()]  # alive on entry, so frozen; it becomes garbage inside the block
        old = weakref.ref(kept[0])
        with devices.old_objects_frozen():
            assert stale() is None and gc.get_freeze_count() > 0
            kept.clear()
            new = cycle()
            with devices.old_objects_frozen():  # nested: keeps the outer freeze
                pass
            assert gc.get_freeze_count() > 0
            devices.release_freed_memory()
            assert new() is None  # made inside the block: collected
            assert old() is not None  # frozen: skipped
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert old() is None  # back in the oldest generation after the block
    finally:
        if enabled:
            gc.enable()


@pytest.mark.skipif(devices._glibc_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_release_freed_memory_returns_the_heap_pages_free_keeps() -> None:
    """50 000 freed 4 KiB blocks below a live one stay resident after ``free`` (the heap cannot shrink past the
    live block); :func:`release_freed_memory` gives them back."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(50_000)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    pin = libc.malloc(64)
    try:
        for block in blocks:
            libc.free(block)
        freed = _resident_mib()
        devices.release_freed_memory()
        assert _resident_mib() < freed - 100  # about 195 MiB of pages come back
    finally:
        libc.free(pin)

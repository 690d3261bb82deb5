"""Where computation runs, in one place: the device a config names, and the memory a run used.

``runtime.device`` is resolved once, when a run starts (``auto`` -> ``cuda`` where CUDA exists, else ``cpu``); every
stage then receives ``cpu`` or ``cuda``. Captured data always lives on the CPU (or in spill files, see
:mod:`~tfmq_exp.recon.capture_buffer`) and moves to the device batch by batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import resource
import sys
from typing import Iterator, Sequence

import torch
from torch import nn

from tfmq_exp.errors import UserError

DEVICES = ("cpu", "cuda", "auto")
FP_DTYPES = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}  # -> Lightning precision


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an error."""
    if device not in DEVICES:
        raise ValueError(f"runtime.device={device!r} is not valid; choose one of: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device=cuda, but PyTorch sees no CUDA device; use runtime.device=cpu or auto")
    return device


def sampling_precision(fp_dtype: str, device: str) -> str:
    """Lightning's ``precision`` for sampling with the full-precision model in ``fp_dtype`` on a resolved device.

    ``bfloat16`` / ``float16`` are Lightning's mixed precision (``torch.autocast`` around each predict step: the
    convolutions and matmuls run in half precision, the weights and the sampler's arithmetic stay in fp32).

    Raises:
        UserError: ``float16`` on the CPU, where Lightning would silently run ``bfloat16`` instead.
    """
    if fp_dtype not in FP_DTYPES:
        raise UserError(f"eval.fp_dtype={fp_dtype!r} is not valid; choose one of: {', '.join(FP_DTYPES)}")
    if fp_dtype == "float16" and device == "cpu":
        raise UserError("eval.fp_dtype=float16 needs runtime.device=cuda (fp16 autocast runs on GPUs only); "
                        "use eval.fp_dtype=bfloat16 on the CPU")
    return FP_DTYPES[fp_dtype]


def peak_memory() -> dict[str, float]:
    """The process's peak resident set (``ru_maxrss``) and, where CUDA was used, the peak allocated GPU memory,
    in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = {"peak_rss_mib": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}  # bytes on macOS
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / (1024 * 1024)
    return peaks


@functools.lru_cache(maxsize=1)
def _glibc_malloc_trim():
    """glibc's ``malloc_trim`` where the C library is glibc, else ``None`` (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Free what a finished stage left behind, and give the freed memory back to the operating system.

    Two things keep a finished reconstruction unit's captured tensors in the resident set. (1) Reference cycles:
    the unit's Lightning ``Trainer``, its loops, the data loader and the module refer to one another, so the
    dataset with its held rows is freed only when Python's cyclic collector runs, which it does by object
    counts, not bytes; measured on the digits acceptance command (``calib.recon_samples=8192``, 64 MiB budget),
    the anonymous resident set grew by about 50 MiB per unit without a collection and stayed flat with one.
    ``gc.collect()`` frees them now (cheaply inside :func:`old_objects_frozen`). (2) Freed tensors go back to the C
    allocator, which keeps the pages; glibc returns them on ``malloc_trim(0)`` (PyTorch has no call for host
    memory; ``torch.cuda.empty_cache`` is the device's counterpart, released here too). Called whenever a
    reconstruction unit releases its captured data, so a run's peak resident set follows the data it holds
    (``calib.memory_budget_mb``), not what earlier units held.
    """
    gc.collect()
    trim = _glibc_malloc_trim()
    if trim is not None:
        trim(0)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def old_objects_frozen() -> Iterator[None]:
    """Within the block, cyclic collections scan only the objects created inside it.

    A full collection traverses every object the process tracks (the modules of torch, diffusers, Lightning,
    Hydra, the models): about 0.45 s a call on the digits run here, paid by :func:`release_freed_memory` after
    every reconstruction unit (6.1 s of a 36 s test artifact's run). So collect once on entry, then
    ``gc.freeze()`` moves every surviving object to the permanent generation that collections skip; what a unit
    leaves in reference cycles (its ``Trainer``, loops, data loader and captured rows) is created later and still
    collected. ``gc.unfreeze()`` on exit returns the old objects to the oldest generation. Nested blocks leave
    the outer one's freeze in place.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def placed(modules: Sequence[nn.Module], device: str) -> Iterator[None]:
    """``modules`` on ``device`` for the duration; each back on its own device afterwards."""
    places = [(module, next(module.parameters()).device) for module in modules]
    for module, _ in places:
        module.to(device)
    try:
        yield
    finally:
        for module, place in places:
            module.to(place)

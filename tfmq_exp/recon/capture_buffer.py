"""Captured unit data in bounded memory: rows held in CPU memory, or spilled to a file beyond a budget.

A unit's captured inputs and targets grow with the number of reconstruction samples (``calib.recon_samples``): at
64x64 latents and 320 channels one sample of one tensor is about 5 MB, so 5 120 samples are about 27 GB. A
:class:`CaptureBudget` (``calib.memory_budget_mb``) decides, when a :class:`CaptureBuffer` is allocated, whether its
rows are held in memory or written to a file under the cache directory; the reconstruction then reads only the rows
of the batch it needs. Results do not depend on where the rows live (the same bytes come back).

Why files read with ``os.pread`` and not a memory map: pages of a mapped file that have been touched count towards
the process's resident set (as ``RssFile``), and random batches over a whole reconstruction touch every page, so a
map would not bound the peak. Explicit reads keep only the batch resident; the kernel's page cache, which is not
the process's memory, still serves repeated reads from memory when there is room.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from tfmq_exp.devices import release_freed_memory
from tfmq_exp.stage_results import CapturedMemory

MB = 1024 * 1024


class CaptureBuffer:
    """``rows`` rows of shape ``row_shape`` and dtype ``dtype``, written in chunks, read by index.

    Behaves like a ``[rows, *row_shape]`` tensor for what a :class:`~tfmq_exp.recon.objectives.UnitDataset` does with
    its data: ``shape``, ``len`` and indexing with a 1-D ``LongTensor`` (which returns a new tensor).

    Rows keep the memory layout the unit received them in (``memory_format``): an attention block hands the next
    block a channels-last-strided tensor, and a convolution on it takes another kernel path, whose last bits differ
    from those of the same values laid out contiguously; the unit is reconstructed on what it really receives.

    Args:
        rows: the number of rows (samples).
        row_shape: the shape of one row.
        dtype: the element type.
        path: a file to spill the rows to; ``None`` holds them in memory.
        memory_format: the layout of the rows read back (``torch.contiguous_format`` or ``torch.channels_last``).
    """

    def __init__(
        self, rows: int, row_shape: Sequence[int], dtype: torch.dtype, path: Optional[Path] = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:  # fmt: skip
        self.shape = torch.Size([rows, *row_shape])
        self.dtype = dtype
        self.memory_format = memory_format
        self.row_numel = math.prod(row_shape)
        self.row_bytes = self.row_numel * torch.empty((), dtype=dtype).element_size()
        self.path = path
        self.written = 0
        self._memory: Optional[Tensor] = None
        self._fd: Optional[int] = None
        if path is None:
            self._memory = torch.empty(self.shape, dtype=dtype, memory_format=memory_format)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self._fd, rows * self.row_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes of all rows."""
        return self.shape[0] * self.row_bytes

    @property
    def spilled(self) -> bool:
        """Whether the rows live in a file."""
        return self.path is not None

    def __len__(self) -> int:
        return self.shape[0]

    def relayout(self, memory_format: torch.memory_format) -> None:
        """Read rows back in ``memory_format`` from now on (held rows are copied into it)."""
        if memory_format != self.memory_format and self._memory is not None:
            self._memory = self._memory.contiguous(memory_format=memory_format)
        self.memory_format = memory_format

    def materialized(self) -> "Tensor | CaptureBuffer":
        """The rows as a plain tensor when they are held in memory, else this buffer."""
        return self._memory if self._memory is not None else self

    def append(self, chunk: Tensor) -> None:
        """Write the next ``chunk.shape[0]`` rows."""
        if tuple(chunk.shape[1:]) != tuple(self.shape[1:]) or chunk.dtype != self.dtype:
            raise ValueError(f"chunk {tuple(chunk.shape)} {chunk.dtype} does not fit rows {tuple(self.shape[1:])} "
                             f"{self.dtype}")
        end = self.written + chunk.shape[0]
        if end > self.shape[0]:
            raise ValueError(f"{end} rows written into a buffer of {self.shape[0]}")
        chunk = chunk.detach().cpu()
        if self._memory is not None:
            self._memory[self.written : end] = chunk
        else:
            data = _as_bytes(chunk)
            os.pwrite(self._fd, data, self.written * self.row_bytes)  # type: ignore[arg-type]
        self.written = end

    def __getitem__(self, index: Tensor | Sequence[int] | slice) -> Tensor:
        """The rows at ``index`` (a 1-D index or a slice), as a new ``[len(index), *row_shape]`` tensor."""
        if isinstance(index, slice):
            index = torch.arange(self.shape[0])[index]
        index = torch.as_tensor(index, dtype=torch.long)
        if self._memory is not None:
            return self._memory[index]
        return self._read(index)

    def _read(self, index: Tensor) -> Tensor:
        """Read the rows of ``index`` in runs of consecutive rows (one ``pread`` per run), in ``index``'s order."""
        order = torch.argsort(index)
        sorted_rows = index[order].tolist()
        out = np.empty((len(sorted_rows), self.row_bytes), dtype=np.uint8)
        start = 0
        while start < len(sorted_rows):
            end = start + 1
            while end < len(sorted_rows) and sorted_rows[end] == sorted_rows[end - 1] + 1:
                end += 1
            data = os.pread(self._fd, (end - start) * self.row_bytes, sorted_rows[start] * self.row_bytes)  # type: ignore[arg-type]
            out[start:end] = np.frombuffer(data, dtype=np.uint8).reshape(end - start, self.row_bytes)
            start = end
        rows = torch.from_numpy(out).view(self.dtype).reshape(len(sorted_rows), *self.shape[1:])
        result = torch.empty(rows.shape, dtype=self.dtype, memory_format=self.memory_format)
        result[order] = rows
        return result

    def close(self) -> None:
        """Free the rows (delete the spill file)."""
        self._memory = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)


def layout_probe(tensors: Sequence[Tensor]) -> Tensor:
    """One row laid out as ``torch.cat(tensors)`` would be (``torch.cat`` decides, on one-row copies that keep each
    tensor's strides): folding the calls' tensors into a probe one by one keeps the layout of their concatenation
    without holding them."""
    rows = [tensor[:1].detach().cpu().clone(memory_format=torch.preserve_format) for tensor in tensors]
    return torch.cat(rows)[:1].clone(memory_format=torch.preserve_format)


def layout_of(tensors: Sequence[Tensor]) -> torch.memory_format:
    """The layout ``torch.cat(tensors)`` would have: ``channels_last`` where every tensor suggests it, else
    contiguous."""
    probe = layout_probe(tensors)
    if probe.dim() == 4 and not probe.is_contiguous() and probe.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _as_bytes(chunk: Tensor) -> bytes:
    """The raw bytes of a CPU tensor (any dtype, bfloat16 included)."""
    return chunk.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def spill_prefix(pid: int) -> str:
    """The name prefix of a process's spill directories: its host and process id (the cache may be shared)."""
    return f"capture-{socket.gethostname()}-{pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_spills(spill_root: Path) -> list[Path]:
    """Delete the spill directories this host's killed runs left behind (their process is gone); returns them.

    A run killed during reconstruction cannot release its buffers, and one unit's spilled data can be tens of
    gigabytes; the next run that spills clears them. Directories of other hosts and of live processes are kept.
    """
    removed = []
    host_prefix = f"capture-{socket.gethostname()}-"
    for directory in spill_root.glob(host_prefix + "*"):
        pid_text = directory.name[len(host_prefix):].split("-", 1)[0]
        if directory.is_dir() and pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


class CaptureBudget:
    """The memory the engine may hold for captured data, and the buffers it allocated.

    Args:
        budget_mb: megabytes of captured rows held in memory at once (``None``: no bound, nothing spills).
        spill_dir: where spilled buffers' files go (created on the first spill; a fresh sub-directory per budget).

    Attributes:
        held_bytes / peak_held_bytes: bytes of rows held in memory now / at most so far.
        spilled_bytes / peak_spilled_bytes: bytes of rows in spill files now / at most so far.
    """

    def __init__(self, budget_mb: Optional[float], spill_dir: Path) -> None:
        self.budget_bytes = None if budget_mb is None else int(budget_mb * MB)
        self.spill_root = Path(spill_dir)
        self._spill_dir: Optional[Path] = None
        self._buffers: list[CaptureBuffer] = []
        self.held_bytes = self.peak_held_bytes = 0
        self.spilled_bytes = self.peak_spilled_bytes = 0

    def allocate(
        self, rows: int, row_shape: Sequence[int], dtype: torch.dtype,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> CaptureBuffer:  # fmt: skip
        """A buffer for ``rows`` rows: in memory while the held bytes stay within the budget, else in a file."""
        size = rows * math.prod(row_shape) * torch.empty((), dtype=dtype).element_size()
        if self.budget_bytes is None or self.held_bytes + size <= self.budget_bytes:
            buffer = CaptureBuffer(rows, row_shape, dtype, memory_format=memory_format)
            self.held_bytes += size
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        else:
            if self._spill_dir is None:
                self.spill_root.mkdir(parents=True, exist_ok=True)
                remove_stale_spills(self.spill_root)
                self._spill_dir = Path(tempfile.mkdtemp(prefix=spill_prefix(os.getpid()), dir=self.spill_root))
            buffer = CaptureBuffer(rows, row_shape, dtype, self._spill_dir / f"{len(self._buffers)}.rows", memory_format)
            self.spilled_bytes += size
            self.peak_spilled_bytes = max(self.peak_spilled_bytes, self.spilled_bytes)
        self._buffers.append(buffer)
        return buffer

    def release(self) -> None:
        """Free every buffer allocated so far (the unit is done with its data)."""
        for buffer in self._buffers:
            buffer.close()
        self._buffers.clear()
        self.held_bytes = self.spilled_bytes = 0
        if self._spill_dir is not None:
            self._spill_dir.rmdir()
            self._spill_dir = None
        release_freed_memory()

    def report(self) -> CapturedMemory:
        """The peaks, for the run's summary."""
        return CapturedMemory(self.budget_bytes, self.peak_held_bytes, self.peak_spilled_bytes)

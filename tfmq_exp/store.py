"""A content-addressed, checksum-verified, process-safe store for run-independent artifacts.

Calibration trajectories and full-precision references are expensive and shared by every run of a sweep.
Each entry lives in ``<root>/<kind>/<key>/`` where ``key`` hashes everything that produced it: its inputs, the
weights of every model it uses, and the version of the computation of its kind (:data:`ENTRY_VERSIONS`; a test,
``tests/test_entry_versions.py``, fails when the code behind a kind changes until its version is bumped), so an
edit elsewhere (a plot label) keeps every entry while a changed computation never reuses a stale one; its tensors are
one safetensors file whose sha256 is recorded in ``meta.json``. Writers hold an exclusive ``filelock`` lock on the
entry and publish with an atomic rename, so parallel runs on a cold cache compute an entry once and never
read a half-written one; a corrupt entry is detected, reported with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"


def content_key(payload: Any) -> str:
    """A stable 16-hex-digit key of a JSON-serialisable description of what produced an artifact."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The version of each kind's computation; part of every key of that kind. Bump a kind's version whenever a change
# can alter what its entries hold (tests/test_entry_versions.py names the modules behind each kind and fails until
# the version is bumped and the recorded source hash updated).
ENTRY_VERSIONS: dict[str, int] = {
    "calibration": 1,  # calib/trajectories.py: one FP sampling pass recorded at every step
    "fp_reference": 1,  # eval/: FP samples, metrics and trajectories under a protocol
    "reconstruction": 2,  # recon/ + quant/: AdaRound units (2: BRECQ's lp_loss, convergence report)
    "act_reconstruction": 1,  # recon/act_pass.py: Q-Diffusion's activation pass
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (``filelock``: an OS lock, released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


class ArtifactStore:
    """Get-or-build access to cached tensor artifacts under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(kind: str, payload: Any) -> str:
        """The entry key of ``payload`` for an entry of ``kind``: its content key with the kind's version."""
        if kind not in ENTRY_VERSIONS:
            raise KeyError(f"unknown artifact kind {kind!r}; known: {sorted(ENTRY_VERSIONS)}")
        return content_key({"kind": kind, "version": ENTRY_VERSIONS[kind], "payload": payload})

    @contextmanager
    def locked(self, directory: Path) -> Iterator[None]:
        """Hold the exclusive lock of ``directory`` (e.g. a reconstruction's checkpoints): concurrent runs that
        need the same artifact wait for the first instead of computing it twice."""
        with _locked(directory.parent / f".{directory.name}.lock"):
            yield

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _read(self, entry: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        meta_path, tensor_path = entry / META_FILE, entry / TENSORS_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if file_sha256(tensor_path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            return load_file(str(tensor_path)), meta["info"]
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            log.warning("cache entry %s is corrupt (%s); rebuilding it", entry, error)
            return None

    def _write(self, entry: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any], payload: Any) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / TENSORS_FILE))
        meta = {"sha256": file_sha256(staging / TENSORS_FILE), "info": info, "produced_by": payload}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staging, entry)

    def get_or_build(
        self,
        kind: str,
        payload: Any,
        build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """Return ``(tensors, info, hit)`` for the entry keyed by ``payload``, building it if absent or corrupt.

        Args:
            kind: the artifact family (a subdirectory), e.g. ``"calibration"``.
            payload: JSON-serialisable description of everything that determines the artifact.
            build: computes ``(tensors, info)``; ``info`` must be JSON-serialisable.
        """
        entry = self.entry_dir(kind, self.key(kind, payload))
        cached = self._read(entry)
        if cached is not None:
            return cached[0], cached[1], True
        with self.locked(entry):
            cached = self._read(entry)  # another process may have built it while we waited
            if cached is not None:
                return cached[0], cached[1], True
            tensors, info = build()
            self._write(entry, tensors, info, payload)
        return tensors, info, False

"""OmegaConf resolvers used by the config tree."""

from __future__ import annotations

import hashlib
import os

from omegaconf import OmegaConf

NAME_MAX_BYTES = 255  # the longest file name Linux and macOS file systems accept
KEPT_PREFIX_BYTES = 200


def threads_per_job() -> int:
    """CPU threads for one sweep job: the machine's cores split evenly across the launcher's parallel jobs.

    Outside a joblib multirun (a single run, or the basic launcher) a job gets every core.
    """
    from hydra.core.hydra_config import HydraConfig

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = 1
    if HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        jobs = int(launcher.get("n_jobs", 1) or 1) if launcher is not None else 1
    return max(1, cores // max(1, jobs))


def directory_name(text: str) -> str:
    """``text`` as one directory name: itself when it fits :data:`NAME_MAX_BYTES`, else its first
    :data:`KEPT_PREFIX_BYTES` bytes, ``~`` and 16 hex digits of its SHA-256 (so distinct names stay distinct).

    A sweep job's directory is its ``override_dirname``, which grows with every override: past 255 bytes the
    job fails with ``OSError: File name too long``. Every job writes its overrides to ``.hydra/overrides.yaml``
    and its config to ``summary.json``, which is what the report reads, not the directory name.
    """
    encoded = text.encode()
    if len(encoded) <= NAME_MAX_BYTES:
        return text
    prefix = encoded[:KEPT_PREFIX_BYTES].decode(errors="ignore")
    return f"{prefix}~{hashlib.sha256(encoded).hexdigest()[:16]}"


def register_resolvers() -> None:
    """Register the project's resolvers once per process."""
    if not OmegaConf.has_resolver("threads_per_job"):
        OmegaConf.register_new_resolver("threads_per_job", threads_per_job)
    if not OmegaConf.has_resolver("directory_name"):
        OmegaConf.register_new_resolver("directory_name", directory_name)

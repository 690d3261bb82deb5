"""OmegaConf resolvers used by the config tree."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    """Register the project's resolvers once per process."""
    if not OmegaConf.has_resolver("threads_per_job"):
        OmegaConf.register_new_resolver("threads_per_job", threads_per_job)

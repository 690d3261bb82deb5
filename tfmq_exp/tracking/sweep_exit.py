"""Honest sweep exits: a multirun in which any job failed lists the failed jobs and exits non-zero.

A failing job does not stop the sweep (``tfmq_exp.cli.run_task`` records the failure in the job's
``summary.json`` and returns), so Hydra itself would exit 0. This callback (registered in ``conf/config.yaml``
under ``hydra.callbacks``) runs in the launching process after every job has returned, with any launcher,
reads the ``summary.json`` files the sweep wrote, prints one line per failed job and exits with
:data:`EXIT_JOBS_FAILED`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tfmq_exp.tracking.summary import SUMMARY_FILE

EXIT_JOBS_FAILED = 1
_CLOCK_SLACK_S = 2.0  # file systems round modification times; a summary this much older still counts


@dataclass(frozen=True)
class FailedJob:
    """One job of the sweep whose summary does not say ``ok``."""

    name: str  # the job's directory relative to the sweep dir: its override dirname
    error: str


def failed_jobs(sweep_dir: str | Path, since: float | None = None) -> tuple[int, list[FailedJob]]:
    """Return ``(jobs, failed)``: how many job summaries lie under ``sweep_dir`` and which did not end ``ok``.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        since: only summaries written at or after this time (``time.time()``) count, so that a sweep
            re-run into the same directory is not judged by an earlier sweep's jobs.
    """
    root = Path(sweep_dir)
    jobs, failed = 0, []
    for path in sorted(root.rglob(SUMMARY_FILE)):
        if since is not None and path.stat().st_mtime < since - _CLOCK_SLACK_S:
            continue
        jobs += 1
        name = str(path.parent.relative_to(root)) if path.parent != root else root.name
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            failed.append(FailedJob(name, f"unreadable {SUMMARY_FILE}: {error}"))
            continue
        status = summary.get("status", "unknown")
        if status != "ok":
            failed.append(FailedJob(name, summary.get("error") or f"status {status}"))
    return jobs, failed


class SweepExitCallback(Callback):
    """At the end of a multirun, list the failed jobs on stderr and exit non-zero when there are any."""

    def __init__(self, **_: Any) -> None:
        self.started: float | None = None
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        # Resolving now caches ``${now:...}`` in the config that the launcher reads, so both see one path.
        self.sweep_dir = str(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or str(config.hydra.sweep.dir)
        jobs, failed = failed_jobs(sweep_dir, since=self.started)
        if not failed:
            return
        print(f"tfmq-exp: {len(failed)} of {jobs} jobs failed in {sweep_dir}:", file=sys.stderr)
        for job in failed:
            print(f"  {job.name}: {' '.join(job.error.split())}", file=sys.stderr)
        sys.stderr.flush()
        # SystemExit passes through Hydra's callback runner and run_and_report (they catch Exception only).
        sys.exit(EXIT_JOBS_FAILED)

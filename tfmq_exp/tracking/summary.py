"""``summary.json``: the one record of a run that reports and notebooks read (works offline).

Schema (version :data:`SUMMARY_VERSION`); sections are added by the stages that run:

- ``status``: ``"ok"`` or ``"failed"`` (with ``error``); ``model``, ``method``, ``quant``, ``seed``: names;
- ``config``: the resolved config; ``versions``: package versions; ``run_dir``;
- ``metrics``: ``fid``, ``kid``, ``kid_std``, ``isc``, ``isc_std``, ``precision``, ``recall``, ``num_samples``,
  ``seed_set``, and the full-precision reference under the same protocol ``fid_fp`` ... (``<name>_fp``), and
  ``eps_rel_mse`` for quantized runs (per step in ``temporal.eps_rel_mse_per_step``);
- ``timing``: seconds per stage and ``total_s``;
- ``model_size``: quantized bits vs full precision; ``temporal``: temporal-feature diagnostics (DESIGN 1.7);
  ``selection``: disturbance-aware selection; ``cache``: cache-based maintenance.

The quantization stages' sections (``calibration``, ``quantization``, ``cache``, ``selection``, ``reconstruction``,
``act_reconstruction``, ``model_size``, ``artifact``) are written by the records of :mod:`tfmq_exp.stage_results`.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from tfmq_exp.atomic import write_json_atomic

SUMMARY_FILE = "summary.json"
SUMMARY_VERSION = 1
_PACKAGES = ("tfmq-exp", "torch", "diffusers", "lightning", "hydra-core", "omegaconf", "wandb", "torch-fidelity", "torchao")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that determine a run's numbers."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found




def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary`` (with its schema version) to ``run_dir/summary.json``."""
    path = Path(run_dir) / SUMMARY_FILE
    write_json_atomic(path, {"summary_version": SUMMARY_VERSION, **summary})
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())

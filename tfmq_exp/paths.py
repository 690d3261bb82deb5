"""Locations of the project's config tree and embedded weights."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"


def config_dir() -> Path:
    """The Hydra config tree: ``$TFMQ_CONF_DIR`` or the repository's ``conf/`` (editable install)."""
    configured = os.environ.get("TFMQ_CONF_DIR")
    path = Path(configured) if configured else PACKAGE_DIR.parent / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config tree not found at {path}; install the repository editable (pip install -e .) "
            "or point TFMQ_CONF_DIR at its conf/ directory"
        )
    return path

"""Locations of the project's config tree and embedded weights."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"


def config_dir() -> Path:
    """The Hydra config tree: ``$TFMQ_CONF_DIR``, else the tree shipped inside the package (``tfmq_exp/conf``).

    The tree is package data, so a wheel or a non-editable install carries it; the repository's top-level ``conf``
    is a link to it, for reading.
    """
    configured = os.environ.get("TFMQ_CONF_DIR")
    path = Path(configured) if configured else PACKAGE_DIR / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config tree not found at {path}; reinstall the package (its conf/ is package data) or point "
            "TFMQ_CONF_DIR at a conf/ directory"
        )
    return path

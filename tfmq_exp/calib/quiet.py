"""Keep the many short Lightning runs of calibration and reconstruction quiet and free of side effects.

Every ``Trainer`` prints accelerator banners and warns about things that are intended here (modules kept in
eval mode, a predict step that returns nothing, a single-process loader); ``deterministic=...`` also switches
torch's global determinism flag. :func:`quiet_lightning` hides those messages and restores the flag.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

import torch

_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*module\\(s\\) in eval mode.*",
    ".*predict returned None.*",
    ".*smaller than the logging interval.*",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block: Lightning logs warnings only, expected warnings are hidden; determinism flags restored."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    lightning_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_logger.setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)

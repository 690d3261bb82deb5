"""Silence library chatter that says nothing about a run (Lightning tips, deprecation notices).

Real warnings from our own code, and errors from any library, still come through.
"""

from __future__ import annotations

import logging
import warnings

_CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "torch.utils._pytree",
    "diffusers.quantizers.torchao.torchao_quantizer",
    "diffusers.utils.import_utils",
)


def quiet_libraries() -> None:
    """Lower the level of known-noisy library loggers and filter their deprecation warnings."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*local_dir_use_symlinks.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers.*")

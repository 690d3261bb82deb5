"""The config shared by the resume tests and their child process (TIAR + BRECQ on part of the UNet)."""

from __future__ import annotations

from pathlib import Path

from tests.calib.helpers import make_config
from tfmq_exp.config.schema import Config

RESUME_PATTERNS = ["time_embedding.*", "*.time_emb_proj", "down_blocks.*", "mid_block.attentions.*"]


def resume_config(cache_dir: Path, iters: int = 30) -> Config:
    """TIAR then BRECQ: units ``tib``, ``down_blocks.0.resnets.0``, ``down_blocks.1.resnets.0``,
    ``down_blocks.1.attentions.0``, ``mid_block.attentions.0``."""
    return make_config(cache_dir, tiar=True, recon=True, iters=iters, lr=5e-3, quant_patterns=RESUME_PATTERNS, seed=5)

"""What each sample is conditioned on: class labels and prompts, separately for evaluation and calibration.

Sample ``i`` of a protocol always gets the same condition, so runs stay paired and the full-precision reference
is comparable: evaluation labels cycle through the classes (``i mod K``, a uniform class histogram as the
ImageNet protocol's 50 per class), calibration labels are drawn from ``calib.seed``; prompts are line
``i mod lines`` of their file. Both files' contents are part of the keys that depend on them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import torch

from tfmq_exp.errors import UserError

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
DEFAULT_EVAL_PROMPTS = PROMPTS_DIR / "eval_smoke.txt"
DEFAULT_CALIB_PROMPTS = PROMPTS_DIR / "calib_smoke.txt"
LABEL_SEED_STRIDE = 10_000_019  # a prime above any trajectory count: (seed, index) pairs never share a generator


def read_prompts(path: Optional[str], default: Path, key: str) -> list[str]:
    """The non-empty lines of a prompt file (``default`` when ``path`` is None).

    Raises:
        UserError: the file is missing or holds no prompt; the message names ``key``.
    """
    source = Path(path) if path else default
    if not source.is_file():
        raise UserError(f"{key}={source} is not a file; pass {key}=FILE with one prompt per line")
    prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{key}={source} holds no prompt; write one prompt per line")
    return prompts


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """A short hash of a prompt list (part of calibration and reference keys)."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def cycle(items: Sequence[str], indices: Sequence[int]) -> list[str]:
    """``items[i mod len(items)]`` for each index."""
    return [items[int(i) % len(items)] for i in indices]


def eval_labels(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Evaluation class labels: sample ``i`` gets class ``i mod num_classes``."""
    return indices.long() % num_classes


def calib_labels(indices: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Calibration class labels: a uniform draw per trajectory index, from its own generator seeded by ``seed``."""
    draws = [
        torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(seed * LABEL_SEED_STRIDE + int(i)))
        for i in indices
    ]
    return torch.cat(draws) if draws else torch.zeros(0, dtype=torch.long)

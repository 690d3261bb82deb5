"""scikit-learn's 8x8 digits as a diffusion data set, with a fixed train / held-out split.

The split is part of the benchmark's definition: the DDPM and the feature extractor are trained on
``train``; generation metrics compare samples with ``heldout``. It never changes with the run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits

SPLIT_SEED = 0
"""Seed of the fixed train / held-out permutation (part of the benchmark, not of a run)."""
HELDOUT_FRACTION = 0.3
PIXEL_MAX = 16.0
"""``load_digits`` pixels are integers in [0, 16]."""


@dataclass(frozen=True)
class DigitsSplit:
    """Images in [-1, 1], shape [N, 1, 8, 8], float32, and their labels."""

    images: torch.Tensor
    labels: torch.Tensor


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def load_digits_split(split: str) -> DigitsSplit:
    """Return ``split`` ("train" or "heldout") of the digits set, scaled to [-1, 1].

    Args:
        split: ``"train"`` (70 %) or ``"heldout"`` (30 %), fixed by :data:`SPLIT_SEED`.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown digits split {split!r}; valid: 'train', 'heldout'")
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # [N, 8, 8] in [0, 16]
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = _permutation(len(images))
    n_heldout = int(round(HELDOUT_FRACTION * len(images)))
    index = order[n_heldout:] if split == "train" else order[:n_heldout]
    x = torch.from_numpy(images[index]).unsqueeze(1) / PIXEL_MAX * 2.0 - 1.0  # [N, 1, 8, 8]
    return DigitsSplit(images=x.contiguous(), labels=torch.from_numpy(labels[index]))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to uint8 in [0, 255] (the format torch-fidelity consumes)."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)

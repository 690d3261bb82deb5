"""Figures written beside summary.json and logged to W&B."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image


def save_sample_grid(images: torch.Tensor, path: Path, count: int = 64, upscale: int = 4) -> Path:
    """Save the first ``count`` uint8 images ``[N, C, H, W]`` as a PNG grid (small images upscaled, nearest)."""
    batch = images[:count].float() / 255.0
    if upscale > 1:
        batch = F.interpolate(batch, scale_factor=upscale, mode="nearest")
    nrow = max(1, int(round(count**0.5)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(batch, nrow=nrow, padding=2, pad_value=0.5), str(path))
    return path

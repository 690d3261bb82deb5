"""Figures of temporal-feature diagnostics (DESIGN 1.7): per-layer x timestep heatmaps and per-timestep curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure  # the object API renders PNGs without pyplot or a global backend


def temporal_heatmap(temporal: dict[str, Any], path: Path, key: str = "rel_mse", title: str = "") -> Path:
    """Heatmap of ``temporal[key]`` ([features, timesteps]) with a log colour scale for errors."""
    values = np.asarray(temporal[key], dtype=float)
    fig = Figure(figsize=(max(6, 0.12 * values.shape[1] + 3), 0.4 * values.shape[0] + 1.8))
    ax = fig.subplots()
    if key == "cosine":
        image = ax.imshow(values, aspect="auto", cmap="viridis")
    else:
        image = ax.imshow(np.log10(np.maximum(values, 1e-12)), aspect="auto", cmap="magma")
    ticks = np.linspace(0, len(temporal["timesteps"]) - 1, min(10, len(temporal["timesteps"]))).astype(int)
    ax.set_xticks(ticks, [str(temporal["timesteps"][i]) for i in ticks])
    ax.set_yticks(range(len(temporal["feature_names"])), temporal["feature_names"], fontsize=7)
    ax.set_xlabel("timestep t (sampling order)")
    ax.set_ylabel("temporal feature e_i (ResNet block)")
    fig.colorbar(image, ax=ax, label=key if key == "cosine" else f"log10 {key}")
    ax.set_title(title or f"temporal-feature {key}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def per_timestep_curves(series: dict[str, Sequence[float]], timesteps: Sequence[int], path: Path, ylabel: str, title: str, log: bool = True) -> Path:
    """One line per named series over timesteps (e.g. mean relative MSE of several runs)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, values in series.items():
        ax.plot(list(timesteps), list(values), marker=".", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel(ylabel)
    ax.invert_xaxis()  # sampling runs from large t to small t
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

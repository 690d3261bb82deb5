"""Plots of a sweep report: FID vs bit-width, temporal error vs timestep, trajectory deviation, cost vs quality."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API renders PNGs without pyplot or a global backend
import numpy as np

from tfmq_exp.tracking.collect import RunRecord

FIGURE_SIZE = (7.5, 4.5)


def _bits_key(quant: str) -> tuple[int, int, str]:
    match = re.match(r"w(\d+)a(\d+)", quant)
    return (int(match.group(1)), int(match.group(2)), quant) if match else (99, 99, quant)


def _new_axes() -> Axes:
    """The axes of a new report figure (every report plot has the same size)."""
    return Figure(figsize=FIGURE_SIZE).subplots()


def _finish(ax: Axes, path: Path, *, xlabel: str, ylabel: str, title: str, log_y: bool = False) -> Path:
    """Label, grid and legend a report plot, then save its figure as a PNG at ``path`` and close it.

    Args:
        ax: the plot's axes (from :func:`_new_axes`).
        path: the PNG file; its folder is created.
        xlabel / ylabel / title: axis labels and title.
        log_y: logarithmic y axis.

    Returns:
        ``path``.
    """
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig = ax.figure
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def fid_vs_bits(runs: Sequence[RunRecord], path: Path, model: str) -> Path:
    """Mean FID (error bars: std over seeds) per quant setting, one line per method."""
    quants = sorted({r.quant for r in runs if r.quant != "fp32"}, key=_bits_key)
    by_method: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if "fid" in run.metrics:
            by_method[run.method][run.quant].append(run.metrics["fid"])
    ax = _new_axes()
    x = np.arange(len(quants))
    for method, per_quant in sorted(by_method.items()):
        if method == "fp":
            fp = [v for values in per_quant.values() for v in values]
            ax.axhline(float(np.mean(fp)), color="black", linestyle="--", label="fp (reference)")
            continue
        means = [np.mean(per_quant[q]) if per_quant.get(q) else np.nan for q in quants]
        stds = [np.std(per_quant[q]) if per_quant.get(q) else np.nan for q in quants]
        ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xticks(x, quants)
    return _finish(
        ax, path, xlabel="quantization setting (weight bits / activation bits)",
        ylabel="FID (digits features, lower is better)", title=f"{model}: FID vs bit-width", log_y=True,
    )  # fmt: skip


def temporal_error_vs_timestep(runs: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Mean (over features and seeds) relative MSE of temporal features per timestep, one line per method."""
    ax = _new_axes()
    grouped: dict[str, list[list[float]]] = defaultdict(list)
    timesteps: list[int] = []
    for run in runs:
        if run.temporal.get("rel_mse"):
            grouped[run.method].append(np.mean(np.asarray(run.temporal["rel_mse"]), axis=0).tolist())
            timesteps = run.temporal["timesteps"]
    for method, curves in sorted(grouped.items()):
        ax.plot(timesteps, np.mean(np.asarray(curves), axis=0), marker=".", label=method)
    ax.invert_xaxis()
    return _finish(
        ax, path, xlabel="timestep t (sampling runs right to left)", ylabel="temporal-feature relative MSE",
        title=title, log_y=True,
    )  # fmt: skip


def trajectory_vs_step(runs: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Mean trajectory cosine similarity (quantized vs FP, same noise) per sampling step, per method."""
    ax = _new_axes()
    grouped: dict[str, list[list[float]]] = defaultdict(list)
    for run in runs:
        if run.temporal.get("trajectory_cos"):
            grouped[run.method].append(run.temporal["trajectory_cos"])
    for method, curves in sorted(grouped.items()):
        length = min(len(c) for c in curves)
        ax.plot(range(length), np.mean([c[:length] for c in curves], axis=0), label=method)
    return _finish(
        ax, path, xlabel="sampling step (x_T = 0 ... x_0)", ylabel="cos(x_t quantized, x_t full precision)",
        title=title,
    )  # fmt: skip


def cost_vs_quality(runs: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Calibration seconds vs FID, one marker per run, coloured by method."""
    ax = _new_axes()
    grouped: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        if run.method != "fp" and "fid" in run.metrics:
            grouped[run.method].append((run.calibration_s, run.metrics["fid"]))
    for method, points in sorted(grouped.items()):
        xs, ys = zip(*points)
        ax.scatter(xs, ys, label=method, alpha=0.8)
    return _finish(
        ax, path, xlabel="calibration time (s: capture + reconstruction + activation calibration)",
        ylabel="FID (lower is better)", title=title, log_y=True,
    )  # fmt: skip

"""Initial weight ranges per output channel: min/max, or the shrink search of DESIGN 1.1.

The shrink search (as in the published code) tries ``i = 0 .. steps - 1`` and scales each channel's min
and max by ``(1 - 0.01 i)``; per channel it keeps the candidate with the lowest ``mean |Q(w) - w|^p``
(``p = 2.4``, ``steps = 80``). Candidate ``i = 0`` is plain min/max, so the search is never worse than
min/max in that objective. The candidates are evaluated vectorised over channels, in chunks of
candidates sized to bound memory.
"""

from __future__ import annotations

from typing import Tuple

import torch

from tfmq_exp.quant.quantizer import range_to_qparams, validate_bits

WEIGHT_RANGE_METHODS = ("minmax", "shrink")
DEFAULT_LP = 2.4
DEFAULT_SHRINK_STEPS = 80
SHRINK_STEP = 0.01
_CHUNK_ELEMENTS = 1 << 24  # candidates x weights evaluated at once (64 MiB of float32)


def channel_rows(weight: torch.Tensor) -> torch.Tensor:
    """Flatten a weight to ``[out_channels, fan_in]`` (axis 0 = output channel)."""
    if weight.ndim < 1:
        raise ValueError("weight must have at least one dimension (the output channel)")
    return weight.detach().reshape(weight.shape[0], -1).float()


def minmax_range(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel min and max.

    Args:
        weight: ``[out_channels, ...]``.

    Returns:
        ``(w_min, w_max)``, each ``[out_channels]``.
    """
    rows = channel_rows(weight)
    return rows.amin(dim=1), rows.amax(dim=1)


def lp_error(rows: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int, p: float) -> torch.Tensor:
    """``mean |Q(w) - w|^p`` per row for a batch of candidate ranges.

    Args:
        rows: ``[C, K]`` values (one row per channel).
        x_min: ``[S, C]`` candidate lower ends.
        x_max: ``[S, C]`` candidate upper ends.
        bits: bit-width.
        p: exponent of the error.

    Returns:
        ``[S, C]`` errors.
    """
    scale, zero_point = range_to_qparams(x_min, x_max, bits)  # [S, C]
    scale, zero_point = scale.unsqueeze(-1), zero_point.unsqueeze(-1)  # [S, C, 1]
    q = torch.clamp(torch.round(rows.unsqueeze(0) / scale) + zero_point, 0, 2**bits - 1)  # [S, C, K]
    return ((q - zero_point) * scale - rows.unsqueeze(0)).abs().pow(p).mean(dim=-1)


@torch.no_grad()
def shrink_search(
    rows: torch.Tensor, bits: int, p: float = DEFAULT_LP, steps: int = DEFAULT_SHRINK_STEPS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row range minimising ``mean |Q(x) - x|^p`` over the shrink candidates ``(1 - 0.01 i) [min, max]``.

    Args:
        rows: ``[C, K]``: per-channel rows of a weight, or ``[1, N]`` for one per-tensor range.
        bits: bit-width.
        p: exponent of the error (2.4 for weights in the published code).
        steps: number of candidates (``i = 0 .. steps - 1``; must keep ``1 - 0.01 i > 0``).

    Returns:
        ``(x_min, x_max)``, each ``[C]``; candidate 0 (plain min/max) wins ties.
    """
    validate_bits(bits)
    if not 1 <= steps <= int(round(1 / SHRINK_STEP)):
        raise ValueError(f"steps={steps} is out of range: allowed 1..{int(round(1 / SHRINK_STEP))}")
    if p <= 0:
        raise ValueError(f"p={p} must be > 0")
    rows = rows.float()
    row_min, row_max = rows.amin(dim=1), rows.amax(dim=1)  # [C]
    factors = 1.0 - SHRINK_STEP * torch.arange(steps, dtype=torch.float32, device=rows.device)  # [S]
    best_error = torch.full_like(row_min, float("inf"))
    best_min, best_max = row_min.clone(), row_max.clone()
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rows.numel()))
    for start in range(0, steps, chunk):
        part = factors[start : start + chunk].unsqueeze(1)  # [S', 1]
        cand_min, cand_max = part * row_min, part * row_max  # [S', C]
        error = lp_error(rows, cand_min, cand_max, bits, p)  # [S', C]
        chunk_error, chunk_index = error.min(dim=0)  # first minimum wins ties
        better = chunk_error < best_error  # strict: earlier candidates win ties across chunks
        columns = torch.arange(rows.shape[0], device=rows.device)
        best_min = torch.where(better, cand_min[chunk_index, columns], best_min)
        best_max = torch.where(better, cand_max[chunk_index, columns], best_max)
        best_error = torch.where(better, chunk_error, best_error)
    return best_min, best_max


def weight_range(
    weight: torch.Tensor,
    bits: int,
    method: str = "shrink",
    p: float = DEFAULT_LP,
    steps: int = DEFAULT_SHRINK_STEPS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Initial per-output-channel weight range.

    Args:
        weight: ``[out_channels, ...]`` (Conv2d or Linear weight).
        bits: weight bit-width.
        method: ``minmax`` or ``shrink`` (the Lp search).
        p: Lp exponent of the shrink search.
        steps: candidates of the shrink search.

    Returns:
        ``(w_min, w_max)``, each ``[out_channels]``.
    """
    if method == "minmax":
        return minmax_range(weight)
    if method == "shrink":
        return shrink_search(channel_rows(weight), bits, p=p, steps=steps)
    raise ValueError(f"weight range method {method!r} is not valid; choose one of: {', '.join(WEIGHT_RANGE_METHODS)}")

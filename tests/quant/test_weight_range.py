"""Per-channel weight ranges: the shrink (Lp) search versus min/max."""

from __future__ import annotations

import pytest
import torch

import tfmq_exp.quant.weight_range as weight_range_module
from tfmq_exp.quant.weight_range import channel_rows, lp_error, minmax_range, shrink_search, weight_range

BITS = [2, 3, 4, 8]


@pytest.mark.parametrize("bits", BITS, ids=[f"w{b}" for b in BITS])
def test_shrink_never_worse_than_minmax(bits: int) -> None:
    # heavy-tailed rows (where shrinking helps) and a few constant / tiny rows (where it cannot)
    weight = torch.distributions.StudentT(3.0).sample((48, 16, 3, 3))
    weight[0] = 0.5
    weight[1] *= 1e-4
    rows = channel_rows(weight)
    w_min, w_max = minmax_range(weight)
    s_min, s_max = weight_range(weight, bits, method="shrink")
    minmax_error = lp_error(rows, w_min[None], w_max[None], bits, 2.4)[0]
    shrink_error = lp_error(rows, s_min[None], s_max[None], bits, 2.4)[0]
    assert torch.all(shrink_error <= minmax_error)
    if bits <= 4:  # at low bit-widths clipping the tails helps most heavy-tailed channels
        assert (shrink_error < 0.99 * minmax_error).float().mean() > 0.5
    assert torch.all(s_min >= w_min) and torch.all(s_max <= w_max)  # candidates only shrink the range


def test_shrink_picks_best_candidate_exhaustively() -> None:
    rows = torch.randn(6, 40)
    best_min, best_max = shrink_search(rows, bits=3, p=2.4, steps=80)
    factors = 1 - 0.01 * torch.arange(80, dtype=torch.float32)
    candidates_min = factors[:, None] * rows.amin(1)[None]
    candidates_max = factors[:, None] * rows.amax(1)[None]
    errors = lp_error(rows, candidates_min, candidates_max, 3, 2.4)  # [80, 6]
    found = lp_error(rows, best_min[None], best_max[None], 3, 2.4)[0]
    assert torch.allclose(found, errors.min(dim=0).values)


def test_chunked_search_matches_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = torch.randn(10, 30)
    reference = shrink_search(rows, bits=4)
    monkeypatch.setattr(weight_range_module, "_CHUNK_ELEMENTS", 300 * 7)  # 7 candidates per chunk
    chunked = shrink_search(rows, bits=4)
    assert torch.equal(reference[0], chunked[0]) and torch.equal(reference[1], chunked[1])


def test_weight_range_validates() -> None:
    with pytest.raises(ValueError, match="not valid"):
        weight_range(torch.randn(2, 2), 4, method="percentile")
    with pytest.raises(ValueError, match="steps"):
        shrink_search(torch.randn(2, 2), 4, steps=101)

"""Statistics for the report: mean and spread over seeds, paired differences with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Estimate:
    """A mean with its sample standard deviation and a two-sided 95 % t-interval over ``n`` values."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    def format(self, digits: int = 4, interval: bool = False) -> str:
        if self.n == 0:
            return "-"
        text = f"{self.mean:.{digits}g}"
        if self.n > 1:
            spread = 0.0 if self.std <= 1e-9 * max(abs(self.mean), 1e-30) else self.std  # float noise of equal values
            text += f" ± {spread:.2g}"
            if interval:
                text += f" [{self.low:.{digits}g}, {self.high:.{digits}g}]"
        return text


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean, sample std and the Student-t confidence interval of the mean (n - 1 degrees of freedom)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    mean = sum(clean) / n
    if n == 1:
        return Estimate(mean, 0.0, 1, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1))
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def paired_differences(values: dict[Any, float], baseline: dict[Any, float]) -> list[float]:
    """``value - baseline`` for every key both have (a seed set, or a (seed set, calibration seed) replicate:
    pairs share their evaluation noise and calibration data)."""
    return [values[key] - baseline[key] for key in sorted(set(values) & set(baseline))]

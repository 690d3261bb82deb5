"""Wall-clock timing of pipeline stages (reported in summary.json under ``timing``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Accumulates seconds per named stage; ``as_dict()`` adds ``total_s`` since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"{stage}_s"] = self.seconds.get(f"{stage}_s", 0.0) + time.perf_counter() - began

    def as_dict(self) -> dict[str, float]:
        timing = {key: round(value, 3) for key, value in self.seconds.items()}
        timing["total_s"] = round(time.perf_counter() - self.start, 3)
        return timing

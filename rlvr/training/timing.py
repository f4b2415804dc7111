"""Stage timers: ``with timer("generation"):`` instead of passing start times around."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Wall-clock seconds per named stage of one step, summed when a stage repeats; the
    metrics are ``time_<stage>`` (the ``timing/`` namespace in dashboards)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def metrics(self) -> dict[str, float]:
        return {f"time_{stage}": seconds for stage, seconds in self.seconds.items()}

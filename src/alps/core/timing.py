"""Wall-clock seconds per named stage, for the manifest, the summary and the benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Accumulates wall-clock seconds per named stage: ``with timer("masks"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}

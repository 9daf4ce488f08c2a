"""A clock for the code that takes one (``clock=``): it moves only when a test moves ``now``."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

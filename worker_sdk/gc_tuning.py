"""Cyclic GC tuning for a long-lived busy process (a worker, a ``cairn serve`` process)."""

from __future__ import annotations

import gc


def tune_gc(threshold: int) -> None:
    """Freeze what start-up left alive out of the cyclic GC's scans (it lives as long as the
    process) and collect the youngest generation every ``threshold`` allocations. Each poll or
    request allocates thousands of short-lived objects; with Python's default threshold (700) a
    collection, some of them over everything the process holds, ran on most of them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *gc.get_threshold()[1:])

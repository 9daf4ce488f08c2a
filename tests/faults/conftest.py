"""Fault-injection scenarios reuse the end-to-end fixtures (real servers, real workers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from tests.e2e.conftest import procs, server  # noqa: F401  (re-exported fixtures)

Starter = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@pytest.fixture
async def background() -> AsyncIterator[Starter]:
    """Start background tasks (load, meters, probes) that never outlive the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

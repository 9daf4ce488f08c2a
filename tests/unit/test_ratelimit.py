"""The per-token token bucket, with an injected clock."""

from __future__ import annotations

import pytest

from api.ratelimit import RateLimiter
from tests.clock import Clock


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    rl = RateLimiter(10, 3, clock=clock)
    assert [rl.acquire("a") for _ in range(3)] == [None, None, None]
    wait = rl.acquire("a")
    assert wait == pytest.approx(0.1)
    clock.now += 0.1
    assert rl.acquire("a") is None
    assert rl.acquire("a") is not None
    clock.now += 10  # refills to the burst, never beyond
    assert [rl.acquire("a") for _ in range(4)].count(None) == 3


def test_refused_requests_do_not_drain_the_bucket() -> None:
    clock = Clock()
    rl = RateLimiter(1, 1, clock=clock)
    assert rl.acquire("a") is None
    for _ in range(100):
        assert rl.acquire("a") is not None
    clock.now += 1.0
    assert rl.acquire("a") is None


def test_keys_are_independent() -> None:
    rl = RateLimiter(1, 1, clock=Clock())
    assert rl.acquire("a") is None
    assert rl.acquire("a") is not None
    assert rl.acquire("b") is None


def test_zero_rate_disables() -> None:
    rl = RateLimiter(0, 1, clock=Clock())
    assert not rl.enabled
    assert all(rl.acquire("a") is None for _ in range(10_000))


def test_memory_is_bounded() -> None:
    rl = RateLimiter(1, 1, max_keys=10, clock=Clock())
    for i in range(100):
        rl.acquire(str(i))
    assert len(rl._buckets) == 10


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert RateLimiter.retry_after_header(0.01) == "1"
    assert RateLimiter.retry_after_header(1.0) == "1"
    assert RateLimiter.retry_after_header(1.2) == "2"

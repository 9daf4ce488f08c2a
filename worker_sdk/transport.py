"""One place for HTTP retries, shared by ``Client``, ``AsyncClient`` and ``Worker``.

Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential
backoff and jitter, honouring ``Retry-After``, within a time budget. Anything else that is not
2xx becomes an ``APIError`` at once (a 409 is never retried). ``sleep``/``clock``/``rng`` are
injectable so tests never really sleep.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from worker_sdk.calls import Call
from worker_sdk.errors import APIError, HTTPError

log = logging.getLogger("cairn.worker.transport")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses that mean "nothing was done", so even a non-idempotent request may be resent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
NEVER_RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff schedule and time budget of one logical request."""

    deadline_s: float = 30.0  # give up once this much time has passed since the first try
    initial_s: float = 0.2
    factor: float = 2.0
    max_delay_s: float = 10.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]
    max_attempts: int | None = None

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Delay before retry number ``retry`` (0-based)."""
        base = min(self.initial_s * self.factor**retry, self.max_delay_s)
        return max(base * (1.0 - self.jitter * rng()), 0.0)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The RFC 9457 problem of an error response (a synthetic one if the body is not JSON)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        return body
    text = response.text[:500] if response.content else ""
    return {"status": response.status_code, "title": response.reason_phrase, "detail": text}


def raise_for_problem(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise APIError(response.status_code, problem_of(response))
    return response


class RetryState:
    """Decides, after each try of a request, whether and how long to wait before the next."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        idempotent: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        give_up: Callable[[], bool] | None = None,
    ) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.clock = clock
        self.rng = rng
        self.give_up = give_up
        self.started = clock()
        self.retries = 0

    def _budget(self, wanted: float) -> float | None:
        if self.policy.max_attempts is not None and self.retries + 1 >= self.policy.max_attempts:
            return None
        if self.give_up is not None and self.give_up():
            return None
        if self.clock() + wanted - self.started > self.policy.deadline_s:
            return None
        self.retries += 1
        return wanted

    def after_response(self, response: httpx.Response) -> float | None:
        """Seconds to wait before resending, or None to stop here."""
        status = response.status_code
        retryable = NOT_PROCESSED_STATUSES if not self.idempotent else TRANSIENT_STATUSES
        if status not in retryable:
            return None
        hinted = parse_retry_after(response.headers.get("retry-after"))
        return self._budget(hinted if hinted is not None else self._next_backoff())

    def after_error(self, exc: httpx.TransportError) -> float | None:
        if isinstance(exc, NEVER_RETRY_ERRORS):
            return None
        if not self.idempotent and not isinstance(exc, NOT_SENT_ERRORS):
            return None
        return self._budget(self._next_backoff())

    def _next_backoff(self) -> float:
        return self.policy.backoff(self.retries, self.rng)


def _describe(method: str, url: str, what: object) -> str:
    return f"{method} {url}: {what}"


def send(
    client: httpx.Client,
    call: Call,
    *,
    timeout: float | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
    give_up: Callable[[], bool] | None = None,
    retry_log_level: int = logging.DEBUG,
) -> httpx.Response:
    """Send with retries; return the 2xx response or raise ``APIError``/``HTTPError``. Each
    retry is logged at ``retry_log_level``."""
    state = RetryState(
        policy or RetryPolicy(), idempotent=call.idempotent, clock=clock, rng=rng, give_up=give_up
    )
    method, url = call.method, call.path
    extra = _request_kwargs(call.body, call.params, timeout)
    while True:
        try:
            response = client.request(method, url, **extra)
        except httpx.TransportError as exc:
            delay = state.after_error(exc)
            if delay is None:
                raise HTTPError(_describe(method, url, repr(exc))) from exc
            why = _describe(method, url, repr(exc))
        else:
            delay = state.after_response(response)
            if delay is None:
                return raise_for_problem(response)
            why = _describe(method, url, response.status_code)
        log.log(retry_log_level, "%s; retrying in %.2fs", why, delay)
        sleep(delay)


async def asend(
    client: httpx.AsyncClient,
    call: Call,
    *,
    timeout: float | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
    give_up: Callable[[], bool] | None = None,
) -> httpx.Response:
    """The ``async`` twin of ``send``."""
    do_sleep = sleep or asyncio.sleep
    state = RetryState(
        policy or RetryPolicy(), idempotent=call.idempotent, clock=clock, rng=rng, give_up=give_up
    )
    method, url = call.method, call.path
    extra = _request_kwargs(call.body, call.params, timeout)
    while True:
        try:
            response = await client.request(method, url, **extra)
        except httpx.TransportError as exc:
            delay = state.after_error(exc)
            if delay is None:
                raise HTTPError(_describe(method, url, repr(exc))) from exc
            log.debug("%s; retrying in %.2fs", _describe(method, url, repr(exc)), delay)
        else:
            delay = state.after_response(response)
            if delay is None:
                return raise_for_problem(response)
            log.debug("%s; retrying in %.2fs", _describe(method, url, response.status_code), delay)
        await do_sleep(delay)


def _request_kwargs(
    body: bytes | None, params: Mapping[str, Any] | None, timeout: float | None
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if body is not None:
        extra["content"] = body
        extra["headers"] = {"content-type": "application/json"}
    if params:
        extra["params"] = {k: v for k, v in params.items() if v is not None}
    if timeout is not None:
        extra["timeout"] = timeout
    return extra

"""Control-plane clients: register workflows, trigger runs, inspect/wait/cancel/replay them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from worker_sdk import calls
from worker_sdk.calls import Call
from worker_sdk.errors import APIError, CairnError, HTTPError, InvalidArgument, RunWaitTimeout
from worker_sdk.transport import (
    NEVER_RETRY_ERRORS,
    TRANSIENT_STATUSES,
    RetryPolicy,
    asend,
    send,
)
from worker_sdk.workflow import Workflow

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
USER_AGENT = "cairn-worker-sdk/0.1"


def resolve_url(url: str | None) -> str:
    """``url``, else ``$CAIRN_URL``, else ``http://127.0.0.1:8080`` (no trailing slash)."""
    return (url or os.environ.get("CAIRN_URL") or DEFAULT_URL).rstrip("/")


def build_headers(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    """The headers of every request: ``token``, else ``$CAIRN_TOKEN`` unless ``headers`` carry
    an ``Authorization`` of their own (as ``$CAIRN_URL`` is the default URL)."""
    out = {"user-agent": USER_AGENT, "accept": "application/json"}
    out.update(headers or {})
    own = any(name.lower() == "authorization" for name in out)
    token = token or (None if own else os.environ.get("CAIRN_TOKEN"))
    if token:
        for name in [n for n in out if n.lower() == "authorization"]:
            del out[name]
        out["authorization"] = f"Bearer {token}"
    return out


def definition_of(
    workflow: Workflow | Mapping[str, Any], name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``(name, definition)`` from a ``Workflow`` or from a raw definition plus its name."""
    if isinstance(workflow, Workflow):
        if name is not None and name != workflow.name:
            raise InvalidArgument(f"name {name!r} differs from the workflow's {workflow.name!r}")
        return workflow.name, workflow.definition()
    if not name:
        raise InvalidArgument("registering a raw definition needs name=...")
    return name, dict(workflow)


def body_of(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def _is_terminal(run: Mapping[str, Any]) -> bool:
    return run.get("status") in TERMINAL_RUN_STATUSES


def _rides_out(err: CairnError) -> bool:
    """A failure ``wait`` keeps trying through until its own deadline: the server unreachable,
    or answering that it cannot serve now."""
    if isinstance(err, APIError):
        return err.status in TRANSIENT_STATUSES
    return isinstance(err, HTTPError) and not isinstance(err.__cause__, NEVER_RETRY_ERRORS)


class _Waiting:
    """What ``Client.wait`` and ``AsyncClient.wait`` share: the deadline, each request's limits
    (cut to the time left), and what follows each answer or failure."""

    def __init__(
        self, run_id: str, timeout: float, poll_interval: float, clock: Callable[[], float]
    ) -> None:
        self.run_id, self.timeout, self.poll_interval = run_id, timeout, poll_interval
        self.clock = clock
        self.deadline = clock() + timeout
        self.last: dict[str, Any] = {}
        self._seen = False

    def limits(self, policy: RetryPolicy, timeout: float) -> tuple[float, RetryPolicy]:
        """The next request's timeout and retry budget."""
        left = max(self.deadline - self.clock(), 0.0)
        return max(min(timeout, left), 0.1), dataclasses.replace(policy, deadline_s=left)

    def failed(self, err: CairnError) -> float:
        """Seconds to pause before asking again; raises what ends the wait."""
        if not _rides_out(err):
            raise err
        left = self.deadline - self.clock()
        if left <= 0:
            raise RunWaitTimeout(self.run_id, self.timeout, self._last()) from err
        return min(self.poll_interval, left)

    def answered(self, run: dict[str, Any]) -> float | None:
        """Seconds to pause before asking again; None once the run is finished."""
        self.last, self._seen = run, True
        if _is_terminal(run):
            return None
        left = self.deadline - self.clock()
        if left <= 0:
            raise RunWaitTimeout(self.run_id, self.timeout, run)
        return min(self.poll_interval, left)

    def _last(self) -> dict[str, Any] | None:
        return self.last if self._seen else None


class Client:
    """Synchronous client of the Cairn REST API (``with Client(url) as c: ...``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = resolve_url(url)
        self.retry = retry or RetryPolicy()
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers=build_headers(headers, token),
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, call: Call, *, timeout: float | None = None) -> Any:
        """Send one request (with retries) and return the decoded JSON body."""
        response = send(self._http, call, timeout=timeout, policy=self.retry, sleep=self._sleep)
        return body_of(response)

    def register(
        self, workflow: Workflow | Mapping[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        """PUT a workflow definition; returns ``{"name","version","definition","created_at"}``."""
        wf_name, definition = definition_of(workflow, name)
        result: dict[str, Any] = self.call(calls.put_workflow(wf_name, definition))
        return result

    def list_workflows(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call(calls.list_workflows())["workflows"]
        return result

    def get_workflow(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(calls.get_workflow(name))
        return result

    def trigger(
        self,
        workflow_name: str,
        input: Any = calls.NO_INPUT,
        idempotency_key: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Start a run; returns the Run. Without ``input`` the run's input is ``{}``; any JSON
        value, ``None`` (``null``) included, is stored as given, as ``trigger_many`` does."""
        call = calls.trigger(workflow_name, input, idempotency_key=idempotency_key, version=version)
        result: dict[str, Any] = self.call(call)
        return result

    def trigger_many(
        self,
        workflow_name: str,
        inputs: Sequence[Any],
        idempotency_keys: Sequence[str | None] | None = None,
        version: int | None = None,
    ) -> list[dict[str, Any]]:
        """Start many runs in one request; returns ``[{id, idempotency_key, created}]`` in order."""
        call = calls.trigger_many(
            workflow_name, inputs, idempotency_keys=idempotency_keys, version=version
        )
        runs: list[dict[str, Any]] = self.call(call)["runs"]
        return runs

    def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(calls.get_run(run_id))
        return result

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{"runs": [...], "next_cursor": str | None}``."""
        call = calls.list_runs(workflow=workflow, status=status, limit=limit, cursor=cursor)
        result: dict[str, Any] = self.call(call)
        return result

    def iter_runs(
        self, *, workflow: str | None = None, status: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every matching run, following ``next_cursor`` (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = self.list_runs(workflow=workflow, status=status, limit=limit, cursor=cursor)
            yield from page.get("runs", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait(
        self, run_id: str, timeout: float = 60.0, poll_interval: float = 0.2
    ) -> dict[str, Any]:
        """Poll the run until it is succeeded/failed/cancelled; raise ``RunWaitTimeout`` once
        ``timeout`` has passed, also when the server could not answer meanwhile (each request
        and its retries are cut to the time left)."""
        waiting = _Waiting(run_id, timeout, poll_interval, self._clock)
        while True:
            request_timeout, policy = waiting.limits(self.retry, self._timeout)
            try:
                response = send(
                    self._http,
                    calls.get_run(run_id),
                    timeout=request_timeout,
                    policy=policy,
                    sleep=self._sleep,
                    clock=self._clock,
                )
            except (APIError, HTTPError) as err:
                self._sleep(waiting.failed(err))
                continue
            pause = waiting.answered(body_of(response))
            if pause is None:
                return waiting.last
            self._sleep(pause)

    def cancel(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(calls.cancel_run(run_id))
        return result

    def replay(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(calls.replay_run(run_id))
        return result


class AsyncClient:
    """The ``async`` twin of ``Client`` (``async with AsyncClient(url) as c: ...``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = resolve_url(url)
        self.retry = retry or RetryPolicy()
        self._timeout = timeout
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers=build_headers(headers, token),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, call: Call, *, timeout: float | None = None) -> Any:
        response = await asend(self._http, call, timeout=timeout, policy=self.retry)
        return body_of(response)

    async def register(
        self, workflow: Workflow | Mapping[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        wf_name, definition = definition_of(workflow, name)
        result: dict[str, Any] = await self.call(calls.put_workflow(wf_name, definition))
        return result

    async def list_workflows(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.call(calls.list_workflows()))["workflows"]
        return result

    async def get_workflow(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(calls.get_workflow(name))
        return result

    async def trigger(
        self,
        workflow_name: str,
        input: Any = calls.NO_INPUT,
        idempotency_key: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        call = calls.trigger(workflow_name, input, idempotency_key=idempotency_key, version=version)
        result: dict[str, Any] = await self.call(call)
        return result

    async def trigger_many(
        self,
        workflow_name: str,
        inputs: Sequence[Any],
        idempotency_keys: Sequence[str | None] | None = None,
        version: int | None = None,
    ) -> list[dict[str, Any]]:
        call = calls.trigger_many(
            workflow_name, inputs, idempotency_keys=idempotency_keys, version=version
        )
        runs: list[dict[str, Any]] = (await self.call(call))["runs"]
        return runs

    async def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(calls.get_run(run_id))
        return result

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        call = calls.list_runs(workflow=workflow, status=status, limit=limit, cursor=cursor)
        result: dict[str, Any] = await self.call(call)
        return result

    async def iter_runs(
        self, *, workflow: str | None = None, status: str | None = None, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = await self.list_runs(
                workflow=workflow, status=status, limit=limit, cursor=cursor
            )
            for run in page.get("runs", []):
                yield run
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def wait(
        self, run_id: str, timeout: float = 60.0, poll_interval: float = 0.2
    ) -> dict[str, Any]:
        waiting = _Waiting(run_id, timeout, poll_interval, self._clock)
        while True:
            request_timeout, policy = waiting.limits(self.retry, self._timeout)
            try:
                response = await asend(
                    self._http,
                    calls.get_run(run_id),
                    timeout=request_timeout,
                    policy=policy,
                    clock=self._clock,
                )
            except (APIError, HTTPError) as err:
                await asyncio.sleep(waiting.failed(err))
                continue
            pause = waiting.answered(body_of(response))
            if pause is None:
                return waiting.last
            await asyncio.sleep(pause)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(calls.cancel_run(run_id))
        return result

    async def replay(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(calls.replay_run(run_id))
        return result

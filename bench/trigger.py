"""Triggering Cairn runs: the bulk endpoint when the server has it, else concurrent POSTs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

BULK_CHUNK = 1000
IN_FLIGHT = 64


@dataclass
class Triggered:
    path: str  # "bulk" or "single"
    count: int
    seconds: float
    errors: int

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    return httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits)


async def register(url: str, definitions: dict[str, dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        for name, definition in definitions.items():
            r = await http.put(f"/api/v1/workflows/{name}", json=definition)
            r.raise_for_status()


async def trigger_many(url: str, workflow: str, n: int, *, allow_bulk: bool = True) -> Triggered:
    """Create ``n`` runs of ``workflow`` with input ``{"i": k}``, as fast as the API allows."""
    inputs = [{"i": k} for k in range(n)]
    async with _client(url) as http:
        started = time.perf_counter()
        if allow_bulk and inputs:
            first = inputs[:BULK_CHUNK]
            r = await http.post(f"/api/v1/workflows/{workflow}/runs/bulk", json=_bulk(first))
            if r.status_code == 422:
                print(f"  bulk endpoint refused the body ({r.text[:200]}); using single POSTs")
            elif r.status_code not in (404, 405):
                r.raise_for_status()
                errors = await _bulk_rest(http, workflow, inputs[BULK_CHUNK:])
                return Triggered("bulk", n, time.perf_counter() - started, errors)
        errors = await _singles(http, workflow, inputs)
        return Triggered("single", n, time.perf_counter() - started, errors)


def _bulk(chunk: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runs": [{"input": x} for x in chunk]}


async def _bulk_rest(http: httpx.AsyncClient, workflow: str, inputs: list[dict[str, Any]]) -> int:
    sem = asyncio.Semaphore(4)
    errors = 0

    async def one(chunk: list[dict[str, Any]]) -> None:
        nonlocal errors
        async with sem:
            r = await http.post(f"/api/v1/workflows/{workflow}/runs/bulk", json=_bulk(chunk))
            if r.status_code >= 300:
                errors += len(chunk)

    chunks = [inputs[i : i + BULK_CHUNK] for i in range(0, len(inputs), BULK_CHUNK)]
    await asyncio.gather(*(one(c) for c in chunks))
    return errors


async def _singles(http: httpx.AsyncClient, workflow: str, inputs: list[dict[str, Any]]) -> int:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for x in inputs:
        queue.put_nowait(x)
    errors = 0

    async def loop() -> None:
        nonlocal errors
        while True:
            try:
                x = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                r = await http.post(f"/api/v1/workflows/{workflow}/runs", json={"input": x})
                if r.status_code >= 300:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

    await asyncio.gather(*(loop() for _ in range(IN_FLIGHT)))
    return errors


SINGLE_MAX_RATE = 200.0  # above this, one client process cannot pace single POSTs honestly
TICK_S = 0.02


async def trigger_steady(
    url: str, workflow: str, rate: float, duration: float, *, bulk: bool = False
) -> tuple[dict[str, float], dict[str, int], str]:
    """Open-loop for ``duration`` s at ``rate`` runs/s, whatever the answers take.

    Up to ``SINGLE_MAX_RATE`` (or without ``bulk``): one ``POST .../runs`` every 1/rate s.
    Above it: one bulk request every ``TICK_S`` carrying ``rate * TICK_S`` runs. At most
    ``IN_FLIGHT`` requests are outstanding; later ones wait their turn on the client.
    Returns ``{run_id: time.time() just after its POST returned}``, errors by reason, and the
    mode used.
    """
    use_bulk = bulk and rate > SINGLE_MAX_RATE
    accepted: dict[str, float] = {}
    errors: dict[str, int] = {}
    sem = asyncio.Semaphore(IN_FLIGHT)
    loop = asyncio.get_running_loop()

    def error(key: str, n: int = 1) -> None:
        errors[key] = errors.get(key, 0) + n

    async with _client(url) as http:

        async def single(k: int) -> None:
            async with sem:
                try:
                    r = await http.post(
                        f"/api/v1/workflows/{workflow}/runs", json={"input": {"k": k}}
                    )
                    now = time.time()
                    if r.status_code in (200, 201):
                        accepted[str(r.json()["id"])] = now
                    else:
                        error(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    error(type(exc).__name__)

        async def many(k0: int, count: int) -> None:
            async with sem:
                body = {"runs": [{"input": {"k": k0 + j}} for j in range(count)]}
                try:
                    r = await http.post(f"/api/v1/workflows/{workflow}/runs/bulk", json=body)
                    now = time.time()
                    if r.status_code in (200, 201):
                        for run in r.json()["runs"]:
                            accepted[str(run["id"])] = now
                    else:
                        error(f"HTTP {r.status_code}", count)
                except httpx.HTTPError as exc:
                    error(type(exc).__name__, count)

        tasks: list[asyncio.Task[None]] = []
        start = loop.time() + 0.1
        if use_bulk:
            ticks = max(int(duration / TICK_S), 1)
            sent = 0
            for t in range(ticks):
                delay = start + t * TICK_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                due = round(rate * TICK_S * (t + 1))
                if due > sent:
                    tasks.append(asyncio.create_task(many(sent, due - sent)))
                    sent = due
        else:
            for k in range(max(int(rate * duration), 1)):
                delay = start + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(single(k)))
        await asyncio.gather(*tasks)
    mode = f"bulk every {TICK_S * 1000:.0f} ms" if use_bulk else "single POSTs"
    return accepted, errors, mode


async def cancel_runs(url: str, ids: list[str]) -> None:
    async with _client(url) as http:
        sem = asyncio.Semaphore(16)

        async def one(run_id: str) -> None:
            async with sem:
                await http.post(f"/api/v1/runs/{run_id}/cancel")

        await asyncio.gather(*(one(i) for i in ids))


async def post_concurrently(
    url: str, path: str, bodies: list[bytes], connections: int
) -> tuple[float, dict[int, int]]:
    """POST each body to ``path`` from ``connections`` keep-alive HTTP/1.1 connections, each
    sending its next request when the answer to the last is in; returns (seconds, count by
    status). A bare client on asyncio streams: an HTTP library's own per-request CPU (httpx's
    pool, at 64 requests in flight, spent several ms per request here) would measure the client
    rather than the server."""
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    queue = list(reversed(bodies))
    codes: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                body = queue.pop()
                writer.write(
                    f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                codes[status] = codes.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, codes

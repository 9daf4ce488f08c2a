"""A database that accepts connections and never answers (a hung host, a black-holed route):
the probes and the scrape still answer in time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.settings import Settings


@pytest.fixture
async def hung_url() -> AsyncIterator[str]:
    """A port that accepts TCP connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://cairn@127.0.0.1:{port}/cairn"
    finally:
        server.close()
        for w in held:
            w.close()


async def test_metrics_and_readyz_answer_while_the_database_hangs(hung_url: str) -> None:
    app = create_app(Settings(database_url=hung_url, run_migrations=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cairn") as client:
            await client.get("/healthz")
            # Connecting alone would take 10 s (the connection timeout); a scrape gives up at
            # 5 s by default and the shipped probe at 6 s.
            scrape = await asyncio.wait_for(client.get("/metrics"), 4.5)
            assert scrape.status_code == 200
            assert "cairn_http_requests_total{" in scrape.text  # this process's own counters
            # Unknown, so absent: a 0 would say no worker is alive.
            assert "cairn_workers_active" not in scrape.text
            ready = await asyncio.wait_for(client.get("/readyz"), 5.5)
            assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
            assert ready.headers["retry-after"] == "1"

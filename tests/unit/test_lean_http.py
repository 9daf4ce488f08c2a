"""The worker's lean HTTP/1.1 transport, against real sockets serving canned answers."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from worker_sdk import lean_http
from worker_sdk.lean_http import LeanTransport

# Reads one request (head and Content-Length body), returns what the server should do.
Handler = Callable[[bytes, bytes], Awaitable[bytes | None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.close_after: bool = False
        self.handlers: set[asyncio.Task[None]] = set()  # cancelled at teardown

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = await self.handler(head, body)
                if answer is None:  # hang up without answering
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[Server, str]]:
    srv = Server(handler)
    tcp = await asyncio.start_server(srv.serve, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        yield srv, f"http://127.0.0.1:{port}"
    finally:
        tcp.close()
        for task in srv.handlers:  # a handler still waiting (a slow answer) ends here
            task.cancel()
        await asyncio.gather(*srv.handlers, return_exceptions=True)
        await tcp.wait_closed()


def canned(answer: bytes) -> Handler:
    async def handle(head: bytes, body: bytes) -> bytes:
        return answer

    return handle


def ok(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


@asynccontextmanager
async def client(url: str, **kw: object) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, transport=LeanTransport(), **kw) as c:  # type: ignore[arg-type]
        yield c


async def test_requests_reuse_one_kept_alive_connection_and_send_body_and_headers() -> None:
    async def echo(head: bytes, body: bytes) -> bytes:
        return ok(b'{"got": %d}' % len(body), b"Content-Type: application/json")

    async with server(echo) as (srv, url), client(url, headers={"Authorization": "Bearer t"}) as c:
        r1 = await c.post("/api/v1/x?a=1", content=b'{"k": 1}')
        r2 = await c.get("/healthz")
    assert r1.status_code == 200 and r1.json() == {"got": 8}
    assert r2.json() == {"got": 0}
    assert srv.connections == 1
    head, body = srv.requests[0]
    assert head.startswith(b"POST /api/v1/x?a=1 HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer t\r\n" in head or b"\r\nauthorization: Bearer t\r\n" in head
    assert b"ost: 127.0.0.1:" in head and body == b'{"k": 1}'
    assert srv.requests[1][0].startswith(b"GET /healthz HTTP/1.1\r\n")


async def test_chunked_answer_with_extensions_and_trailers() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"
    )
    async with server(canned(answer)) as (srv, url), client(url) as c:
        assert (await c.get("/")).content == b"hello world"
        assert (await c.get("/")).content == b"hello world"
    assert srv.connections == 1


async def test_connection_close_and_http10_answers_are_not_reused() -> None:
    answers = [
        ok(b"a", b"Connection: close"),
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",  # no length: the body ends with the connection
        ok(b"c"),
    ]

    async def handle(head: bytes, body: bytes) -> bytes:
        return answers.pop(0)

    async with server(handle) as (srv, url), client(url) as c:
        srv.close_after = True  # the server hangs up after each answer, as it said it would
        assert (await c.get("/")).text == "a"
        assert (await c.get("/")).text == "until the end"
        srv.close_after = False
        assert (await c.get("/")).text == "c"
    assert srv.connections == 3


async def test_informational_answers_are_skipped_and_head_or_204_have_no_body() -> None:
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after continue"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",  # HEAD: the length, no body
        b"HTTP/1.1 204 No Content\r\n\r\n",
        ok(b"still in step"),
    ]

    async def handle(head: bytes, body: bytes) -> bytes:
        return answers.pop(0)

    async with server(handle) as (srv, url), client(url) as c:
        assert (await c.get("/")).text == "after continue"
        assert (await c.head("/")).content == b""
        r = await c.delete("/")
        assert r.status_code == 204 and r.content == b""
        assert (await c.get("/")).text == "still in step"
    assert srv.connections == 1


async def test_gzip_is_decoded_and_problem_statuses_come_back_as_responses() -> None:
    body = gzip.compress(b'{"title": "conflict"}')
    answer = (
        b"HTTP/1.1 409 Conflict\r\nContent-Type: application/problem+json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with server(canned(answer)) as (_, url), client(url) as c:
        r = await c.post("/x", json={})
    assert r.status_code == 409 and r.json() == {"title": "conflict"}
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_server_hanging_up_unanswered_is_a_remote_protocol_error() -> None:
    async def hang_up(head: bytes, body: bytes) -> None:
        return None

    async with server(hang_up) as (_, url), client(url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/")


async def test_a_truncated_body_is_a_remote_protocol_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with server(canned(answer)) as (srv, url), client(url) as c:
        srv.close_after = True
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
    ],
)
async def test_malformed_answers_are_remote_protocol_errors(answer: bytes) -> None:
    async with server(canned(answer)) as (srv, url), client(url) as c:
        srv.close_after = True
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/")


async def test_refused_connection_is_a_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with client(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/")


async def test_silence_is_a_read_timeout_and_the_connection_is_not_reused() -> None:
    calls = 0

    async def slow_once(head: bytes, body: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return ok(b"late" if calls == 1 else b"fresh")

    async with server(slow_once) as (srv, url), client(url) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/", timeout=httpx.Timeout(5.0, read=0.05))
        assert (await c.get("/")).text == "fresh"
    assert srv.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with server(canned(ok(b"x"))) as (srv, url), client(url) as c:
        srv.close_after = True  # answers, then hangs up: the idle connection sees EOF
        assert (await c.get("/")).text == "x"
        await asyncio.sleep(0.05)  # the loop reads the FIN
        srv.close_after = False
        assert (await c.get("/")).text == "x"
    assert srv.connections == 2


async def test_connections_idle_too_long_are_not_reused() -> None:
    now = [0.0]
    async with server(canned(ok(b"x"))) as (srv, url):
        transport = LeanTransport(clock=lambda: now[0])
        async with httpx.AsyncClient(base_url=url, transport=transport) as c:
            await c.get("/")
            now[0] += lean_http.IDLE_S + 1
            await c.get("/")
            await c.get("/")
    assert srv.connections == 2


async def test_cancelling_a_request_closes_its_connection() -> None:
    gate = asyncio.Event()

    async def wait(head: bytes, body: bytes) -> bytes:
        if not gate.is_set():
            gate.set()
            await asyncio.sleep(5)
        return ok(b"ok")

    async with server(wait) as (srv, url), client(url) as c:
        task = asyncio.create_task(c.get("/"))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await c.get("/")).text == "ok"
    assert srv.connections == 2


async def test_only_plain_http_is_spoken() -> None:
    async with client("https://127.0.0.1:1") as c:
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get("/")


def test_suits_plain_http_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert lean_http.suits("http://cairn:8000")
    assert not lean_http.suits("https://cairn:8000")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not lean_http.suits("http://cairn:8000")
    monkeypatch.setenv("NO_PROXY", "cairn,.internal")
    assert lean_http.suits("http://cairn:8000")
    assert lean_http.suits("http://api.internal:8000")
    assert not lean_http.suits("http://elsewhere:8000")


async def test_a_worker_uses_it_unless_given_a_transport_or_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker_sdk import Worker, Workflow

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    wf = Workflow("lean")

    @wf.step()
    def s(ctx: object) -> None:
        return None

    def transport_of(url: str, explicit: httpx.AsyncBaseTransport | None = None) -> object:
        worker = Worker(url, workflows=[wf], async_transport=explicit)
        client = worker._async_http()
        return client._transport  # the transport for URLs no proxy mount claims

    assert isinstance(transport_of("http://127.0.0.1:9"), LeanTransport)
    assert not isinstance(transport_of("https://127.0.0.1:9"), LeanTransport)
    given = httpx.AsyncHTTPTransport()
    assert transport_of("http://127.0.0.1:9", given) is given
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not isinstance(transport_of("http://127.0.0.1:9"), LeanTransport)


async def test_an_answer_sent_before_the_whole_request_was_read_is_returned() -> None:
    """A server refusing a large body (413) answers after the head and hangs up: the answer
    is what the caller gets, not the write error of the unsent rest."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the client reads the answer while it is still sending
        writer.transport.abort()  # unread request bytes: the kernel resets the connection

    tcp = await asyncio.start_server(refuse, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        async with client(url) as c:
            r = await c.post("/", content=b"x" * (32 * 1024 * 1024))
    finally:
        tcp.close()
    assert r.status_code == 413 and r.text == "big"

"""A lean HTTP/1.1 transport for ``httpx.AsyncClient``: plain ``http://``, kept-alive connections.

A worker's hot requests (polls and result batches) go to one server. httpx's default transport
(httpcore, h11, anyio) costs about a millisecond of CPU per request on this path; this one
writes the request and parses the answer on asyncio streams, and a request through
``httpx.AsyncClient`` on top of it costs the client about half as much CPU in all. Headers,
timeouts, redirects, response decoding (gzip) and the exception types stay httpx's, so retries
behave as with the default transport (refused connection: ``ConnectError``; server gone before
answering: ``RemoteProtocolError``; silence: ``ReadTimeout``). The request is sent while the
answer is awaited, so the read timeout bounds both (no separate write timeout).

``Worker`` uses it for ``http://`` URLs that no proxy setting applies to (``suits``); TLS and
proxies keep httpx's own transport, as does a transport passed in explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Callable

import httpx

MAX_HEAD_BYTES = 64 * 1024
IDLE_S = 4.0  # a kept-alive connection idle this long is not reused (servers close at ~5 s)
MAX_IDLE = 8  # kept-alive connections per origin
_HEX = b"0123456789abcdefABCDEF"
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_Headers = list[tuple[bytes, bytes]]


def suits(url: str) -> bool:
    """Whether the lean transport can serve ``url``: ``http://``, and no proxy from the
    environment applies to it (``HTTP_PROXY``/``ALL_PROXY`` unless ``NO_PROXY`` exempts it)."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    env = urllib.request.getproxies()
    if not (env.get("http") or env.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parsed.host))


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def reusable(self, now: float) -> bool:
        # at_eof: the server closed it while idle (the loop has seen the FIN).
        closed = self.writer.is_closing() or self.reader.at_eof()
        return not closed and now - self.idle_since < IDLE_S

    def close(self) -> None:
        transport = self.writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # the answer came before all was sent: drop the unsent rest
        else:
            self.writer.close()


def _timeout(request: httpx.Request, kind: str) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    value = timeouts.get(kind)
    return float(value) if value is not None else None


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive over TCP, ``http://`` only; any number of origins."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._clock = clock
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the lean transport speaks http:// only: {url}")
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = (url.host, url.port or 80)
        body = await request.aread()
        head = _head(request, len(body))
        conn = await self._checkout(request, origin)
        try:
            status, headers, content, keep = await self._exchange(request, conn, head + body)
        except BaseException:  # an error or a cancellation: the connection's state is unknown
            conn.close()
            raise
        self._checkin(origin, conn, keep)
        return httpx.Response(
            status,
            headers=headers,
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        idle = [conn for pool in self._idle.values() for conn in pool]
        self._idle.clear()
        for conn in idle:
            conn.close()
        for conn in idle:  # let the loop finish closing them before it may stop
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()

    async def _checkout(self, request: httpx.Request, origin: tuple[str, int]) -> _Conn:
        pool = self._idle.get(origin)
        now = self._clock()
        while pool:
            conn = pool.pop()
            if conn.reusable(now):
                return conn
            conn.close()
        try:
            async with asyncio.timeout(_timeout(request, "connect")):
                reader, writer = await asyncio.open_connection(*origin, limit=MAX_HEAD_BYTES)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Conn(reader, writer)

    def _checkin(self, origin: tuple[str, int], conn: _Conn, keep: bool) -> None:
        pool = self._idle.setdefault(origin, [])
        if keep and not self._closed and len(pool) < MAX_IDLE:
            conn.idle_since = self._clock()
            pool.append(conn)
        else:
            conn.close()

    async def _exchange(
        self, request: httpx.Request, conn: _Conn, data: bytes
    ) -> tuple[int, _Headers, bytes, bool]:
        # The request is handed to the socket's transport, which sends it in the background
        # while the answer is awaited: a server that answers before it has read the whole
        # request (a 413, say) and hangs up is heard, as with httpx's own transport, and not
        # lost to the reset that follows. The read timeout bounds sending and answering.
        try:
            conn.writer.write(data)
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        try:
            async with asyncio.timeout(_timeout(request, "read")):
                return await _response(request, conn.reader)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out waiting for the response", request=request) from exc
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "the server disconnected without sending a complete response", request=request
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("response head too large", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


def _head(request: httpx.Request, length: int) -> bytes:
    """Request line and headers (httpx has set Host and, for a body, Content-Length)."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path or b"/", b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue  # the body is read whole and sent with its length
        has_length = has_length or lower == b"content-length"
        parts += [name, b": ", value, b"\r\n"]
    if not has_length and (length or request.method not in _NO_BODY_METHODS):
        parts.append(b"Content-Length: %d\r\n" % length)
    parts.append(b"\r\n")
    return b"".join(parts)


async def _response(
    request: httpx.Request, reader: asyncio.StreamReader
) -> tuple[int, _Headers, bytes, bool]:
    while True:
        status, headers, keep = _parse_head(await reader.readuntil(b"\r\n\r\n"), request)
        if status >= 200:
            break  # a 1xx (100 Continue, 103 Early Hints) comes before the answer
    length: int | None = None
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise httpx.RemoteProtocolError(f"bad Content-Length {value!r}", request=request)
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower().rstrip().endswith(b"chunked")
    if request.method == "HEAD" or status in (204, 304):
        return status, headers, b"", keep
    if chunked:
        return status, headers, await _read_chunked(reader, request), keep
    if length is not None:
        return status, headers, await reader.readexactly(length), keep
    return status, headers, await reader.read(), False  # ends with the connection


def _parse_head(raw: bytes, request: httpx.Request) -> tuple[int, _Headers, bool]:
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
    keep = version == b"HTTP/1.1"
    headers: _Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"malformed header {line[:80]!r}", request=request)
        value = value.strip()
        headers.append((name, value))
        if name.lower() == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            keep = b"close" not in tokens and (keep or b"keep-alive" in tokens)
    return int(code), headers, keep


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request) -> bytes:
    out: list[bytes] = []
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        if not size_line or size_line.strip(_HEX):
            raise httpx.RemoteProtocolError(f"bad chunk size {size_line[:20]!r}", request=request)
        size = int(size_line, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields: not used
            return b"".join(out)
        out.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("chunk not followed by CRLF", request=request)

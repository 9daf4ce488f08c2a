"""The HTTP/1.1 protocol ``cairn serve`` runs: uvicorn's httptools protocol, answering in
problem+json what never reaches the application.

- A request the HTTP parser refuses (an unknown method, a bad ``Content-Length``, control bytes
  in a header, raw non-ASCII bytes in the path, not HTTP at all) is answered ``400``
  ``malformed_request`` as problem+json, where uvicorn answers a plain-text line.
- A request whose head (request line and headers) has not fully arrived within
  ``head_timeout_s`` of its first byte, or of the connection's opening, is answered ``408``
  ``request_timeout`` and its connection closed: uvicorn alone holds such a connection for ever
  (one socket each: a slow-loris client could hold them all). A request's body has its own
  deadline, kept by the application (``api.app.BodyLimitMiddleware``).

Each answer closes the connection, as uvicorn's own 400 does. A request refused behind pipelined
requests that parsed whole waits for their answers first (uvicorn closes at once and their
answers are lost, although they were applied). Behind the nginx of ``deploy/`` the
proxy's own timeouts come first; these keep a server that is reached directly safe too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.problems import PROBLEM_TYPE, problem_body

# The lifespan state's key for the service's ``drain()`` (api.app's lifespan yields it).
DRAIN_STATE_KEY = "cairn_drain"


class CairnHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with problem+json answers and a deadline for a request's
    head. Built by uvicorn for each connection (``cairn serve`` passes
    ``functools.partial(CairnHttpProtocol, head_timeout_s=...)``)."""

    def __init__(self, *args: Any, head_timeout_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: str | None = None  # a 400 waiting for earlier requests' answers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def shutdown(self) -> None:
        """The server starts a graceful shutdown (called for every open connection): tell the
        application first (``drain()`` in the lifespan state), so a long-poll waiting on this
        connection answers now instead of holding the shutdown up to its timeout."""
        drain = self.app_state.get(DRAIN_STATE_KEY)
        if callable(drain):
            drain()
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refusal is None:  # past a refused request, the byte stream means nothing
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        if cycle is not None and cycle.more_body:
            # The refused bytes are this request's body. Not started yet (queued behind
            # pipelined requests): drop it, the 400 stands in its place after their answers.
            queued = next((entry for entry in self.pipeline if entry[0] is cycle), None)
            if queued is None:  # it is the request being answered: the 400 is its answer
                self._refuse(msg)
                return
            self.pipeline.remove(queued)
        elif cycle is None or cycle.response_complete:
            self._refuse(msg)  # nothing is owed before it
            return
        # Requests before the refused one were applied or are being applied: the client is owed
        # their answers, so the 400 goes after them.
        self._refusal = msg
        self.flow.pause_reading()

    def on_response_complete(self) -> None:
        last = not self.pipeline  # no request queued behind the one just answered
        super().on_response_complete()
        if self._refusal is not None and last:
            self._refuse(self._refusal)

    def _refuse(self, msg: str) -> None:
        self._answer(400, "malformed_request", f"the HTTP request could not be parsed: {msg}")

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.head_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered; the next one's head waits behind it (pipelined).
            self._arm_head_timer()
            return
        self._answer(
            408,
            "request_timeout",
            f"the request's line and headers did not arrive within {self.head_timeout_s:g} s",
        )

    def _answer(self, status: int, code: str, detail: str) -> None:
        """Write a problem+json answer straight to the connection, then close it."""
        if self.transport.is_closing():
            return
        body = orjson.dumps(problem_body(status, code, detail))
        head = [STATUS_LINE.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: " + PROBLEM_TYPE.encode() + b"\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()

"""Exceptions raised by (or to) the Cairn worker SDK. Everything derives from CairnError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CairnError(Exception):
    """Base class of every exception the SDK defines."""


class DefinitionError(CairnError, ValueError):
    """A workflow definition is invalid (found locally, before talking to the server)."""


class InvalidArgument(CairnError, ValueError):
    """A client call's argument cannot make a request (input that is not JSON, an empty id),
    found before anything is sent."""


class ParentNotFoundError(CairnError, KeyError):
    """``ctx.parent_output()`` was asked for a step that is not a parent of this step."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NonRetryableError(CairnError):
    """Raise from a step to fail it for good (``retryable=false``).

    ``error_type`` overrides the error type reported to the server (default: class name).
    """

    def __init__(self, message: str = "", *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class RetryAfter(CairnError):
    """Raise from a step to fail this attempt and ask for the next one after ``seconds``."""

    def __init__(self, seconds: float, message: str = "") -> None:
        if not seconds >= 0:  # NaN too
            raise ValueError("RetryAfter seconds must be >= 0")
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = float(seconds)


class LeaseLostError(CairnError):
    """This worker no longer holds the step: its run was cancelled or its lease was lost.

    Raised by ``ctx.raise_if_cancelled()``; the step's result is dropped either way.
    """


class HTTPError(CairnError):
    """A request to the Cairn server failed (network error, or retries exhausted)."""


class APIError(HTTPError):
    """The server answered with an error status and (usually) an RFC 9457 problem body."""

    def __init__(self, status: int, problem: Mapping[str, Any] | None = None) -> None:
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        super().__init__(self._message())

    @property
    def code(self) -> str | None:
        code = self.problem.get("code")
        return code if isinstance(code, str) else None

    @property
    def title(self) -> str | None:
        title = self.problem.get("title")
        return title if isinstance(title, str) else None

    @property
    def detail(self) -> str | None:
        detail = self.problem.get("detail")
        return detail if isinstance(detail, str) else None

    def _message(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(f"[{self.code}]")
        text = self.detail or self.title
        if text:
            parts.append(text)
        return " ".join(parts)


class RunWaitTimeout(CairnError, TimeoutError):
    """``Client.wait()`` gave up before the run reached a terminal status."""

    def __init__(self, run_id: str, timeout: float, last: Mapping[str, Any] | None) -> None:
        status = (last or {}).get("status")
        super().__init__(f"run {run_id} not finished after {timeout:g}s (status {status})")
        self.run_id = run_id
        self.last: dict[str, Any] | None = dict(last) if last is not None else None

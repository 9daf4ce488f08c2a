"""Turning what a step returned or raised into the body of ``/complete`` or ``/fail``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from worker_sdk.errors import NonRetryableError, RetryAfter

MAX_ERROR_MESSAGE_BYTES = 8 * 1024
MAX_RETRY_AFTER_S = 86_400.0  # the server's bound on retry_after_s
TRUNCATED = "... [truncated]"


@dataclass(frozen=True)
class Outcome:
    """How a step ended. ``body`` lacks ``lease_token``; ``with_lease()`` adds it."""

    kind: Literal["complete", "fail"]
    body: dict[str, Any] = field(default_factory=dict)
    encoded_output: bytes | None = None  # JSON of the output, checked once

    @property
    def retryable(self) -> bool:
        return self.kind == "fail" and bool(self.body.get("retryable", True))

    def with_lease(self, lease_token: str) -> bytes:
        """The request body as JSON bytes, reusing the already encoded output."""
        if self.kind == "complete" and self.encoded_output is not None:
            token = json.dumps(lease_token)
            return b'{"lease_token":' + token.encode() + b',"output":' + self.encoded_output + b"}"
        return encode_json({"lease_token": lease_token, **self.body})


# One encoder for every output (``json.dumps`` with options builds a new one per call: about
# 1 us of a no-op step's 2 here). ``encode`` keeps no state between calls: safe on any thread.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """Strict JSON (no NaN/Infinity), UTF-8. Raises TypeError/ValueError if impossible."""
    return _ENCODER.encode(value).encode("utf-8")


def truncate_utf8(text: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    keep = max(limit - len(TRUNCATED.encode()), 0)
    return raw[:keep].decode("utf-8", errors="ignore") + TRUNCATED


def fail(
    error_type: str,
    message: str,
    *,
    retryable: bool = True,
    retry_after_s: float | None = None,
) -> Outcome:
    # Postgres text cannot hold NUL: the server refuses it (422), so it goes as U+FFFD.
    error_type, message = error_type.replace("\x00", "\ufffd"), message.replace("\x00", "\ufffd")
    body: dict[str, Any] = {
        "error": {"type": truncate_utf8(error_type, 200), "message": truncate_utf8(message)},
        "retryable": retryable,
    }
    if retry_after_s is not None and not math.isnan(retry_after_s):
        # The server takes 0 to one day (beyond: 422, which would leave the lease to expire).
        body["retry_after_s"] = min(max(float(retry_after_s), 0.0), MAX_RETRY_AFTER_S)
    return Outcome("fail", body)


def from_result(value: Any) -> Outcome:
    """A step returned ``value``: complete, or fail for good if it is not JSON."""
    try:
        encoded = encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return fail(
            "OutputNotSerializable",
            f"step output of type {type(value).__name__} is not JSON-serialisable: {exc}",
            retryable=False,
        )
    if b"\\u0000" in encoded:
        return fail(
            "OutputNotSerializable", "step output contains a NUL character", retryable=False
        )
    return Outcome("complete", {"output": value}, encoded_output=encoded)


def error_type_of(exc: BaseException) -> str:
    explicit = getattr(exc, "error_type", None)
    return explicit if isinstance(explicit, str) and explicit else type(exc).__name__


def from_exception(exc: BaseException) -> Outcome:
    """A step raised ``exc``: classify it into a fail body."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, NonRetryableError):
        return fail(error_type_of(exc), message, retryable=False)
    if isinstance(exc, RetryAfter):
        return fail(error_type_of(exc), message, retryable=True, retry_after_s=exc.seconds)
    return fail(error_type_of(exc), message, retryable=True)

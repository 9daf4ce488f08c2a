"""JSON payloads: validated and serialised once, before they reach SQL."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from db.errors import InvalidPayload, PayloadTooLarge

MAX_DEPTH = 64
# A real NUL is escaped as \u0000 after an even number of backslashes (an odd number means the
# backslash itself was escaped and the text just says "\u0000").
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# One encoder for every payload (``json.dumps`` with options builds a new one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def dump(value: Any, *, field: str, limit: int) -> str:
    """Serialise ``value`` to JSON text Postgres' jsonb accepts, or raise a 4xx domain error."""
    if not _depth_ok(value, MAX_DEPTH):
        raise InvalidPayload(f"{field} is nested deeper than {MAX_DEPTH} levels")
    try:
        text = _ENCODER.encode(value)
    except (ValueError, TypeError) as err:
        raise InvalidPayload(f"{field} is not valid JSON: {err}") from err
    if "\\u0000" in text and NUL_ESCAPE.search(text):
        raise InvalidPayload(f"{field} contains a NUL character, which Postgres cannot store")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise PayloadTooLarge(f"{field} is {size} bytes, over the limit of {limit} bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidPayload(f"{field} contains an unpaired surrogate") from err
    return text


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # An unpaired surrogate (refused before storing) must not make hashing fail first.
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()

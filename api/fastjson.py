"""JSON responses for the hot endpoints, serialised once by orjson.

Routes still declare their ``response_model`` (it documents the OpenAPI schema); returning a
ready ``Response`` skips FastAPI's second validation and serialisation of the same data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import Response


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
    )


def poll_response(tasks: Sequence[str], cancelled: Sequence[str], results: Any) -> Response:
    """The poll's answer; ``tasks`` are JSON objects already (rendered by Postgres)."""
    body = b"".join(
        (
            b'{"tasks":[',
            ",".join(tasks).encode(),
            b'],"cancelled":',
            orjson.dumps(list(cancelled)),
            b',"results":',
            orjson.dumps(results),
            b"}",
        )
    )
    return Response(body, media_type="application/json")

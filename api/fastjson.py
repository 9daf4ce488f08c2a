"""JSON responses for the hot endpoints, serialised once by orjson.

Routes still declare their ``response_model`` (it documents the OpenAPI schema); returning a
ready ``Response`` skips FastAPI's second validation and serialisation of the same data.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
    )

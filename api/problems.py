"""RFC 9457 problem+json: every error the API returns goes through here."""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.errors import CairnDBError, LeaseConflict

log = logging.getLogger("cairn.api")
PROBLEM_TYPE = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(
    status: int, code: str, detail: str, *, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An RFC 9457 problem document, as every error of Cairn's is written."""
    body: dict[str, Any] = {
        "type": f"urn:cairn:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_body(status, code, detail, instance=instance, **extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for e in errors:
        cleaned.append(
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", ""))[:500],
                "type": str(e.get("type", "")),
            }
        )
    return cleaned[:50]


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, with any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _refusal(request: Request) -> StarletteHTTPException | CairnDBError | None:
    """Why the gate would refuse ``request`` (401 / 403 / 429), if it would.

    FastAPI reads a JSON body before it solves a route's dependencies, so a malformed body
    would otherwise be answered 400 ahead of the missing token's 401: a caller without the
    right token learns nothing but that it is refused."""
    gate = getattr(request.app.state, "gate", None)
    if gate is None or not gate.enabled or not request.url.path.startswith("/api/"):
        return None
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    try:
        await gate.admit(request, token if scheme.lower() == "bearer" else None)
    except (StarletteHTTPException, CairnDBError) as refused:
        return refused
    return None


def install(app: FastAPI, on_conflict: Any = None) -> None:
    """Map every exception to problem+json. ``on_conflict`` is told of each LeaseConflict."""

    @app.exception_handler(CairnDBError)
    async def domain_error(request: Request, exc: CairnDBError) -> JSONResponse:
        if isinstance(exc, LeaseConflict) and on_conflict is not None:
            on_conflict(exc)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        extra = dict(exc.extra)
        if isinstance(exc, LeaseConflict):
            extra["conflicting"] = exc.conflicting
        return problem(
            exc.status, exc.code, exc.detail, instance=request.url.path, headers=headers, **extra
        )

    async def refusal(request: Request) -> JSONResponse | None:
        """The gate's answer, when it would refuse ``request`` (ahead of a body's problem)."""
        refused = await _refusal(request)
        if isinstance(refused, CairnDBError):
            return await domain_error(request, refused)
        if refused is not None:
            return await http_error(request, refused)
        return None

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_errors(exc.errors())
        body_errors = [e for e in errors if e["type"] in ("json_invalid", "model_attributes_type")]
        if body_errors and any(e["type"] == "json_invalid" for e in body_errors):
            if (refused := await refusal(request)) is not None:
                return refused
            return problem(
                400,
                "malformed_json",
                "the request body is not valid JSON",
                instance=request.url.path,
                errors=errors,
            )
        declared = request.headers.get("content-type")
        if (
            declared
            and not _is_json(declared)
            and any(e["loc"] == ["body"] and e["type"] == "model_attributes_type" for e in errors)
        ):
            if (refused := await refusal(request)) is not None:
                return refused
            detail = (
                f"the request body must be JSON (Content-Type: application/json), not {declared!r}"
            )
            return problem(415, "unsupported_media_type", detail[:300], instance=request.url.path)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        loc = ".".join(str(p) for p in first["loc"])
        detail = f"{loc}: {first['msg']}" if loc else str(first["msg"])
        return problem(422, "validation_error", detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
            429: "rate_limited",
        }.get(exc.status_code, "http_error")
        detail: str = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 400 and "parsing the body" in detail:
            if (refused := await refusal(request)) is not None:
                return refused
            cause = exc.__cause__
            if isinstance(cause, ValueError) and "digits" in str(cause):
                return problem(
                    422,
                    "invalid_payload",
                    "a number in the body has more digits than the server converts"
                    f" ({sys.get_int_max_str_digits()}); send it as a string",
                    instance=request.url.path,
                )
            code = "malformed_json"
            if isinstance(cause, UnicodeDecodeError):
                detail = "the request body is not valid UTF-8"
        return problem(
            exc.status_code,
            code,
            detail,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal", "unexpected server error", instance=request.url.path)

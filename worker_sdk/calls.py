"""The REST endpoints of the Cairn server as plain request descriptions (no I/O here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from worker_sdk.errors import InvalidArgument
from worker_sdk.outcome import Outcome, encode_json

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Call:
    """One request: method, path (under the base URL), JSON body bytes, query parameters."""

    method: str
    path: str
    body: bytes | None = None
    params: Mapping[str, Any] | None = None
    idempotent: bool = True  # safe to resend after an ambiguous failure


def _seg(value: str) -> str:
    if not str(value):
        raise InvalidArgument("an id or name in a request path must not be empty")
    return quote(str(value), safe="")


def _json(value: Any) -> bytes:
    try:
        return encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from exc


def put_workflow(name: str, definition: Mapping[str, Any]) -> Call:
    return Call("PUT", f"{PREFIX}/workflows/{_seg(name)}", _json(dict(definition)))


def list_workflows() -> Call:
    return Call("GET", f"{PREFIX}/workflows")


def get_workflow(name: str) -> Call:
    return Call("GET", f"{PREFIX}/workflows/{_seg(name)}")


class _NoInput:
    """The ``input`` not given: the server stores ``{}`` (``None`` is JSON ``null``)."""

    def __repr__(self) -> str:
        return "NO_INPUT"


NO_INPUT: Any = _NoInput()


def trigger(
    name: str,
    input: Any = NO_INPUT,
    *,
    idempotency_key: str | None = None,
    version: int | None = None,
) -> Call:
    body: dict[str, Any] = {}
    if input is not NO_INPUT:
        body["input"] = input
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if version is not None:
        body["version"] = version
    # Without an idempotency key a resent trigger could start the run twice.
    return Call(
        "POST",
        f"{PREFIX}/workflows/{_seg(name)}/runs",
        _json(body),
        idempotent=idempotency_key is not None,
    )


def trigger_many(
    name: str,
    inputs: Sequence[Any],
    *,
    idempotency_keys: Sequence[str | None] | None = None,
    version: int | None = None,
) -> Call:
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(inputs)
    if len(keys) != len(inputs):
        raise InvalidArgument("idempotency_keys must match inputs one to one")
    runs = [
        {"input": item, **({"idempotency_key": key} if key is not None else {})}
        for item, key in zip(inputs, keys, strict=True)
    ]
    body: dict[str, Any] = {"runs": runs}
    if version is not None:
        body["version"] = version
    # Resending is safe only when every run carries an idempotency key.
    return Call(
        "POST",
        f"{PREFIX}/workflows/{_seg(name)}/runs/bulk",
        _json(body),
        idempotent=all(k is not None for k in keys),
    )


def get_run(run_id: str) -> Call:
    return Call("GET", f"{PREFIX}/runs/{_seg(run_id)}")


def list_runs(
    *,
    workflow: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call:
    params = {"workflow": workflow, "status": status, "limit": limit, "cursor": cursor}
    return Call("GET", f"{PREFIX}/runs", params={k: v for k, v in params.items() if v is not None})


def cancel_run(run_id: str) -> Call:
    return Call("POST", f"{PREFIX}/runs/{_seg(run_id)}/cancel")


def replay_run(run_id: str) -> Call:
    return Call("POST", f"{PREFIX}/runs/{_seg(run_id)}/replay", idempotent=False)


def register_worker(
    name: str,
    actions: Iterable[str],
    slots: int,
    *,
    heartbeat_interval_s: float | None = None,
    lease_timeout_s: float | None = None,
) -> Call:
    body: dict[str, Any] = {"name": name, "actions": sorted(set(actions)), "slots": slots}
    if heartbeat_interval_s is not None:
        body["heartbeat_interval_s"] = heartbeat_interval_s
    if lease_timeout_s is not None:
        body["lease_timeout_s"] = lease_timeout_s
    # A duplicate registration only leaves an idle worker row behind: resending is fine.
    return Call("POST", f"{PREFIX}/workers", _json(body))


def poll(worker_id: str, max_tasks: int, wait_s: float, results: Sequence[bytes] = ()) -> Call:
    """``results``: finished step runs the poll carries, each a JSON object already encoded."""
    body = _json({"max_tasks": max_tasks, "wait_s": wait_s})
    if results:
        body = body[:-1] + b',"results":[' + b",".join(results) + b"]}"
    # A lost poll answer strands its leases until they expire: only resend if never processed.
    return Call("POST", f"{PREFIX}/workers/{_seg(worker_id)}/poll", body, idempotent=False)


def heartbeat(worker_id: str, step_run_ids: Iterable[str]) -> Call:
    body = {"step_run_ids": list(step_run_ids)}
    return Call("POST", f"{PREFIX}/workers/{_seg(worker_id)}/heartbeat", _json(body))


def deregister_worker(worker_id: str) -> Call:
    return Call("DELETE", f"{PREFIX}/workers/{_seg(worker_id)}")


def results(items: Sequence[bytes]) -> Call:
    """Many results in one request; each item is a JSON object already encoded."""
    body = b'{"results":[' + b",".join(items) + b"]}"
    return Call("POST", f"{PREFIX}/step-runs/results", body)


def report(step_run_id: str, lease_token: str, outcome: Outcome) -> Call:
    """``/complete`` or ``/fail``; resending is safe (the lease token makes it idempotent)."""
    path = f"{PREFIX}/step-runs/{_seg(step_run_id)}/{outcome.kind}"
    return Call("POST", path, outcome.with_lease(lease_token))

"""Applying a batch of step-run results: shared by ``/step-runs/results`` and the poll.

Each item is fenced by its own lease token. Refused items do not fail the batch: they come
back with ``status: "rejected"`` and the code the single-item endpoints would answer with 409.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.schemas import ResultIn
from db import leases, payloads
from db.errors import CairnDBError, InvalidPayload, LeaseConflict, NotFound, PayloadTooLarge
from db.pg import Conn
from db.types import Effects


@dataclass
class Batch:
    """Validated results, ready to apply (and re-apply, should the transaction be retried).

    An item naming a step run an earlier item of the batch already names goes to ``later``, a
    round applied after this one: each item is answered as if the items had come one by one,
    in order (the first of two results for one step run applies, the second is refused)."""

    size: int
    completions: list[tuple[int, tuple[str, str, str]]] = field(default_factory=list)
    failures: list[tuple[int, ResultIn, dict[str, Any]]] = field(default_factory=list)
    refusals: list[CairnDBError] = field(default_factory=list)
    later: Batch | None = None

    @property
    def simple(self) -> bool:
        """Completions only, one per step run: the poll applies them in one call."""
        return not self.failures and self.later is None

    def rounds(self) -> list[Batch]:
        out: list[Batch] = []
        batch: Batch | None = self
        while batch is not None:
            out.append(batch)
            batch = batch.later
        return out

    def step_run_ids(self) -> list[str]:
        ids: list[str] = []
        for batch in self.rounds():
            ids.extend(sid for _, (sid, _, _) in batch.completions)
            ids.extend(str(item.step_run_id) for _, item, _ in batch.failures)
        return ids

    @property
    def conflicts(self) -> list[LeaseConflict]:
        return [r for r in self.refusals if isinstance(r, LeaseConflict)]


def _dump(value: Any, i: int, part: str, limit: int) -> str:
    """One item's payload as JSON text; refused, the problem names the item where a program can
    read it (``errors[0].loc``, as a validation error's), not only in ``detail``."""
    try:
        return payloads.dump(value, field=f"results[{i}].{part}", limit=limit)
    except (InvalidPayload, PayloadTooLarge) as err:
        loc = ["body", "results", str(i), part]  # as a validation error's ``loc``
        err.extra.setdefault("errors", [{"loc": loc, "msg": err.detail, "type": err.code}])
        raise


def prepare(items: list[ResultIn], *, max_batch: int, max_payload_bytes: int) -> Batch:
    """Check sizes and encode outputs before any transaction starts (422/413 on bad input)."""
    if len(items) > max_batch:
        raise InvalidPayload(f"{len(items)} results is over the batch limit {max_batch}")
    first = batch = Batch(size=len(items))
    pending = list(enumerate(items))
    while pending:
        seen: set[str] = set()
        repeats: list[tuple[int, ResultIn]] = []
        for i, item in pending:
            sid, token = str(item.step_run_id), str(item.lease_token)
            if sid in seen:
                repeats.append((i, item))
                continue
            seen.add(sid)
            if item.error is None:
                output = _dump(item.output, i, "output", max_payload_bytes)
                batch.completions.append((i, (sid, token, output)))
            else:
                error = item.error.model_dump()
                _dump(error, i, "error", max_payload_bytes)
                batch.failures.append((i, item, error))
        pending = repeats
        if pending:
            batch.later = Batch(size=len(items))
            batch = batch.later
    return first


async def apply(conn: Conn, tenant: str, batch: Batch, effects: Effects) -> list[dict[str, Any]]:
    """Apply every item inside the caller's transaction; one answer per item, in order."""
    batch.refusals.clear()
    out: list[dict[str, Any] | None] = [None] * batch.size
    rounds = batch.rounds()
    if batch.size > 1 and any(r.failures for r in rounds):
        # Each failure locks its own run as it comes: every run first, in id order, so two
        # batches over the same runs cannot each hold a run the other waits for.
        await leases.lock_runs(conn, tenant, batch.step_run_ids())
    for round_ in rounds:
        await _apply_round(conn, tenant, round_, effects, out, batch.refusals)
    return [o for o in out if o is not None]


async def _apply_round(
    conn: Conn,
    tenant: str,
    batch: Batch,
    effects: Effects,
    out: list[dict[str, Any] | None],
    refusals: list[CairnDBError],
) -> None:
    if batch.completions:
        refused = await leases.complete_many(
            conn, tenant, [c for _, c in batch.completions], effects=effects
        )
        for (i, (sid, _, _)), why in zip(batch.completions, refused, strict=True):
            out[i] = answer(sid, "succeeded", why)
            refusals.extend([why] if why is not None else [])
    for i, item, error in batch.failures:
        try:
            outcome: str | CairnDBError = await leases.fail(
                conn,
                tenant,
                str(item.step_run_id),
                str(item.lease_token),
                error,
                retryable=item.retryable,
                retry_after_s=item.retry_after_s,
                effects=effects,
            )
        except NotFound as err:
            outcome = err
        if isinstance(outcome, CairnDBError):
            out[i] = answer(str(item.step_run_id), "", outcome)
            refusals.append(outcome)
        else:
            out[i] = answer(str(item.step_run_id), outcome, None)


def answer(step_run_id: str, status: str, why: CairnDBError | None) -> dict[str, Any]:
    """One item of a ResultsOut."""
    if why is None:
        return {
            "step_run_id": step_run_id,
            "status": status,
            "code": None,
            "detail": None,
            "conflicting": None,
        }
    conflicting = why.conflicting if isinstance(why, LeaseConflict) else None
    return {
        "step_run_id": step_run_id,
        "status": "rejected",
        "code": why.code,
        "detail": why.detail,
        "conflicting": conflicting,
    }

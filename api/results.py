"""Applying a batch of step-run results: shared by ``/step-runs/results`` and the poll.

Each item is fenced by its own lease token. Refused items do not fail the batch: they come
back with ``status: "rejected"`` and the code the single-item endpoints would answer with 409.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.schemas import ResultIn
from db import leases, payloads
from db.errors import CairnDBError, InvalidPayload, LeaseConflict, NotFound
from db.pg import Conn
from db.types import Effects


@dataclass
class Batch:
    """Validated results, ready to apply (and re-apply, should the transaction be retried)."""

    size: int
    completions: list[tuple[int, tuple[str, str, str]]] = field(default_factory=list)
    failures: list[tuple[int, ResultIn, dict[str, Any]]] = field(default_factory=list)
    refusals: list[CairnDBError] = field(default_factory=list)

    def step_run_ids(self) -> list[str]:
        done = [sid for _, (sid, _, _) in self.completions]
        return done + [str(item.step_run_id) for _, item, _ in self.failures]

    @property
    def conflicts(self) -> list[LeaseConflict]:
        return [r for r in self.refusals if isinstance(r, LeaseConflict)]


def prepare(items: list[ResultIn], *, max_batch: int, max_payload_bytes: int) -> Batch:
    """Check sizes and encode outputs before any transaction starts (422/413 on bad input)."""
    if len(items) > max_batch:
        raise InvalidPayload(f"{len(items)} results is over the batch limit {max_batch}")
    batch = Batch(size=len(items))
    for i, item in enumerate(items):
        sid, token = str(item.step_run_id), str(item.lease_token)
        if item.error is None:
            output = payloads.dump(
                item.output, field=f"results[{i}].output", limit=max_payload_bytes
            )
            batch.completions.append((i, (sid, token, output)))
        else:
            error = item.error.model_dump()
            payloads.dump(error, field=f"results[{i}].error", limit=max_payload_bytes)
            batch.failures.append((i, item, error))
    return batch


async def apply(conn: Conn, tenant: str, batch: Batch, effects: Effects) -> list[dict[str, Any]]:
    """Apply every item inside the caller's transaction; one answer per item, in order."""
    batch.refusals.clear()
    out: list[dict[str, Any] | None] = [None] * batch.size
    if batch.failures and batch.size > 1:
        # Each failure locks its own run as it comes: every run first, in id order, so two
        # batches over the same runs cannot each hold a run the other waits for.
        await leases.lock_runs(conn, tenant, batch.step_run_ids())
    if batch.completions:
        refused = await leases.complete_many(
            conn, tenant, [c for _, c in batch.completions], effects=effects
        )
        for (i, (sid, _, _)), why in zip(batch.completions, refused, strict=True):
            out[i] = answer(sid, "succeeded", why)
            batch.refusals.extend([why] if why is not None else [])
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
            batch.refusals.append(outcome)
        else:
            out[i] = answer(str(item.step_run_id), outcome, None)
    return [o for o in out if o is not None]


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

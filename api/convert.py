"""Frozen data-layer models → API response models."""

from __future__ import annotations

from api.schemas import AttemptOut, RunOut, StepRunOut, WorkflowOut
from db.types import Run, Workflow


def workflow_out(w: Workflow) -> WorkflowOut:
    return WorkflowOut(
        name=w.name,
        version=w.version,
        definition=w.definition,
        created_at=w.created_at,
        versions=list(w.versions) or None,
    )


def run_out(r: Run) -> RunOut:
    steps = None
    if r.steps is not None:
        steps = [
            StepRunOut(
                step_run_id=s.step_run_id,
                name=s.name,
                action=s.action,
                status=s.status,
                attempt=s.attempt,
                max_attempts=s.max_attempts,
                delivery=s.delivery,
                on_failure=s.is_on_failure,
                parents=list(s.parents),
                output=s.output,
                error=s.error,
                queued_at=s.queued_at,
                started_at=s.started_at,
                finished_at=s.finished_at,
                cancel_requested=s.cancel_requested,
                attempts=[
                    AttemptOut(
                        attempt=a.attempt,
                        worker_id=a.worker_id,
                        lease_token=a.lease_token,
                        started_at=a.started_at,
                        ended_at=a.ended_at,
                        outcome=a.outcome,
                        error=a.error,
                    )
                    for a in s.attempts
                ],
            )
            for s in r.steps
        ]
    return RunOut(
        id=r.id,
        workflow=r.workflow,
        version=r.version,
        status=r.status,
        input=r.input,
        idempotency_key=r.idempotency_key,
        error=r.error,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        steps=steps,
    )

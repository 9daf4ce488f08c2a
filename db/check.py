"""Invariant checks run straight against the database (``cairn check``).

Each check is one query returning offending rows; an empty result means the invariant holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy import text

from db.pg import Conn


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    detail: str


CHECKS: dict[str, str] = {
    # A running step run must have a holder whose lease is live (allowing the reaper some slack).
    "running_without_live_lease": """
        SELECT s.id::text, s.lease_expires_at::text FROM step_runs s
        WHERE s.status = 'running'
          AND (s.lease_token IS NULL OR s.lease_expires_at < now() - make_interval(secs => :slack))
    """,
    "terminal_with_open_lease": """
        SELECT id::text, status FROM step_runs
        WHERE status IN ('succeeded', 'failed', 'cancelled', 'skipped')
          AND (lease_token IS NOT NULL OR lease_expires_at IS NOT NULL)
    """,
    # The attempt in progress lives on its running step run; its row is written when it ends.
    "running_attempt_already_ended": """
        SELECT a.step_run_id::text, a.attempt::text FROM step_attempts a
        JOIN step_runs s ON s.id = a.step_run_id
        WHERE s.status = 'running' AND a.attempt >= s.attempt
    """,
    # Ended attempts are numbered 1..attempt (1..attempt-1 while one runs), no gap, no duplicate.
    "attempt_gaps": """
        SELECT s.id::text, s.attempt || ' vs ' || count(a.attempt) || ' rows, max ' ||
               COALESCE(max(a.attempt), 0)
        FROM step_runs s LEFT JOIN step_attempts a ON a.step_run_id = s.id
        GROUP BY s.id, s.attempt, s.status
        HAVING count(a.attempt) <> s.attempt - (s.status = 'running')::int
            OR COALESCE(max(a.attempt), 0) <> s.attempt - (s.status = 'running')::int
    """,
    # Attempts have no foreign key (migration 0007): each is written from its step run.
    "attempt_without_step_run": """
        SELECT a.step_run_id::text, a.attempt::text FROM step_attempts a
        WHERE NOT EXISTS (SELECT 1 FROM step_runs s WHERE s.id = a.step_run_id)
    """,
    # A succeeded step has exactly one succeeded attempt, and it is the last one.
    "succeeded_attempts": """
        SELECT s.id::text, count(a.attempt) FILTER (WHERE a.outcome = 'succeeded')::text
        FROM step_runs s LEFT JOIN step_attempts a ON a.step_run_id = s.id
        GROUP BY s.id, s.status, s.attempt
        HAVING (s.status = 'succeeded') <> (count(a.attempt) FILTER (
                 WHERE a.outcome = 'succeeded' AND a.attempt = s.attempt) = 1)
            OR count(a.attempt) FILTER (WHERE a.outcome = 'succeeded') > 1
    """,
    # A finished run agrees with its steps; an unfinished run still has work it is waiting for.
    "run_status_agrees": """
        SELECT r.id::text, r.status || ': ' || string_agg(DISTINCT s.status, ',')
        FROM runs r JOIN step_runs s ON s.run_id = r.id
        GROUP BY r.id, r.status
        HAVING (r.status = 'succeeded' AND bool_or(
                  s.status NOT IN ('succeeded', 'skipped')
                  OR (s.status = 'skipped' AND NOT s.is_on_failure)))
            OR (r.status = 'failed' AND (NOT bool_or(s.status = 'failed' AND NOT s.is_on_failure)
                  OR bool_or(s.status IN ('pending', 'queued', 'running')
                             AND NOT (s.is_on_failure AND s.status = 'pending'))))
            OR (r.status = 'cancelled' AND bool_or(s.status IN ('pending', 'queued')
                  OR (s.status = 'running' AND s.cancel_requested_at IS NULL)))
            OR (r.status IN ('queued', 'running') AND NOT bool_or(
                  s.status IN ('queued', 'running')
                  OR (s.status = 'pending' AND NOT s.is_on_failure)))
    """,
    # A queued or pending step's parents agree with its state.
    "ready_steps_queued": """
        SELECT c.id::text, c.step_name FROM step_runs c
        JOIN runs r ON r.id = c.run_id AND r.status IN ('queued', 'running')
        WHERE c.status = 'pending' AND NOT c.is_on_failure
          AND NOT EXISTS (SELECT 1 FROM step_runs p WHERE p.run_id = c.run_id
                          AND p.step_name = ANY(c.parents) AND p.status <> 'succeeded')
    """,
    "finished_iff_terminal": """
        SELECT id::text, status FROM runs
        WHERE (finished_at IS NOT NULL) <> (status IN ('succeeded', 'failed', 'cancelled'))
    """,
    # A run's row may stay 'queued' while its first steps run, never once an attempt has ended.
    "started_run_recorded": """
        SELECT r.id::text, 'queued with an ended attempt' FROM runs r
        WHERE r.status = 'queued' AND EXISTS (
          SELECT 1 FROM step_runs s JOIN step_attempts a ON a.step_run_id = s.id
          WHERE s.run_id = r.id)
    """,
}


async def run_checks(conn: Conn, *, slack_s: float = 30.0) -> list[Violation]:
    """All invariant violations found (empty when the database is consistent)."""
    found: list[Violation] = []
    # These read whole tables: sequential scans, which Cairn's connections leave off (db/pg.py).
    await conn.execute(text("SET enable_seqscan = on"))
    try:
        for name, sql in CHECKS.items():
            rows = await conn.execute(text(sql), {"slack": slack_s})
            for row in rows.all()[:100]:
                found.append(Violation(name, " ".join(str(v) for v in row)))
    finally:
        with contextlib.suppress(Exception):  # a failed transaction rolls the SET back anyway
            await conn.execute(text("RESET enable_seqscan"))
    return found

"""A report after the step's execution timeout is refused, whether or not the reaper has run

A completion was applied when its token was current and its lease live, whatever the step's
``timeout_at``: a step that ran past its ``timeout_s`` succeeded if its report reached the server
before the reaper's next tick (a tick missed during a database restart, or simply not yet due),
and timed out otherwise. The completion's guard (``COMPLETE_CTES``) now also requires
``timeout_at > now``, and a holder's refused report ends its overdue attempt at once as the reaper
would (``db.transitions.end_overdue``), so the outcome never depends on the reaper's timing.

``cairn_poll`` is re-created from ``db/poll_fn.py`` as it is now, its body frozen here.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 18:00:00.000000
"""

from __future__ import annotations

import importlib

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BODY = r"""
#variable_conflict use_column
DECLARE
  n_done bigint; n_items bigint; p_runs uuid[]; d_seconds double precision[];
  s_statuses text[]; q_tenants text[]; q_actions text[]; n_claim_rows bigint;
BEGIN
  
WITH items AS (
  SELECT * FROM jsonb_to_recordset(CAST(p_items AS jsonb)) AS i(id uuid, token uuid, output jsonb)
), locked AS (
  SELECT r.id FROM runs r
  WHERE r.id = ANY(ARRAY(SELECT s.run_id FROM step_runs s JOIN items i ON i.id = s.id))
  ORDER BY r.id FOR UPDATE
), done AS (
  UPDATE step_runs s SET status = 'succeeded', output = i.output -> 'v', error = NULL,
    lease_token = NULL, lease_expires_at = NULL, timeout_at = NULL, finished_at = COALESCE(CAST(p_now AS timestamptz), now())
  FROM items i
  WHERE s.id = i.id AND s.tenant_id = p_tenant
    AND (SELECT count(*) FROM locked) >= 0  -- runs locked first (one-time filter)
    AND s.lease_token = i.token AND s.cancel_requested_at IS NULL
    AND s.lease_expires_at > COALESCE(CAST(p_now AS timestamptz), now()) AND s.timeout_at > COALESCE(CAST(p_now AS timestamptz), now())
  RETURNING s.id, s.run_id, s.tenant_id, s.attempt, s.worker_id, s.started_at, i.token,
    EXTRACT(EPOCH FROM (COALESCE(CAST(p_now AS timestamptz), now()) - s.started_at)) AS duration
), hist AS (
  INSERT INTO step_attempts (tenant_id, step_run_id, attempt, worker_id, lease_token, started_at, ended_at, outcome, error)
  SELECT tenant_id, id, attempt, worker_id, token, started_at, COALESCE(CAST(p_now AS timestamptz), now()), 'succeeded', NULL
  FROM done
)
SELECT count(*), array_agg(DISTINCT run_id), array_agg(duration),
  (SELECT count(*) FROM items) INTO n_done, p_runs, d_seconds, n_items FROM done;
  -- Every result applied (a refused or repeated one: one by one).
  IF n_done <> n_items THEN
    RAISE EXCEPTION 'cairn_poll: a result was refused' USING ERRCODE = 'CRN01';
  END IF;
  WITH 
agg AS (
  SELECT run_id,
    count(*) FILTER (
      WHERE status IN ('pending', 'queued', 'running') AND NOT (is_on_failure AND status = 'pending')) AS open,
    count(*) FILTER (WHERE status = 'failed' AND NOT is_on_failure) AS failed,
    count(*) FILTER (WHERE status = 'pending' AND NOT is_on_failure) AS pending,
    count(*) FILTER (WHERE status = 'pending' AND is_on_failure) AS handlers,
    min(started_at) AS first_start
  FROM step_runs WHERE run_id = ANY(CAST(p_runs AS uuid[])) GROUP BY run_id
), settled AS (
  UPDATE runs SET
    status = CASE WHEN agg.open > 0 THEN 'running'
                  WHEN agg.failed > 0 THEN 'failed' ELSE 'succeeded' END,
    finished_at = CASE WHEN agg.open > 0 THEN NULL ELSE COALESCE(CAST(p_now AS timestamptz), now()) END,
    started_at = COALESCE(runs.started_at, agg.first_start,
                          CASE WHEN agg.open > 0 THEN COALESCE(CAST(p_now AS timestamptz), now()) END),  -- finished unstarted: none
    error = CASE WHEN agg.open = 0 AND agg.failed > 0 THEN (
      SELECT jsonb_build_object('step', f.step_name, 'error', f.error) FROM step_runs f
      WHERE f.run_id = agg.run_id AND f.status = 'failed' AND NOT f.is_on_failure
      ORDER BY f.finished_at, f.position LIMIT 1) END
  FROM agg WHERE runs.id = agg.run_id AND runs.status IN ('queued', 'running')
    AND (agg.open = 0 OR runs.status = 'queued')
  RETURNING runs.id, runs.status, agg.handlers
), skipped AS (
  UPDATE step_runs SET status = 'skipped', finished_at = COALESCE(CAST(p_now AS timestamptz), now())
  WHERE run_id = ANY(ARRAY(SELECT id FROM settled
                           WHERE status IN ('succeeded', 'failed') AND handlers > 0))
    AND is_on_failure AND status = 'pending'
), promoted AS (
UPDATE step_runs c SET status = 'queued', available_at = COALESCE(CAST(p_now AS timestamptz), now()), queued_at = COALESCE(CAST(p_now AS timestamptz), now()),
  schedule_deadline = COALESCE(CAST(p_now AS timestamptz), now()) + make_interval(secs => c.schedule_timeout_s),
  parent_outputs = (SELECT COALESCE(jsonb_object_agg(p.step_name, p.output), '{}'::jsonb)
                    FROM step_runs p WHERE p.run_id = c.run_id AND p.step_name = ANY(c.parents))
WHERE c.run_id = ANY(ARRAY(SELECT run_id FROM agg WHERE pending > 0)) AND c.status = 'pending' AND NOT c.is_on_failure
  AND NOT EXISTS (SELECT 1 FROM step_runs p WHERE p.run_id = c.run_id
                  AND p.step_name = ANY(c.parents) AND p.status <> 'succeeded')
RETURNING c.tenant_id, c.action
)
SELECT array_agg(status::text),
  (SELECT array_agg(tenant_id::text) FROM promoted), (SELECT array_agg(action::text) FROM promoted)
  INTO s_statuses, q_tenants, q_actions FROM settled;
  PERFORM pg_notify('cairn_queue', x)
  FROM (SELECT DISTINCT t || ':' || a AS x FROM unnest(q_tenants, q_actions) AS u(t, a)
        ORDER BY 1) d;
  -- One row for the results: how many applied, their durations, the runs settled, the steps
  -- queued (their NOTIFYs are sent above).
  RETURN QUERY SELECT 'applied'::text, coalesce(cardinality(q_actions), 0), NULL::double precision,
    d_seconds, s_statuses, NULL::text[], NULL::text[], NULL::text, NULL::text;
  RETURN QUERY 
WITH w AS (
  SELECT id, actions, lease_timeout_s,
    ARRAY(SELECT s.id::text FROM step_runs s WHERE s.worker_id = p_worker AND s.status = 'running'
          AND s.cancel_requested_at IS NOT NULL) AS cancelled,
    cairn_free_slots(id, slots) AS free
  FROM workers
  WHERE tenant_id = p_tenant AND id = p_worker AND deregistered_at IS NULL
), seen AS (
  UPDATE workers SET last_seen_at = COALESCE(CAST(p_now AS timestamptz), now())
  WHERE id IN (SELECT id FROM w) AND last_seen_at < COALESCE(CAST(p_now AS timestamptz), now()) - interval '1 second'
), lim AS (
  SELECT CASE WHEN cardinality(cancelled) > 0 THEN 0
              ELSE GREATEST(LEAST(CAST(p_max_tasks AS integer), free), 0) END AS n
  FROM w
), seek AS (
  SELECT a.action, CASE WHEN f.at IS NULL THEN '-infinity' ELSE LEAST(f.at, COALESCE(CAST(p_now AS timestamptz), now()) - interval '1 second') END
      AS at,
    CASE WHEN f.at < COALESCE(CAST(p_now AS timestamptz), now()) - interval '1 second' THEN f.id ELSE CAST('00000000-0000-0000-0000-000000000000' AS uuid) END AS id
  FROM w CROSS JOIN LATERAL unnest(w.actions) AS a(action)
  CROSS JOIN LATERAL (
    SELECT CAST(CAST(p_floors AS jsonb) -> a.action ->> 0 AS timestamptz) AS at,
      CAST(CAST(p_floors AS jsonb) -> a.action ->> 1 AS uuid) AS id
  ) f
), found AS (
  SELECT k.action, c.id, c.available_at FROM seek k CROSS JOIN LATERAL (
    SELECT s.id, s.available_at FROM step_runs s
    WHERE s.tenant_id = p_tenant AND s.status = 'queued' AND s.action = k.action
      AND s.available_at <= COALESCE(CAST(p_now AS timestamptz), now()) AND (s.available_at, s.id) >= (k.at, k.id)
    ORDER BY s.available_at, s.id
    LIMIT (SELECT n FROM lim)
    FOR UPDATE SKIP LOCKED
  ) c
), cand AS (
  SELECT id, available_at FROM found ORDER BY available_at, id LIMIT (SELECT n FROM lim)
), floors AS (
  -- Where each action's next claim may start: its first row found here, or (none found) now.
  SELECT CAST(jsonb_object_agg(k.action, COALESCE(
      (SELECT jsonb_build_array(f.available_at, f.id) FROM found f WHERE f.action = k.action
       ORDER BY f.available_at, f.id LIMIT 1),
      jsonb_build_array(COALESCE(CAST(p_now AS timestamptz), now()), CAST('00000000-0000-0000-0000-000000000000' AS uuid)))) AS text) AS floors
  FROM seek k WHERE (SELECT n FROM lim) > 0
), claimed AS (
  UPDATE step_runs s SET status = 'running', attempt = s.attempt + 1,
    lease_token = gen_random_uuid(), worker_id = p_worker,
    lease_expires_at = COALESCE(CAST(p_now AS timestamptz), now()) + make_interval(secs => (SELECT lease_timeout_s FROM w)),
    timeout_at = COALESCE(CAST(p_now AS timestamptz), now()) + make_interval(secs => s.timeout_s), started_at = COALESCE(CAST(p_now AS timestamptz), now())
  -- The rows are locked queued by this statement (FOR UPDATE above): the guard is the lock. Not
  -- naming the status keeps the claim index (partial on it) out of this lookup by key, which
  -- would otherwise read that index whole, dead entries and all, when statistics are stale.
  WHERE s.id = ANY(ARRAY(SELECT id FROM cand)) AND s.lease_token IS NULL
  RETURNING s.id, s.run_id, s.step_name, s.action, s.attempt, s.lease_token, s.started_at,
    s.parent_outputs, s.timeout_at, s.lease_expires_at, s.delivery, s.available_at
), tasks AS (
  SELECT c.*, r.workflow_name, r.version, r.input FROM claimed c CROSS JOIN LATERAL (
    SELECT workflow_name, version, input FROM runs WHERE runs.id = c.run_id OFFSET 0
  ) r
)
SELECT 'claim'::text, lim.n::integer,
  EXTRACT(EPOCH FROM (t.started_at - t.available_at))::double precision,
  NULL::double precision[], NULL::text[],
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.actions END,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.cancelled END,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN (SELECT floors FROM floors)
  END,
  CASE WHEN t.id IS NOT NULL THEN ('{"step_run_id":"' || t.id || '","run_id":"' || t.run_id
    || '","workflow":' || to_json(t.workflow_name) || ',"version":' || t.version
    || ',"step":' || to_json(t.step_name) || ',"action":' || to_json(t.action)
    || ',"attempt":' || t.attempt || ',"lease_token":"' || t.lease_token
    || '","input":' || CAST(t.input AS text)
    || ',"parents":' || CAST(COALESCE(t.parent_outputs, '{}') AS text)
    || ',"timeout_at":"' || to_char(t.timeout_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    || '","lease_expires_at":"' || to_char(t.lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    || '","delivery":' || to_json(t.delivery) || '}') END
FROM w CROSS JOIN lim LEFT JOIN tasks t ON true
ORDER BY t.available_at, t.id;
  -- The claim answered for a registered worker (a row at least) with no cancellation waiting
  -- for it, even one requested meanwhile (else: one by one, which delivers it).
  GET DIAGNOSTICS n_claim_rows = ROW_COUNT;
  IF n_claim_rows = 0 OR EXISTS (
      SELECT 1 FROM step_runs WHERE worker_id = p_worker AND status = 'running'
        AND cancel_requested_at IS NOT NULL) THEN
    RAISE EXCEPTION 'cairn_poll: not the common case' USING ERRCODE = 'CRN01';
  END IF;
END
"""

_0014 = importlib.import_module("db.migrations.versions.0014_claims_of_one_worker_take_turns")
_0015 = importlib.import_module("db.migrations.versions.0015_no_claim_for_a_deregistered_worker")


def upgrade() -> None:
    _0014._replace(BODY)


def downgrade() -> None:
    _0014._replace(_0015.BODY)

"""Queue-critical SQL, in one place, as named statements.

Every time-dependent statement takes ``:now`` (NULL means the database clock), so tests can fix
the clock; every guarded write re-checks its guard inside the same statement.
"""

from __future__ import annotations

import re

from sqlalchemy import TextClause, text

NOW = "COALESCE(CAST(:now AS timestamptz), now())"
OPEN_STEP = "('pending', 'queued', 'running')"
CLEAR_LEASE = "lease_token = NULL, lease_expires_at = NULL, timeout_at = NULL"


# ``{UTC:expr}``: a timestamptz as RFC 3339 text in UTC, whatever the session's time zone.
_UTC = re.compile(r"\{UTC:([^}]+)\}")


def expand(sql: str) -> str:
    """The macros: ``{NOW}`` and ``{UTC:expr}``."""
    sql = _UTC.sub(r"""to_char(\1 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""", sql)
    return sql.replace("{NOW}", NOW)


def q(sql: str) -> TextClause:
    return text(expand(sql))


# --- runs ---------------------------------------------------------------------------------------

# A run's row stays 'queued' while its first steps run (the claim does not write the run, which
# halves the rows a claim changes): the row becomes 'running' when a step of it finishes or is
# re-queued. Readers see the run's real state: 'running', with its first step's start, as soon
# as any step of it has started.
RUN_FROM = """runs LEFT JOIN LATERAL (
  SELECT min(s.started_at) AS first_start FROM step_runs s
  WHERE runs.status = 'queued' AND s.run_id = runs.id
) f ON true"""

# ``runs.status = 'queued'`` again, although the lateral is empty otherwise: under ``FOR UPDATE``
# a row changed while the lock was awaited is read again, its lateral is not, and a run that
# finished meanwhile must read as finished, not as the 'running' of the stale lateral.
RUN_STATUS = (
    "CASE WHEN runs.status = 'queued' AND f.first_start IS NOT NULL THEN 'running' "
    "ELSE runs.status END"
)

RUN_COLUMNS = f"""runs.id, runs.workflow_name, runs.version, {RUN_STATUS} AS status, runs.input,
  runs.idempotency_key, runs.error, runs.created_at,
  COALESCE(runs.started_at, f.first_start) AS started_at, runs.finished_at"""

LOCK_RUN = q(f"""
SELECT {RUN_COLUMNS}, runs.workflow_id FROM {RUN_FROM}
WHERE runs.tenant_id = :tenant AND runs.id = :id FOR UPDATE OF runs
""")

# A step of a run still 'queued' is re-queued before any finished: the run has started.
START_RUN = q("""
UPDATE runs SET status = 'running',
  started_at = COALESCE((SELECT min(s.started_at) FROM step_runs s WHERE s.run_id = runs.id),
                        {NOW})
WHERE id = :run AND status = 'queued'
""")

# --- cancellation and replay ---------------------------------------------------------------------

# A run's started_at is its first step's start; a run that never started has none.
CANCEL_RUN = q("""
UPDATE runs SET status = 'cancelled', finished_at = {NOW},
  started_at = COALESCE(started_at, (SELECT min(s.started_at) FROM step_runs s
                                     WHERE s.run_id = runs.id))
WHERE tenant_id = :tenant AND id = :id AND status IN ('queued', 'running')
RETURNING id
""")

CANCEL_OPEN_STEPS = q(
    """
UPDATE step_runs SET
  status = CASE WHEN status = 'running' THEN 'running' ELSE 'cancelled' END,
  finished_at = CASE WHEN status = 'running' THEN NULL ELSE {NOW} END,
  cancel_requested_at = CASE WHEN status = 'running' THEN {NOW} END
WHERE id IN (SELECT id FROM step_runs WHERE run_id = :run AND status IN {OPEN_STEP}
             ORDER BY id FOR UPDATE)
RETURNING status, worker_id::text
""".replace("{OPEN_STEP}", OPEN_STEP)
)

# A replay waits while any step of the run still runs (under a cancel flag): db.runs.replay.
REPLAY_RUNNING_STEPS = q(
    "SELECT count(*) FROM step_runs WHERE run_id = :run AND status = 'running'"
)

# A succeeded step keeps its output, the on_failure step too: it handled the failure and its
# result is as final as any other (it does not run again if the replayed run fails again).
REPLAY_RESET_STEPS = q("""
UPDATE step_runs SET status = 'pending', output = NULL, error = NULL, finished_at = NULL,
  cancel_requested_at = NULL, parent_outputs = NULL, available_at = NULL, queued_at = NULL,
  schedule_deadline = NULL,
  max_attempts = attempt + (CAST(:retries AS jsonb) ->> step_name)::int + 1
WHERE run_id = :run AND status IN ('failed', 'cancelled', 'skipped')
RETURNING step_name
""")

# Replayed, a run is running again if it had started (its started_at is kept), else queued.
REPLAY_START_RUN = q("""
UPDATE runs SET finished_at = NULL, error = NULL,
  started_at = COALESCE(runs.started_at, f.first_start),
  status = CASE WHEN COALESCE(runs.started_at, f.first_start) IS NULL THEN 'queued'
                ELSE 'running' END
FROM (SELECT min(s.started_at) AS first_start FROM step_runs s WHERE s.run_id = :run) f
WHERE runs.id = :run
""")

# --- transitions shared by complete, fail and the reaper ------------------------------------------

# Pending steps of these runs whose parents have all succeeded become queued, with their
# parents' outputs. The caller holds the runs' locks, so two parents finishing cannot both miss it.
_PROMOTE = """
UPDATE step_runs c SET status = 'queued', available_at = {NOW}, queued_at = {NOW},
  schedule_deadline = {NOW} + make_interval(secs => c.schedule_timeout_s),
  parent_outputs = (SELECT COALESCE(jsonb_object_agg(p.step_name, p.output), '{}'::jsonb)
                    FROM step_runs p WHERE p.run_id = c.run_id AND p.step_name = ANY(c.parents))
WHERE c.run_id = ANY({RUNS}) AND c.status = 'pending' AND NOT c.is_on_failure
  AND NOT EXISTS (SELECT 1 FROM step_runs p WHERE p.run_id = c.run_id
                  AND p.step_name = ANY(c.parents) AND p.status <> 'succeeded')
RETURNING c.tenant_id, c.action"""

PROMOTE_READY = q(_PROMOTE.replace("{RUNS}", "CAST(:runs AS uuid[])"))

SKIP_DESCENDANTS = q("""
WITH RECURSIVE d(name) AS (
  SELECT step_name FROM step_runs WHERE run_id = :run AND CAST(:step AS text) = ANY(parents)
  UNION
  SELECT s.step_name FROM step_runs s JOIN d ON d.name = ANY(s.parents) WHERE s.run_id = :run
)
UPDATE step_runs SET status = 'skipped', finished_at = {NOW}
WHERE run_id = :run AND status = 'pending' AND step_name IN (SELECT name FROM d)
RETURNING step_name
""")

QUEUE_ON_FAILURE = q("""
UPDATE step_runs SET status = 'queued', available_at = {NOW}, queued_at = {NOW},
  schedule_deadline = {NOW} + make_interval(secs => schedule_timeout_s),
  parent_outputs = CAST(:details AS jsonb)
WHERE run_id = :run AND is_on_failure AND status = 'pending'
RETURNING tenant_id, action
""")

# Finish every run of the set with no open step left (an unused on_failure step is skipped);
# mark the others running. One statement for any number of runs.
_SETTLE = """
agg AS (
  SELECT run_id,
    count(*) FILTER (
      WHERE status IN {OPEN_STEP} AND NOT (is_on_failure AND status = 'pending')) AS open,
    count(*) FILTER (WHERE status = 'failed' AND NOT is_on_failure) AS failed,
    count(*) FILTER (WHERE status = 'pending' AND NOT is_on_failure) AS pending,
    count(*) FILTER (WHERE status = 'pending' AND is_on_failure) AS handlers,
    min(started_at) AS first_start
  FROM step_runs WHERE run_id = ANY(CAST(:runs AS uuid[])) GROUP BY run_id
), settled AS (
  UPDATE runs SET
    status = CASE WHEN agg.open > 0 THEN 'running'
                  WHEN agg.failed > 0 THEN 'failed' ELSE 'succeeded' END,
    finished_at = CASE WHEN agg.open > 0 THEN NULL ELSE {NOW} END,
    started_at = COALESCE(runs.started_at, agg.first_start,
                          CASE WHEN agg.open > 0 THEN {NOW} END),  -- finished unstarted: none
    error = CASE WHEN agg.open = 0 AND agg.failed > 0 THEN (
      SELECT jsonb_build_object('step', f.step_name, 'error', f.error) FROM step_runs f
      WHERE f.run_id = agg.run_id AND f.status = 'failed' AND NOT f.is_on_failure
      ORDER BY f.finished_at, f.position LIMIT 1) END
  FROM agg WHERE runs.id = agg.run_id AND runs.status IN ('queued', 'running')
    AND (agg.open = 0 OR runs.status = 'queued')
  RETURNING runs.id, runs.status, agg.handlers
), skipped AS (
  UPDATE step_runs SET status = 'skipped', finished_at = {NOW}
  WHERE run_id = ANY(ARRAY(SELECT id FROM settled
                           WHERE status IN ('succeeded', 'failed') AND handlers > 0))
    AND is_on_failure AND status = 'pending'
)""".replace("{OPEN_STEP}", OPEN_STEP)

SETTLE_RUNS = q(f"WITH {_SETTLE}\nSELECT id, status FROM settled")

# Steps of these runs succeeded: promotion and settling in one statement. Both read the same
# snapshot, which is enough: a promoted step is open before and after (pending → queued), so the
# settle's count of open steps is the same either way, and the two update disjoint rows (promotion
# never touches on_failure steps; the settle skips only those). Runs with no pending step are not
# searched for steps to promote (a one-step run has none).
SUCCEED_CTES = f"""WITH {_SETTLE}, promoted AS ({
    _PROMOTE.replace("{RUNS}", "ARRAY(SELECT run_id FROM agg WHERE pending > 0)")
}
)"""
SUCCEED_RUNS = q(f"""{SUCCEED_CTES}
SELECT 'settled' AS kind, id::text AS a, status AS b FROM settled
UNION ALL
SELECT 'queued', tenant_id::text, action FROM promoted
""")

# The attempt a running step run holds ends: its history row is written from the step run's lease,
# before the caller changes the step run.
_ATTEMPT_COLUMNS = (
    "tenant_id, step_run_id, attempt, worker_id, lease_token, started_at, ended_at, outcome, error"
)
CLOSE_ATTEMPT = q(f"""
INSERT INTO step_attempts ({_ATTEMPT_COLUMNS})
SELECT tenant_id, id, attempt, worker_id, lease_token, started_at, {{NOW}}, :outcome,
  CAST(:error AS jsonb)
FROM step_runs WHERE id = :id AND lease_token = :token
""")

REQUEUE_STEP = q(f"""
UPDATE step_runs SET status = 'queued', {CLEAR_LEASE}, error = CAST(:error AS jsonb),
  available_at = {{NOW}} + make_interval(secs => :delay), queued_at = {{NOW}},
  schedule_deadline = {{NOW}} + make_interval(secs => :delay + schedule_timeout_s),
  max_attempts = max_attempts + :extra_attempts
WHERE id = :id AND status = 'running'
RETURNING tenant_id, action
""")

FAIL_STEP = q(f"""
UPDATE step_runs SET status = 'failed', {CLEAR_LEASE}, error = CAST(:error AS jsonb),
  finished_at = {{NOW}}
WHERE id = :id AND status IN ('running', 'queued')
RETURNING step_name
""")

CANCEL_STEP = q(f"""
UPDATE step_runs SET status = 'cancelled', {CLEAR_LEASE}, finished_at = {{NOW}}
WHERE id = :id AND status = 'running'
RETURNING lease_token
""")

# --- claims and leases (the workers' own rows: db/queries_workers.py) -----------------------------

# The poll's claim, one statement: the worker's liveness (last_seen_at at most once a second), its
# free slots, and up to min(:max_tasks, free slots) queued step runs of its actions leased to it.
# Run on its own it needs no transaction block (it is one). While a step run it holds waits for
# its cancellation to be delivered it claims nothing and lists them (``cancelled``): the caller
# delivers them (DELIVER_CANCELLATIONS), which frees their slots, and claims again. Each action is
# read through its own ordered index range (LATERAL), so the cost stays flat however deep the
# queue is and however many actions the worker serves. One row per claimed step run, or one row
# of NULL task columns when none was; the worker's columns only on the first row; no row at all
# when the worker is not registered.
#
# Floors (``:floors``, ``db/claim_floors.py``): every step run claimed leaves a dead entry at the
# head of the claim index until VACUUM removes it, and a scan from the start of an action's range
# steps over all of them (on a busy queue, hundreds of thousands between two autovacuums). The
# caller passes, per action, the (available_at, id) of the first row the previous claim found;
# the scan starts there, or CLAIM_FLOOR_MARGIN before now when that is earlier (a row queued by a
# transaction still open then is older than its commit), or at the start when there is no floor.
# The claim answers the floors for the next claim (``floors``, first row). A row that still ends
# up below a floor (a claim that locked it rolled back, a transaction queueing rows for longer
# than the margin) waits for the caller's next full scan: late, never lost.
#
# Free slots (``cairn_free_slots``, migration 0014): claims of one worker take turns, each
# counting the worker's running step runs after the one before it committed. Counted from this
# statement's own snapshot, two polls of one worker at once (a client polling from several
# threads) would each see every slot free and together claim beyond them. The function takes a
# transaction-level advisory lock on the worker, then counts in a statement of its own (a
# VOLATILE function's statements each take a new snapshot), so it sees the claims committed
# while it waited; the rows those claimed are skipped by this statement's locking scan (their
# new version is no longer queued). Polls of different workers never wait for each other.
CLAIM_FLOOR_MARGIN = "interval '1 second'"
NIL_UUID = "CAST('00000000-0000-0000-0000-000000000000' AS uuid)"
CLAIM_CTES = """
WITH w AS (
  SELECT id, actions, lease_timeout_s,
    ARRAY(SELECT s.id::text FROM step_runs s WHERE s.worker_id = :worker AND s.status = 'running'
          AND s.cancel_requested_at IS NOT NULL) AS cancelled,
    cairn_free_slots(id, slots) AS free
  FROM workers
  WHERE tenant_id = :tenant AND id = :worker AND deregistered_at IS NULL
), seen AS (
  UPDATE workers SET last_seen_at = {NOW}
  WHERE id IN (SELECT id FROM w) AND last_seen_at < {NOW} - interval '1 second'
), lim AS (
  SELECT CASE WHEN cardinality(cancelled) > 0 THEN 0
              ELSE GREATEST(LEAST(CAST(:max_tasks AS integer), free), 0) END AS n
  FROM w
), seek AS (
  SELECT a.action, CASE WHEN f.at IS NULL THEN '-infinity' ELSE LEAST(f.at, {NOW} - {MARGIN}) END
      AS at,
    CASE WHEN f.at < {NOW} - {MARGIN} THEN f.id ELSE {NIL_UUID} END AS id
  FROM w CROSS JOIN LATERAL unnest(w.actions) AS a(action)
  CROSS JOIN LATERAL (
    SELECT CAST(CAST(:floors AS jsonb) -> a.action ->> 0 AS timestamptz) AS at,
      CAST(CAST(:floors AS jsonb) -> a.action ->> 1 AS uuid) AS id
  ) f
), found AS (
  SELECT k.action, c.id, c.available_at FROM seek k CROSS JOIN LATERAL (
    SELECT s.id, s.available_at FROM step_runs s
    WHERE s.tenant_id = :tenant AND s.status = 'queued' AND s.action = k.action
      AND s.available_at <= {NOW} AND (s.available_at, s.id) >= (k.at, k.id)
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
      jsonb_build_array({NOW}, {NIL_UUID}))) AS text) AS floors
  FROM seek k WHERE (SELECT n FROM lim) > 0
), claimed AS (
  UPDATE step_runs s SET status = 'running', attempt = s.attempt + 1,
    lease_token = gen_random_uuid(), worker_id = :worker,
    lease_expires_at = {NOW} + make_interval(secs => (SELECT lease_timeout_s FROM w)),
    timeout_at = {NOW} + make_interval(secs => s.timeout_s), started_at = {NOW}
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
""".replace("{MARGIN}", CLAIM_FLOOR_MARGIN).replace("{NIL_UUID}", NIL_UUID)

# One claimed step run as the JSON text of a poll's task, written by concatenation: for a task's
# thirteen fields ``json_build_object`` cost 4.7 to 4.8 µs a row against 2.7 to 2.8 (100,000 rows
# on Debian's Postgres 15; bench/HISTORY.md, 2026-12-05). Every part is NOT NULL on a claimed
# step run (CHECK lease_iff_running, the columns' own NOT NULL; ``parents`` is coalesced), so
# the text is never NULL; the text fields go through ``to_json`` for their escaping.
CLAIM_TASK = """('{"step_run_id":"' || t.id || '","run_id":"' || t.run_id
    || '","workflow":' || to_json(t.workflow_name) || ',"version":' || t.version
    || ',"step":' || to_json(t.step_name) || ',"action":' || to_json(t.action)
    || ',"attempt":' || t.attempt || ',"lease_token":"' || t.lease_token
    || '","input":' || CAST(t.input AS text)
    || ',"parents":' || CAST(COALESCE(t.parent_outputs, '{}') AS text)
    || ',"timeout_at":"' || {UTC:t.timeout_at}
    || '","lease_expires_at":"' || {UTC:t.lease_expires_at}
    || '","delivery":' || to_json(t.delivery) || '}')"""

CLAIM = q(
    CLAIM_CTES
    + f"""SELECT
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.actions END AS actions,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.cancelled END
    AS cancelled,
  lim.n,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN (SELECT floors FROM floors)
  END AS floors,
  CASE WHEN t.id IS NOT NULL THEN {CLAIM_TASK} END AS task,
  EXTRACT(EPOCH FROM (t.started_at - t.available_at)) AS queue_latency,
  w.lease_timeout_s
FROM w CROSS JOIN lim LEFT JOIN tasks t ON true
ORDER BY t.available_at, t.id
"""
)

# A heartbeat never waits for a step run another transaction holds (a poll or report settling
# it, a cancellation, the reaper): waiting there, while holding the leases it renewed and its
# worker's row, closed lock cycles with a poll completing the same worker's step runs (deadlocks,
# each a 1 s stall under load). A step run skipped here is answered from HEARTBEAT_LEFTOVERS.
RENEW_LEASES = q("""
UPDATE step_runs SET lease_expires_at = {NOW} + make_interval(secs => :lease_s)
WHERE id IN (SELECT id FROM step_runs WHERE id = ANY(CAST(:ids AS uuid[])) AND worker_id = :worker
             AND status = 'running' AND cancel_requested_at IS NULL
             AND lease_expires_at > {NOW}
             ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id::text
""")

# Cancellations are delivered by heartbeat or poll; once told, the step run is cancelled, its lease
# revoked and its attempt recorded as cancelled (from the lease as it was).
DELIVER_CANCELLATIONS = q(f"""
WITH held AS (
  SELECT id, tenant_id, attempt, worker_id, lease_token, started_at FROM step_runs
  WHERE id = ANY(CAST(:ids AS uuid[])) AND worker_id = :worker AND status = 'running'
    AND cancel_requested_at IS NOT NULL
  ORDER BY id FOR UPDATE SKIP LOCKED  -- as RENEW_LEASES: a heartbeat never waits for a step run
), told AS (
  UPDATE step_runs s SET status = 'cancelled', {CLEAR_LEASE}, finished_at = {{NOW}}
  FROM held WHERE s.id = held.id
  RETURNING s.id
), hist AS (
  INSERT INTO step_attempts ({_ATTEMPT_COLUMNS})
  SELECT tenant_id, id, attempt, worker_id, lease_token, started_at, {{NOW}}, 'cancelled', NULL
  FROM held
)
SELECT told.id::text, EXTRACT(EPOCH FROM ({{NOW}} - held.started_at)) AS duration
FROM told JOIN held ON held.id = told.id
""")

# The step runs a heartbeat neither renewed nor told cancelled. ``held``: still this worker's,
# running under a live lease, so another transaction held it when the heartbeat came (see
# RENEW_LEASES): its lease stands and the next heartbeat renews it (or tells the cancellation).
HEARTBEAT_LEFTOVERS = q("""
SELECT id::text, status, worker_id::text AS worker_id,
  (status = 'cancelled' AND worker_id = :worker
   AND finished_at < {NOW} - make_interval(secs => :grace)) AS ignored,
  (status = 'running' AND worker_id = :worker AND lease_expires_at > {NOW}) AS held
FROM step_runs WHERE id = ANY(CAST(:ids AS uuid[])) AND tenant_id = :tenant
""")

# Completion of many step runs: lock their runs first, in id order (lock order run → step
# everywhere), then the guarded update, closing each attempt in the same statement. The guard is
# the lease token (a token is on a step run only while it runs: CHECK token_iff_running); the
# status is not named, so no partial index on running step runs matches and each step run is
# read by key, however many are running and whatever the statistics say. The lease and the
# execution timeout must both still run: a report after either deadline is refused, and the
# caller ends that attempt as the reaper would (``transitions.end_overdue``), ticked or not.
COMPLETE_CTES = f"""
WITH items AS (
  SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(id uuid, token uuid, output jsonb)
), locked AS (
  SELECT r.id FROM runs r
  WHERE r.id = ANY(ARRAY(SELECT s.run_id FROM step_runs s JOIN items i ON i.id = s.id))
  ORDER BY r.id FOR UPDATE
), done AS (
  UPDATE step_runs s SET status = 'succeeded', output = i.output -> 'v', error = NULL,
    {CLEAR_LEASE}, finished_at = {{NOW}}
  FROM items i
  WHERE s.id = i.id AND s.tenant_id = :tenant
    AND (SELECT count(*) FROM locked) >= 0  -- runs locked first (one-time filter)
    AND s.lease_token = i.token AND s.cancel_requested_at IS NULL
    AND s.lease_expires_at > {{NOW}} AND s.timeout_at > {{NOW}}
  RETURNING s.id, s.run_id, s.tenant_id, s.attempt, s.worker_id, s.started_at, i.token,
    EXTRACT(EPOCH FROM ({{NOW}} - s.started_at)) AS duration
), hist AS (
  INSERT INTO step_attempts ({_ATTEMPT_COLUMNS})
  SELECT tenant_id, id, attempt, worker_id, token, started_at, {{NOW}}, 'succeeded', NULL
  FROM done
)
"""
COMPLETE_MANY = q(
    COMPLETE_CTES + "\nSELECT id::text AS id, run_id::text AS run_id, duration FROM done\n"
)

# A results batch carrying failures locks every run it touches first, in id order, in one
# statement: completions lock their runs in id order, but each failure locks its own run as it
# comes, so two batches naming the same runs in other orders could each hold what the other
# waited for (a deadlock, broken after deadlock_timeout by aborting one of them).
LOCK_RUNS_OF_STEPS = q("""
SELECT r.id FROM runs r
WHERE r.id = ANY(ARRAY(SELECT s.run_id FROM step_runs s
                       WHERE s.id = ANY(CAST(:ids AS uuid[])) AND s.tenant_id = :tenant))
ORDER BY r.id FOR UPDATE
""")

# The step run a report names, locked (its run first), if that report's token still holds it:
# whether its lease or its timeout has run out is for the caller (``transitions.end_overdue``).
LOCK_HELD_STEP = q("""
WITH lock_run AS (
  SELECT r.id FROM runs r WHERE r.id = (SELECT run_id FROM step_runs WHERE id = :id)
  FOR UPDATE
)
SELECT s.id, s.run_id, s.tenant_id, s.step_name, s.action, s.attempt, s.max_attempts,
  s.delivery, s.backoff, s.lease_token, s.is_on_failure, s.cancel_requested_at,
  s.lease_expires_at <= {NOW} AS lease_due, s.timeout_at <= {NOW} AS timeout_due,
  EXTRACT(EPOCH FROM ({NOW} - s.started_at)) AS duration
FROM step_runs s JOIN lock_run ON lock_run.id = s.run_id
WHERE s.id = :id AND s.tenant_id = :tenant AND s.status = 'running' AND s.lease_token = :token
FOR UPDATE OF s
""")

# The token's attempt: the one in progress (the step run's own lease) or an ended one.
DIAGNOSE = q("""
SELECT s.status, s.attempt, s.cancel_requested_at IS NOT NULL AS cancel_requested,
  s.lease_token::text AS current_token,
  CASE WHEN s.lease_token = CAST(:token AS uuid) THEN s.attempt ELSE a.attempt END
    AS token_attempt,
  CASE WHEN s.lease_token = CAST(:token AS uuid) THEN 'running' ELSE a.outcome END
    AS token_outcome,
  (s.output IS NOT NULL AND s.output = CAST(:output AS jsonb)) AS same_output,
  (a.error IS NOT NULL AND a.error = CAST(:error AS jsonb)) AS same_error
FROM step_runs s
LEFT JOIN step_attempts a ON a.step_run_id = s.id AND a.lease_token = CAST(:token AS uuid)
WHERE s.id = :id AND s.tenant_id = :tenant
""")

NOTIFY = q("SELECT pg_notify('cairn_queue', :payload)")

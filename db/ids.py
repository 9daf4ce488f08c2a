"""Run ids in creation order: UUIDv7 (RFC 9562), monotonic within this process.

A run's id leads with the millisecond it was made, and the ids one process makes in the same
millisecond count up from a random start, so the runs of one trigger (and of the next) sort in
the order they were made. Their step runs' ids are derived from them (``STEP_RUN_ID``: the
run's id with its last 16 bits set to the step's position), so step runs sort in that order too.

That order is what the queue reads in: queued step runs are claimed by (``available_at``,
``id``), and a batch of 100 claimed, completed and settled step runs then sits on a few
neighbouring pages of the tables and of their indexes instead of on 100 pages picked at random
(the primary keys, the run/step key and the attempt rows alike: ``bench/HISTORY.md`` has the
measured difference). Under the timestamp are 58 bits (a random start, then the counter); the
ids are identifiers, not secrets (a lease token is one, and stays random).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

STEP_BITS = 16  # low bits of a run id left zero for its step runs' positions
MAX_POSITION = 2**15 - 1  # positions are written as a smallint

# A step run's id from its run's id and its position, as SQL over ``r.id`` and ``d.position``.
STEP_RUN_ID = (
    "CAST(encode(overlay(uuid_send(r.id) PLACING int2send(CAST(d.position AS smallint))"
    " FROM 15 FOR 2), 'hex') AS uuid)"
)

_COUNTER_BITS = 74 - STEP_BITS  # rand_a (12) + rand_b (62), less the step bits
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _fields(ms: int, counter: int) -> int:
    rand_a = counter >> (_COUNTER_BITS - 12)
    rand_b = (counter & ((1 << (_COUNTER_BITS - 12)) - 1)) << STEP_BITS
    return (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b


def run_ids(n: int, *, clock_ms: int | None = None) -> list[str]:
    """``n`` new run ids, each greater than every id this process made before."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000 if clock_ms is None else clock_ms
    out: list[str] = []
    with _lock:
        if ms > _last_ms:
            _last_ms = ms
            # A random start in the lower half, so a millisecond's ids never run out.
            _counter = secrets.randbits(_COUNTER_BITS - 1)
        for _ in range(n):
            _counter += 1
            if _counter >= 1 << _COUNTER_BITS:  # pragma: no cover - 2**57 ids in one ms
                _last_ms += 1
                _counter = secrets.randbits(_COUNTER_BITS - 1)
            out.append(str(uuid.UUID(int=_fields(_last_ms, _counter))))
    return out

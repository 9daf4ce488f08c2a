"""Where each action's claim starts reading the queue (``:floors`` of ``queries.CLAIM_CTES``).

A claimed step run leaves a dead entry at the head of the claim index until VACUUM removes it,
and a claim that starts at the beginning of its action's range steps over every one of them: on
a busy queue, all the step runs claimed since the last autovacuum, which grows the cost of each
claim with the queue's history instead of its depth. Each claim therefore answers, per action it
read, the key (``available_at``, ``id``) of the first row it found (or now, when it found none),
and the next claim starts there.

Keys are learnt per API process and per tenant and action, and a claim starts at the lowest key
learnt in the current or the previous generation (``generation_s`` each), not the last one: a
multi-action claim locks rows it then leaves (the oldest of all its actions' candidates win), and
a concurrent claim skips them (SKIP LOCKED) and learns a key past them; the claim that left them
learnt a key at or below them, which the next generation still starts from. A row that still
ends up below every floor (a claim that locked it rolled back, a transaction that queued it stayed
open longer than ``CLAIM_FLOOR_MARGIN``, its claims went to another replica) is found by the full
scan each action gets every ``rescan_s``: late, never lost. Nothing here is needed for
correctness beyond that: without floors (a new process, an unknown action) the claim reads from
the start, as it always could.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

Key = tuple[datetime, str, list[Any]]  # parsed instant, id, the JSON value the claim answered


@dataclass
class _Floor:
    full_at: float  # when this action's claim last read from the start of its range
    started: float  # when the current generation started
    current: Key | None = None  # lowest key learnt in the current generation
    previous: Key | None = None  # lowest key learnt in the previous one (or before)


def _key(value: Any) -> Key | None:
    """A claim's key: ``[available_at, id]`` as Postgres wrote it (JSON); None if malformed."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    at, sid = value
    if not (isinstance(at, str) and isinstance(sid, str)):
        return None
    try:
        instant = datetime.fromisoformat(at)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return None
    return (instant, sid.lower(), value)


def _lower(a: Key | None, b: Key | None) -> Key | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if (a[0], a[1]) <= (b[0], b[1]) else b


class ClaimFloors:
    """Learnt claim floors of one API process (thread-unsafe: one event loop)."""

    def __init__(
        self,
        *,
        generation_s: float = 0.25,
        rescan_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.generation_s = generation_s
        self.rescan_s = rescan_s
        self._clock = clock
        self._floors: dict[tuple[str, str], _Floor] = {}

    def __len__(self) -> int:
        return len(self._floors)

    def clear(self) -> None:
        """Forget every floor: the next claims read from the start (always correct)."""
        self._floors.clear()

    def _turn(self, floor: _Floor, now: float) -> None:
        if now - floor.started >= self.generation_s:
            if floor.current is not None:  # no claim meanwhile: nothing new to cover
                floor.previous, floor.current = floor.current, None
            floor.started = now

    def param(self, tenant: str, actions: Iterable[str] | None) -> str | None:
        """The claim's ``:floors`` for a worker serving ``actions``: JSON text, or None (every
        action read from the start). An action due for its full scan gets no floor."""
        if actions is None:
            return None
        now = self._clock()
        out: dict[str, list[Any]] = {}
        for action in actions:
            floor = self._floors.get((tenant, action))
            if floor is None:
                continue
            if now - floor.full_at >= self.rescan_s:
                floor.full_at = now
                continue
            self._turn(floor, now)
            key = _lower(floor.previous, floor.current)
            if key is not None:
                out[action] = key[2]
        return orjson.dumps(out).decode() if out else None

    def learn(self, tenant: str, floors: str | None) -> None:
        """Keys a claim answered (``floors``: JSON object of action → [available_at, id])."""
        if not floors:
            return
        try:
            learnt = orjson.loads(floors)
        except orjson.JSONDecodeError:
            return
        if not isinstance(learnt, dict):
            return
        now = self._clock()
        for action, value in learnt.items():
            key = _key(value)
            if key is None:
                continue
            floor = self._floors.get((tenant, action))
            if floor is None:
                floor = self._floors[(tenant, action)] = _Floor(full_at=now, started=now)
            self._turn(floor, now)
            floor.current = _lower(floor.current, key)

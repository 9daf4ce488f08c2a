"""Run ids (``db.ids``): UUIDv7, in the order they are made, with room for step positions."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from api.settings import Settings
from db import ids


def test_ids_are_version_7_and_lead_with_their_millisecond() -> None:
    made = [uuid.UUID(i) for i in ids.run_ids(3, clock_ms=1_800_000_000_123)]
    assert {u.version for u in made} == {7}
    assert {u.variant for u in made} == {uuid.RFC_4122}
    assert {u.int >> 80 for u in made} == {1_800_000_000_123}


def test_ids_leave_the_step_bits_zero() -> None:
    for u in ids.run_ids(50):
        assert uuid.UUID(u).int & (2**ids.STEP_BITS - 1) == 0


def test_ids_grow_within_a_millisecond_across_calls_and_when_the_clock_steps_back() -> None:
    ms = 1_900_000_000_000
    made = (
        ids.run_ids(4, clock_ms=ms) + ids.run_ids(3, clock_ms=ms) + ids.run_ids(2, clock_ms=ms - 5)
    )
    made += ids.run_ids(2, clock_ms=ms + 1)
    as_ints = [uuid.UUID(u).int for u in made]
    assert as_ints == sorted(as_ints) and len(set(as_ints)) == len(as_ints)
    # Text order is the same order (lowercase hex, fixed width): what Postgres sorts by.
    assert made == sorted(made)
    # A later millisecond leads with it; a clock stepping back keeps the last one.
    assert uuid.UUID(made[-1]).int >> 80 == ms + 1
    assert uuid.UUID(made[-3]).int >> 80 == ms


def test_a_new_millisecond_starts_from_a_random_point() -> None:
    a = ids.run_ids(1, clock_ms=2_000_000_000_000)[0]
    b = ids.run_ids(1, clock_ms=2_000_000_000_001)[0]
    low = 2 ** (128 - 48) - 1
    assert uuid.UUID(a).int & low != uuid.UUID(b).int & low


def test_a_workflow_cannot_have_more_steps_than_the_id_bits_hold() -> None:
    assert Settings(max_steps=ids.MAX_POSITION).max_steps == ids.MAX_POSITION
    with pytest.raises(ValidationError):
        Settings(max_steps=ids.MAX_POSITION + 1)

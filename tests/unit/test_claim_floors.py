"""Claim floors: the lowest key of two generations, a full scan every ``rescan_s``."""

from __future__ import annotations

import json

from db.claim_floors import ClaimFloors
from tests.clock import Clock

T = "tenant"
A = "wf.a"


def key(second: int, sid: str = "00000000-0000-0000-0000-00000000000a") -> list[str]:
    return [f"2026-12-03T10:00:{second:02d}.5+00:00", sid]


def learnt(floors: ClaimFloors, actions: tuple[str, ...] = (A,)) -> dict[str, list[str]]:
    text = floors.param(T, actions)
    out: dict[str, list[str]] = json.loads(text) if text else {}
    return out


def test_no_floor_until_a_claim_answered_one() -> None:
    floors = ClaimFloors(clock=Clock())
    assert floors.param(T, None) is None  # actions unknown: read from the start
    assert learnt(floors) == {}
    floors.learn(T, json.dumps({A: key(10)}))
    assert learnt(floors) == {A: key(10)}
    assert learnt(floors, ("wf.other",)) == {}
    assert floors.param("another tenant", (A,)) is None


def test_the_lowest_key_of_this_and_the_previous_generation() -> None:
    clock = Clock()
    floors = ClaimFloors(generation_s=1.0, rescan_s=100.0, clock=clock)
    floors.learn(T, json.dumps({A: key(10)}))
    floors.learn(T, json.dumps({A: key(20)}))  # a claim that skipped rows another one left
    assert learnt(floors) == {A: key(10)}
    clock.now += 1.0
    floors.learn(T, json.dumps({A: key(30)}))
    assert learnt(floors) == {A: key(10)}  # the previous generation still counts
    clock.now += 1.0
    assert learnt(floors) == {A: key(30)}
    clock.now += 5.0  # no claim meanwhile: nothing new to cover, the floor stays
    assert learnt(floors) == {A: key(30)}


def test_keys_compare_by_instant_then_id() -> None:
    floors = ClaimFloors(clock=Clock())
    later_text_earlier_time = ["2026-12-03T11:00:10+01:00", "ffffffff-0000-0000-0000-000000000000"]
    floors.learn(T, json.dumps({A: key(20)}))
    floors.learn(T, json.dumps({A: later_text_earlier_time}))  # 10:00:10 UTC
    assert learnt(floors) == {A: later_text_earlier_time}
    low_id = "00000000-0000-0000-0000-000000000001"
    floors.learn(T, json.dumps({A: ["2026-12-03T10:00:10+00:00", low_id]}))
    assert learnt(floors)[A][1] == low_id


def test_each_action_is_read_from_the_start_every_rescan_s() -> None:
    clock = Clock()
    floors = ClaimFloors(rescan_s=5.0, clock=clock)
    floors.learn(T, json.dumps({A: key(10), "wf.b": key(11)}))
    clock.now += 4.9
    assert set(learnt(floors, (A, "wf.b"))) == {A, "wf.b"}
    clock.now += 0.1
    assert learnt(floors, (A, "wf.b")) == {}  # both due: this claim reads from the start
    assert set(learnt(floors, (A, "wf.b"))) == {A, "wf.b"}  # the next ones from the floors
    clock.now += 5.0
    assert learnt(floors, (A,)) == {}


def test_what_is_not_a_key_is_ignored() -> None:
    floors = ClaimFloors(clock=Clock())
    for bad in (
        None,
        "",
        "not json",
        "[1, 2]",
        json.dumps({A: "x"}),
        json.dumps({A: ["2026-12-03T10:00:10", "id"]}),  # no offset: not an instant
        json.dumps({A: ["yesterday", "id"]}),
        json.dumps({A: [1, 2]}),
    ):
        floors.learn(T, bad)
    assert len(floors) == 0 and learnt(floors) == {}
    floors.learn(T, json.dumps({A: key(10)}))
    floors.clear()
    assert learnt(floors) == {}

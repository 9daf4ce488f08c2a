"""Single triggers that arrive together share a statement (``api/triggers.py``), and each
still gets its own answer: its run as it reads back, 201; the run its idempotency key names,
200; or its own error, the others unharmed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.triggers import TriggerBatcher
from db.errors import InvalidPayload, NotFound
from db.models import DEFAULT_TENANT_ID
from tests.integration.conftest import Api
from tests.integration.test_batches import count_statements

T = DEFAULT_TENANT_ID


def creates(seen: list[str]) -> int:
    return sum(1 for sql in seen if "INSERT INTO runs" in sql)


async def trigger(b: TriggerBatcher, name: str, input_json: str = "{}", **kw: Any) -> Any:
    kw.setdefault("idempotency_key", None)
    kw.setdefault("version", None)
    return await b.trigger(T, name, input_json, **kw)


async def test_triggers_arriving_together_are_one_statement_each_its_own_run(api: Api) -> None:
    await api.register("many", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    with count_statements(api) as seen:
        made = await asyncio.gather(
            *(trigger(api.svc.triggers, "many", f'{{"i": {i}}}') for i in range(20))
        )
    assert creates(seen) == 1 and len(seen) == 1, seen
    assert all(created for _, created in made)
    assert len({run.id for run, _ in made}) == 20
    for i, (run, _) in enumerate(made):
        back = await api.run(run.id)
        assert back["input"] == {"i": i} and back["status"] == "queued"
        assert [(s["name"], s["status"]) for s in back["steps"]] == [
            ("a", "queued"),
            ("b", "pending"),
        ]
        assert [s.step_run_id for s in run.steps] == [s["step_run_id"] for s in back["steps"]]
    w = await api.worker(["many.a"], slots=50)
    assert len(await api.poll(w, max_tasks=50)) == 20  # every first step is queued


async def test_concurrent_posts_are_answered_as_one_at_a_time_would_be(api: Api) -> None:
    await api.register("posts", [{"name": "s"}])

    async def post(i: int) -> Any:
        body: dict[str, Any] = {"input": i}
        if i % 3 == 0:
            body["idempotency_key"] = "shared"
        return await api.call("POST", "/workflows/posts/runs", json=body)

    answers = await asyncio.gather(*(post(i) for i in range(30)))
    keyed = [r for i, r in enumerate(answers) if i % 3 == 0]
    unkeyed = [r for i, r in enumerate(answers) if i % 3 != 0]
    assert sorted(r.status_code for r in keyed) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in keyed}) == 1
    assert [r.status_code for r in unkeyed] == [201] * 20
    assert sorted(r.json()["input"] for r in unkeyed) == [i for i in range(30) if i % 3]
    for r in answers:
        assert r.json() == await api.run(r.json()["id"])
    assert len((await api.json("GET", "/runs?workflow=posts&limit=100"))["runs"]) == 21


async def test_a_key_repeated_in_one_batch_makes_one_run(api: Api) -> None:
    await api.register("dup", [{"name": "s"}])
    with count_statements(api) as seen:
        made = await asyncio.gather(
            *(trigger(api.svc.triggers, "dup", str(i), idempotency_key="k") for i in range(5))
        )
    assert creates(seen) == 1
    assert sorted(created for _, created in made) == [False] * 4 + [True]
    assert len({run.id for run, _ in made}) == 1
    assert (await api.run(made[0][0].id))["input"] in range(5)
    assert len((await api.json("GET", "/runs?workflow=dup"))["runs"]) == 1


async def test_each_version_asked_is_its_own_batch_and_its_own_answer(api: Api) -> None:
    await api.register("va", [{"name": "s"}])
    await api.register("va", [{"name": "s"}, {"name": "t"}])
    await api.register("vb", [{"name": "s"}])
    b = api.svc.triggers
    with count_statements(api) as seen:
        results = await asyncio.gather(
            trigger(b, "va"),
            trigger(b, "va", version=1),
            trigger(b, "vb"),
            trigger(b, "va"),
            trigger(b, "nope"),
            trigger(b, "va", version=9),
            return_exceptions=True,
        )
    assert creates(seen) == 5, seen  # one per workflow and version asked for
    latest, pinned, other, latest2, nope, missing = results
    assert isinstance(nope, NotFound) and "'nope' is not registered" in str(nope)
    assert isinstance(missing, NotFound) and "'va' version 9" in str(missing)
    assert [(r[0].version, len(r[0].steps)) for r in (latest, pinned, other, latest2)] == [
        (2, 2),
        (1, 1),
        (1, 1),
        (2, 2),
    ]
    assert len((await api.json("GET", "/runs?workflow=va"))["runs"]) == 3


async def test_a_refused_trigger_fails_alone(api: Api) -> None:
    """Postgres refuses the batch for one item (not JSON here, which the API never sends): the
    batch is made one at a time, and only that item fails."""
    await api.register("iso", [{"name": "s"}])
    b = api.svc.triggers
    results = await asyncio.gather(
        trigger(b, "iso", "1"),
        trigger(b, "iso", "{not json"),
        trigger(b, "iso", "3"),
        return_exceptions=True,
    )
    assert isinstance(results[1], InvalidPayload)
    made = [r for r in results if isinstance(r, tuple)]
    assert [r[1] for r in made] == [True, True]
    assert sorted([(await api.run(r[0].id))["input"] for r in made]) == [1, 3]
    assert len((await api.json("GET", "/runs?workflow=iso"))["runs"]) == 2


async def test_triggers_wait_for_a_statement_slot_then_go_together(api: Api) -> None:
    await api.register("slot", [{"name": "s"}])
    b = api.svc.triggers
    b.max_in_flight = 1
    with count_statements(api) as seen:
        first = asyncio.create_task(trigger(b, "slot", "0"))
        while b.statements == 0:  # until its statement is under way
            await asyncio.sleep(0)
        later = [asyncio.create_task(trigger(b, "slot", str(i))) for i in range(1, 10)]
        await asyncio.sleep(0)
        gone = asyncio.create_task(trigger(b, "slot", "99"))
        await asyncio.sleep(0)
        gone.cancel()  # its request went away before its turn: no run
        made = await asyncio.gather(first, *later)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert creates(seen) == 2, seen  # the first alone, then the nine that waited
    inputs = sorted([(await api.run(run.id))["input"] for run, _ in made])
    assert inputs == list(range(10))
    assert len((await api.json("GET", "/runs?workflow=slot&limit=100"))["runs"]) == 10


async def test_a_long_queue_of_one_version_does_not_hold_up_another(api: Api) -> None:
    await api.register("busy", [{"name": "s"}])
    await api.register("quiet", [{"name": "s"}])
    b = api.svc.triggers
    b.max_in_flight, b.max_batch = 1, 2
    done: list[str] = []

    async def one(name: str, i: int) -> None:
        await trigger(b, name, str(i))
        done.append(f"{name}{i}")

    await asyncio.gather(*(one("busy", i) for i in range(6)), one("quiet", 0))
    # busy's first batch, then quiet's, then the rest of busy's
    assert done[:3] == ["busy0", "busy1", "quiet0"], done
    assert sorted(done[3:]) == ["busy2", "busy3", "busy4", "busy5"]

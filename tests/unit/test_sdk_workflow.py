"""Workflow declaration: definition() shape and local validation."""

from __future__ import annotations

from typing import Any

import pytest

from worker_sdk import Backoff, Context, DefinitionError, Workflow


def test_minimal_definition_omits_unset_fields() -> None:
    wf = Workflow("orders")

    @wf.step
    def fetch(ctx: Context) -> int:
        return 1

    assert wf.definition() == {"steps": [{"name": "fetch"}]}
    (spec,) = wf.steps
    assert spec.action == "orders.fetch"  # the server's default, known locally for the worker
    assert spec.is_async is False


def test_full_definition_with_parents_by_function_and_name() -> None:
    wf = Workflow("orders", description="demo")

    @wf.step()
    async def fetch(ctx: Context) -> dict[str, Any]:
        return {}

    @wf.step(
        parents=[fetch],
        retries=3,
        timeout_s=5,
        schedule_timeout_s=10.5,
        backoff=Backoff(initial_s=0.5, jitter=0.1),
        delivery="at_most_once",
        action="charge-card",
        name="charge",
    )
    def charge_it(ctx: Context) -> None:
        return None

    @wf.step(parents=["fetch", charge_it], backoff={"factor": 3})
    def ship(ctx: Context) -> None:
        return None

    assert wf.definition() == {
        "steps": [
            {"name": "fetch"},
            {
                "name": "charge",
                "action": "charge-card",
                "parents": ["fetch"],
                "retries": 3,
                "backoff": {"initial_s": 0.5, "jitter": 0.1},
                "timeout_s": 5.0,
                "schedule_timeout_s": 10.5,
                "delivery": "at_most_once",
            },
            {"name": "ship", "parents": ["fetch", "charge"], "backoff": {"factor": 3}},
        ],
        "description": "demo",
    }
    assert wf.steps[0].is_async is True
    assert wf.step_name(charge_it) == "charge"


def test_on_failure_by_decorator_and_constructor() -> None:
    wf = Workflow("w")

    @wf.step
    def a(ctx: Context) -> None: ...

    @wf.on_failure(retries=2)
    def cleanup(ctx: Context) -> None: ...

    assert wf.definition()["on_failure"] == {"name": "cleanup", "retries": 2}
    assert [s.name for s in wf.all_steps()] == ["a", "cleanup"]

    def notify(ctx: Context) -> None: ...

    wf2 = Workflow("w2", on_failure=notify)
    wf2.step(a)
    assert wf2.definition()["on_failure"] == {"name": "notify"}
    with pytest.raises(DefinitionError, match="already has an on_failure"):
        wf2.on_failure(cleanup)


def test_forward_reference_by_name_is_checked_at_definition_time() -> None:
    wf = Workflow("w")

    @wf.step(parents=["later"])
    def first(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match=r"unknown parent\(s\) \['later'\]"):
        wf.definition()

    @wf.step
    def later(ctx: Context) -> None: ...

    assert wf.definition()["steps"][0]["parents"] == ["later"]


def test_cycle_through_names_is_rejected() -> None:
    wf = Workflow("w")

    @wf.step(parents=["c"])
    def a(ctx: Context) -> None: ...

    @wf.step(parents=[a])
    def b(ctx: Context) -> None: ...

    @wf.step(parents=[b])
    def c(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="cycle: a -> c -> b -> a"):
        wf.definition()


def test_duplicate_names_are_rejected() -> None:
    wf = Workflow("w")

    @wf.step
    def a(ctx: Context) -> None: ...

    def other(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="already has a step 'a'"):
        wf.step(name="a")(other)
    with pytest.raises(DefinitionError, match="already a step"):
        wf.on_failure(name="a")(other)


def test_parent_function_from_elsewhere_is_rejected() -> None:
    wf = Workflow("w")

    def stranger(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="is not a step of workflow 'w'"):
        wf.step(parents=[stranger])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "must match"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"schedule_timeout_s": "5"}, "schedule_timeout_s"),
        ({"delivery": "exactly_once"}, "delivery"),
        ({"backoff": {"jitter": 2}}, "backoff.jitter"),
        ({"backoff": {"nope": 1}}, "unknown backoff field"),
        ({"action": ""}, "action"),
        ({"parents": "a"}, "parents must be a list"),
        ({"parents": ["x", "x"]}, "repeat"),
        ({"parents": ["s"], "name": "s"}, "own parent"),
    ],
)
def test_step_options_are_validated(kwargs: dict[str, Any], message: str) -> None:
    wf = Workflow("w")

    def s(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match=message):
        wf.step(**kwargs)(s)


def test_workflow_name_and_empty_workflow() -> None:
    with pytest.raises(DefinitionError, match="workflow name"):
        Workflow("Orders!")
    with pytest.raises(DefinitionError, match="has no steps"):
        Workflow("empty").definition()


def test_one_action_with_two_functions_is_rejected() -> None:
    wf = Workflow("w")

    @wf.step(action="shared")
    def a(ctx: Context) -> None: ...

    @wf.step(action="shared")
    def b(ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="'shared' is used by steps 'a' and 'b'"):
        wf.definition()


def test_same_function_under_two_names_may_share_an_action() -> None:
    wf = Workflow("w")

    def work(ctx: Context) -> None: ...

    wf.step(name="one", action="work")(work)
    wf.step(name="two", action="work", parents=["one"])(work)
    assert [s["name"] for s in wf.definition()["steps"]] == ["one", "two"]
    assert wf.step_name(work) == "one"  # a function names its first step


def test_async_callable_object_is_detected() -> None:
    class Handler:
        async def __call__(self, ctx: Context) -> None: ...

    wf = Workflow("w")
    wf.step(name="h")(Handler())
    assert wf.steps[0].is_async is True


@pytest.mark.parametrize("name", ["ok\n", "Ok", "", "x" * 65, "a b"])
def test_names_are_checked_whole_before_anything_is_sent(name: str) -> None:
    with pytest.raises(DefinitionError):
        Workflow(name)
    wf = Workflow("fine")
    with pytest.raises(DefinitionError):

        @wf.step(name=name)
        def s(ctx: Context) -> None: ...

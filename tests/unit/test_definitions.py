"""Definition validation and normalisation, payload checks, backoff (pure functions)."""

from __future__ import annotations

import random

import pytest

from db.definitions import normalize
from db.errors import InvalidDefinition, InvalidPayload, PayloadTooLarge
from db.payloads import canonical_hash, dump
from db.transitions import backoff_delay


def test_defaults_are_filled_in() -> None:
    d = normalize("wf", {"steps": [{"name": "a"}, {"name": "b", "parents": ["a"]}]}, max_steps=10)
    a, b = d["steps"]
    assert a["action"] == "wf.a" and a["retries"] == 0 and a["timeout_s"] == 60.0
    assert a["schedule_timeout_s"] == 300.0 and a["delivery"] == "at_least_once"
    assert a["backoff"] == {"initial_s": 1.0, "factor": 2.0, "max_s": 60.0, "jitter": 0.2}
    assert b["parents"] == ["a"]


def test_same_definition_hashes_the_same_whatever_the_key_order() -> None:
    one = normalize("wf", {"steps": [{"name": "a", "retries": 1}]}, max_steps=10)
    two = normalize("wf", {"steps": [{"retries": 1, "name": "a"}]}, max_steps=10)
    assert canonical_hash(one) == canonical_hash(two)
    three = normalize("wf", {"steps": [{"name": "a", "retries": 2}]}, max_steps=10)
    assert canonical_hash(one) != canonical_hash(three)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "steps": [
                    {"name": "a", "parents": ["c"]},
                    {"name": "c", "parents": ["b"]},
                    {"name": "b", "parents": ["a"]},
                ]
            },
            "cycle",
        ),
        ({"steps": [{"name": "x" * 65}]}, "must match"),
        ({"steps": [{"name": "a"}], "on_failure": {"name": "a"}}, "already a step"),
        ({"steps": [{"name": "a"}], "on_failure": {"name": "h", "parents": ["a"]}}, "parents"),
        ({"steps": [{"name": "a", "timeout_s": 0}]}, "timeout_s"),
        ({"steps": [{"name": "a", "backoff": {"factor": 0.5}}]}, "factor"),
        ({"steps": [{"name": "a", "nonsense": 1}]}, "unknown field"),
        ({"steps": [{"name": f"s{i}"} for i in range(11)]}, "over the limit"),
    ],
)
def test_invalid_definitions_name_the_offence(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDefinition, match=message):
        normalize("wf", raw, max_steps=10)


def test_long_chain_is_fine_and_deep_cycle_found() -> None:
    chain = [{"name": "s0"}] + [{"name": f"s{i}", "parents": [f"s{i - 1}"]} for i in range(1, 256)]
    assert len(normalize("wf", {"steps": chain}, max_steps=256)["steps"]) == 256
    chain[0] = {"name": "s0", "parents": ["s255"]}
    with pytest.raises(InvalidDefinition, match="cycle"):
        normalize("wf", {"steps": chain}, max_steps=256)


def test_payload_checks() -> None:
    assert dump({"a": [1, "é"]}, field="input", limit=100) == '{"a":[1,"é"]}'
    with pytest.raises(PayloadTooLarge):
        dump("x" * 100, field="input", limit=50)
    with pytest.raises(InvalidPayload, match="NUL"):
        dump("a\x00b", field="input", limit=100)
    with pytest.raises(InvalidPayload):
        dump(float("nan"), field="input", limit=100)
    deep: object = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(InvalidPayload, match="nested"):
        dump(deep, field="input", limit=10_000)
    with pytest.raises(InvalidPayload, match="surrogate"):
        dump("\ud800", field="input", limit=100)


def test_backoff_grows_caps_and_jitters() -> None:
    policy = {"initial_s": 1.0, "factor": 2.0, "max_s": 10.0, "jitter": 0.0}
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    rng = random.Random(7)
    jittered = [backoff_delay({**policy, "jitter": 0.5}, 3, rng=rng) for _ in range(50)]
    assert all(2.0 <= d <= 6.0 for d in jittered) and len(set(jittered)) > 1

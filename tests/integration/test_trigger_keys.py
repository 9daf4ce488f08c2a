"""Bulk triggers whose idempotency keys overlap, listed in different orders, at once."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import pytest

from tests.integration.conftest import Api


async def test_overlapping_keys_in_other_orders_never_deadlock(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request inserts its runs in key order, so two requests over the same keys take the
    key index's entries in one order. In the listed order they deadlocked (Postgres aborts one
    after a second; after five aborts the request failed)."""
    await api.register("keys", [{"name": "a"}])
    rng = random.Random(7)
    made: dict[str, set[str]] = {}
    with caplog.at_level(logging.INFO, logger="cairn.db"):
        for _ in range(25):
            keys = [f"k{i}-{uuid.uuid4().hex[:8]}" for i in range(8)]
            orders = [rng.sample(keys, len(keys)) for _ in range(4)]
            answers = await asyncio.gather(
                *(
                    api.call(
                        "POST",
                        "/workflows/keys/runs/bulk",
                        json={"runs": [{"input": {}, "idempotency_key": k} for k in order]},
                    )
                    for order in orders
                )
            )
            for r in answers:
                assert r.status_code == 201, r.text
                for run in r.json()["runs"]:
                    made.setdefault(run["idempotency_key"], set()).add(run["id"])
    assert all(len(ids) == 1 for ids in made.values())  # one run per key
    assert len(made) == 25 * 8
    retried = [r.getMessage() for r in caplog.records if "40P01" in r.getMessage()]
    assert retried == []

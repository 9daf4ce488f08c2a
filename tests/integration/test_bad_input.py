"""Malformed requests get a 4xx problem+json and change nothing."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import Api


def _problem(r: object, status: int) -> dict[str, object]:
    import httpx

    assert isinstance(r, httpx.Response)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["code"] and body["title"] and "detail" in body
    return dict(body)


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        ([{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}], "cycle"),
        ([{"name": "a", "parents": ["a"]}], "cycle"),
        ([{"name": "a", "parents": ["zz"]}], "unknown parent"),
        ([{"name": "a"}, {"name": "a"}], "duplicate"),
        ([{"name": "Bad Name"}], "match"),
        ([], "steps"),
        ([{"name": "a", "retries": -1}], "retries"),
        ([{"name": "a", "delivery": "sometimes"}], "delivery"),
    ],
)
async def test_invalid_definitions_are_422_naming_the_offence(
    api: Api, steps: list[object], needle: str
) -> None:
    r = await api.call("PUT", "/workflows/bad", json={"steps": steps})
    body = _problem(r, 422)
    assert needle in str(body).lower()
    await api.call("GET", "/workflows/bad", 404)


async def test_too_many_steps(api: Api) -> None:
    steps = [{"name": f"s{i}"} for i in range(257)]
    body = _problem(await api.call("PUT", "/workflows/big", json={"steps": steps}), 422)
    assert "256" in str(body["detail"])


async def test_malformed_json_and_wrong_types(api: Api) -> None:
    await api.register("w", [{"name": "s"}])
    headers = {"content-type": "application/json"}
    _problem(
        await api.call("POST", "/workflows/w/runs", content=b"{not json", headers=headers), 400
    )
    _problem(
        await api.call("POST", "/workflows/w/runs", content=b"\xff\xfe\x00", headers=headers), 400
    )
    _problem(await api.call("POST", "/workflows/w/runs", json={"input": 1, "version": "x"}), 422)
    _problem(
        await api.call("POST", "/workers", json={"name": "w", "actions": "x", "slots": -1}), 422
    )
    assert (await api.json("GET", "/runs"))["runs"] == []


async def test_unknown_ids(api: Api) -> None:
    rid = uuid.uuid4()
    _problem(await api.call("GET", f"/runs/{rid}"), 404)
    _problem(await api.call("GET", "/runs/not-a-uuid"), 422)
    _problem(await api.call("POST", f"/runs/{rid}/cancel"), 404)
    _problem(await api.call("POST", "/workflows/nope/runs", json={}), 404)
    body = {"lease_token": str(uuid.uuid4()), "output": 1}
    _problem(await api.call("POST", f"/step-runs/{rid}/complete", json=body), 404)
    _problem(await api.call("POST", f"/workers/{rid}/heartbeat", json={"step_run_ids": []}), 404)
    _problem(await api.call("GET", "/nowhere"), 404)


async def test_oversized_and_unstorable_payloads(api: Api) -> None:
    await api.register("p", [{"name": "s"}])
    huge = "x" * (api.svc.settings.max_payload_bytes + 10)
    _problem(await api.call("POST", "/workflows/p/runs", json={"input": huge}), 413)
    body = b'{"input": "' + b"y" * (api.svc.settings.max_body_bytes + 1) + b'"}'
    _problem(
        await api.call(
            "POST", "/workflows/p/runs", content=body, headers={"content-type": "application/json"}
        ),
        413,
    )
    _problem(await api.call("POST", "/workflows/p/runs", json={"input": "a\u0000b"}), 422)
    nan = b'{"input": NaN}'
    _problem(
        await api.call(
            "POST", "/workflows/p/runs", content=nan, headers={"content-type": "application/json"}
        ),
        422,
    )
    deep = b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = await api.call(
        "POST", "/workflows/p/runs", content=deep, headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500
    assert (await api.json("GET", "/runs"))["runs"] == []


async def test_oversized_output_is_refused_and_lease_kept(api: Api) -> None:
    await api.register("o", [{"name": "s"}])
    run = await api.trigger("o")
    w = await api.worker(["o.s"])
    [t] = await api.poll(w)
    huge = "x" * (api.svc.settings.max_payload_bytes + 10)
    _problem(await api.complete(t, huge, expect=413), 413)
    await api.complete(t, "small")
    assert (await api.run(run["id"]))["status"] == "succeeded"


async def test_sql_metacharacters_are_data(api: Api) -> None:
    evil = "'; DROP TABLE runs; --"
    await api.register("sqli", [{"name": "s"}])
    run = await api.trigger("sqli", {"q": evil}, idempotency_key=evil)
    assert (await api.run(run["id"]))["input"] == {"q": evil}
    _problem(await api.call("GET", "/runs", params={"workflow": evil}), 422)


async def test_heartbeat_interval_above_a_third_of_the_lease_is_refused(api: Api) -> None:
    body = {"name": "w", "actions": ["a"], "heartbeat_interval_s": 5, "lease_timeout_s": 9}
    _problem(await api.call("POST", "/workers", json=body), 422)
    ok = await api.json(
        "POST", "/workers", 201, json={"name": "w", "actions": ["a"], "lease_timeout_s": 3}
    )
    assert ok["heartbeat_interval_s"] * 3 <= ok["lease_timeout_s"] == 3


async def test_replayed_lease_token_from_another_step_is_refused(api: Api) -> None:
    await api.register("tok", [{"name": "a"}, {"name": "b"}])
    await api.trigger("tok")
    w = await api.worker(["tok.a", "tok.b"])
    a, b = await api.poll(w)
    forged = {"lease_token": a["lease_token"], "output": 1}
    r = await api.call("POST", f"/step-runs/{b['step_run_id']}/complete", json=forged)
    assert _problem(r, 409)["code"] == "lease_lost"
    await api.complete(b, 2)


async def test_fuzz_findings_stay_fixed(api: Api) -> None:
    """Regressions found by schemathesis: overflow in backoff, sloppy names, coerced types."""
    await api.register(
        "bo",
        [
            {
                "name": "a",
                "retries": 1000,
                "backoff": {"initial_s": 0, "factor": 100, "max_s": 0, "jitter": 0},
            }
        ],
    )
    await api.trigger("bo")
    w = await api.worker(["bo.a"])
    async with api.svc.db.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("UPDATE step_runs SET attempt = 400, max_attempts = 1001"))
    [t] = await api.poll(w)
    assert t["attempt"] == 401
    assert (await api.fail(t)).json() == {"status": "queued"}  # no OverflowError
    _problem(await api.call("PUT", "/workflows/nl%0A", json={"steps": [{"name": "a"}]}), 422)
    _problem(await api.call("PUT", "/workflows/nl", json={"steps": [{"name": "a\n"}]}), 422)
    _problem(await api.call("POST", "/workflows/bo/runs", json={"version": True}), 422)
    _problem(
        await api.call("POST", "/workers", json={"name": "w", "actions": ["a"], "slots": "2"}), 422
    )
    r = await api.call("POST", "/workflows/bo/runs", json={"input": "\\u0000"})
    assert r.status_code == 201 and r.json()["input"] == "\\u0000"
    # A NUL in an idempotency key (text the database cannot store): 422, nothing created.
    before = len((await api.json("GET", "/runs?workflow=bo&limit=100"))["runs"])
    for path, body in (
        ("/workflows/bo/runs", {"idempotency_key": "a\x00b"}),
        ("/workflows/bo/runs/bulk", {"runs": [{"idempotency_key": "\x00"}]}),
    ):
        _problem(await api.call("POST", path, json=body), 422)
    assert len((await api.json("GET", "/runs?workflow=bo&limit=100"))["runs"]) == before


async def test_sql_metacharacters_in_every_string_field(api: Api) -> None:
    evil = "x'); DROP TABLE step_runs; --\\\"%_"
    await api.register("meta", [{"name": "s", "action": evil}], description=evil)
    _problem(await api.call("PUT", "/workflows/meta", json={"steps": [{"name": evil}]}), 422)
    _problem(await api.call("PUT", f"/workflows/{evil}", json={"steps": [{"name": "a"}]}), 422)
    run = await api.trigger("meta", {evil: evil}, idempotency_key=evil)
    w = await api.json("POST", "/workers", 201, json={"name": evil, "actions": [evil]})
    [t] = await api.poll(w["id"])
    assert t["action"] == evil and t["input"] == {evil: evil}
    body = {
        "lease_token": t["lease_token"],
        "error": {"type": evil, "message": evil},
        "retryable": False,
    }
    await api.call("POST", f"/step-runs/{t['step_run_id']}/fail", 200, json=body)
    final = await api.run(run["id"])
    assert final["steps"][0]["error"] == {"type": evil, "message": evil}
    assert final["idempotency_key"] == evil
    page = await api.json("GET", "/runs", params={"status": "failed", "cursor": None})
    assert [r["id"] for r in page["runs"]] == [run["id"]]
    _problem(await api.call("GET", "/runs", params={"cursor": evil}), 422)
    _problem(await api.call("GET", f"/runs/{evil}"), 422)


async def test_integers_beyond_64_bits_read_back_exactly(api: Api) -> None:
    big = {"n": 2**64, "neg": -(2**63) - 1, "huge": 123456789012345678901234567890, "s": "9" * 30}
    await api.register("bigint", [{"name": "s"}])
    run = await api.trigger("bigint", big)
    assert run["input"] == big
    w = await api.worker(["bigint.s"])
    [t] = await api.poll(w)
    assert t["input"] == big
    await api.complete(t, {"out": 2**70})
    got = await api.run(run["id"])
    assert got["input"] == big and got["steps"][0]["output"] == {"out": 2**70}


async def test_a_trailing_slash_is_answered_not_redirected(api: Api) -> None:
    """A 307 would send the client to an address built from its ``Host`` header, and a client
    that does not follow redirects would get nothing."""
    await api.register("w", [{"name": "s"}])
    run = await api.json("POST", "/workflows/w/runs/", 201, json={"input": {"k": 1}})
    assert (await api.json("GET", f"/runs/{run['id']}/"))["input"] == {"k": 1}
    assert [r["id"] for r in (await api.json("GET", "/runs/"))["runs"]] == [run["id"]]
    _problem(await api.call("GET", "/nowhere/"), 404)
    health = await api.client.get("/healthz//")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_answers_given_before_routing_are_counted_under_their_route(api: Api) -> None:
    """413 from the body limit, HEAD and a trailing slash (answered through a rewritten scope):
    each is counted under its route's template; only a path no route has is ``unmatched``."""
    await api.register("w", [{"name": "s"}])
    big = b'{"input": "' + b"x" * (api.svc.settings.max_body_bytes + 1) + b'"}'
    headers = {"content-type": "application/json"}
    _problem(await api.call("POST", "/workflows/w/runs", content=big, headers=headers), 413)
    await api.call("HEAD", "/runs", 200)
    await api.call("GET", "/runs/", 200)
    await api.call("GET", "/nowhere", 404)

    async def count(method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return await api.metric("cairn_http_requests_total", **labels)

    assert await count("POST", "/api/v1/workflows/{name}/runs", "413") == 1
    assert await count("HEAD", "/api/v1/runs", "200") == 1
    assert await count("GET", "/api/v1/runs", "200") == 1
    assert await count("GET", "unmatched", "404") == 1


async def test_a_body_declared_as_not_json_is_415_and_an_undeclared_one_is_read_as_json(
    api: Api,
) -> None:
    definition = b'{"steps": [{"name": "s"}]}'
    for declared in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        body = _problem(
            await api.call(
                "PUT", "/workflows/ct", content=definition, headers={"content-type": declared}
            ),
            415,
        )
        assert body["code"] == "unsupported_media_type" and declared in str(body["detail"])
    await api.call("GET", "/workflows/ct", 404)
    # JSON under another name, or no Content-Type at all (curl --data-binary without -H), is JSON.
    plus = {"content-type": "application/vnd.cairn+json; charset=utf-8"}
    await api.call("PUT", "/workflows/ct", 201, content=definition, headers=plus)
    await api.call("PUT", "/workflows/ct2", 201, content=definition)
    # A JSON body of the wrong shape is still a 422, whatever it is declared as.
    _problem(await api.call("PUT", "/workflows/ct3", json=[1]), 422)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/workers", {"name": "a\u0000b", "actions": ["x"]}, "name"),
        ("POST", "/workflows/nul/runs", {"input": 1, "idempotency_key": "k\u0000"}, "idempotency"),
        ("PUT", "/workflows/nul2", {"steps": [{"name": "s"}], "description": "\u0000"}, "descr"),
        (
            "POST",
            "/workflows/nul/runs/bulk",
            {"runs": [{"input": 1}, {"input": 2, "idempotency_key": "\u0000"}]},
            "idempotency",
        ),
    ],
)
async def test_a_nul_in_a_text_field_is_a_422_naming_the_field(
    api: Api, method: str, path: str, body: dict[str, object], field: str
) -> None:
    await api.register("nul", [{"name": "s"}])
    problem = _problem(await api.call(method, path, json=body), 422)
    assert field in str(problem["detail"]) and "NUL" in str(problem["detail"])
    assert "SQLSTATE" not in str(problem)
    assert (await api.json("GET", "/runs"))["runs"] == []
    await api.call("GET", "/workflows/nul2", 404)


async def test_a_nul_in_a_failure_is_refused_and_the_lease_kept(api: Api) -> None:
    await api.register("nf", [{"name": "s"}])
    run = await api.trigger("nf")
    w = await api.worker(["nf.s"])
    [t] = await api.poll(w)
    path = f"/step-runs/{t['step_run_id']}/fail"
    for error in ({"type": "E\u0000"}, {"message": "m\u0000"}):
        bad = {"lease_token": t["lease_token"], "error": error, "retryable": False}
        problem = _problem(await api.call("POST", path, json=bad), 422)
        assert "NUL" in str(problem["detail"])
    await api.complete(t, "ok")
    assert (await api.run(run["id"]))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("PUT", "/workflows/sur", b'{"steps": [{"name": "a"}], "description": "\\ud800"}', "descr"),
        ("POST", "/workflows/nul/runs", b'{"input": 1, "idempotency_key": "k\\udfff"}', "idempot"),
        ("POST", "/workflows/nul/runs/bulk", b'{"runs": [{"idempotency_key": "\\ud800"}]}', "idem"),
        ("POST", "/workers", b'{"name": "\\ud800", "actions": ["x"]}', "name"),
    ],
)
async def test_an_unpaired_surrogate_in_a_text_field_is_a_422_naming_the_field(
    api: Api, method: str, path: str, raw: bytes, field: str
) -> None:
    await api.register("nul", [{"name": "s"}])
    headers = {"content-type": "application/json"}
    problem = _problem(await api.call(method, path, content=raw, headers=headers), 422)
    assert field in str(problem["detail"]) and "SQLSTATE" not in str(problem)
    assert (await api.json("GET", "/runs"))["runs"] == []
    await api.call("GET", "/workflows/sur", 404)


async def test_a_number_longer_than_python_converts_is_a_422_saying_so(api: Api) -> None:
    await api.register("big", [{"name": "s"}])
    headers = {"content-type": "application/json"}
    raw = b'{"input": ' + b"7" * 5000 + b"}"
    problem = _problem(
        await api.call("POST", "/workflows/big/runs", content=raw, headers=headers), 422
    )
    assert problem["code"] == "invalid_payload" and "string" in str(problem["detail"])
    bad_utf8 = _problem(
        await api.call(
            "POST", "/workflows/big/runs", content=b'{"input": "\xff"}', headers=headers
        ),
        400,
    )
    assert "UTF-8" in str(bad_utf8["detail"])
    assert (await api.json("GET", "/runs"))["runs"] == []


async def test_a_results_item_the_server_cannot_store_is_pointed_at(api: Api) -> None:
    """The whole request is refused; the item is named where a program can read it (as in a
    validation error's ``errors``), so a worker can send the others without it."""
    await api.register("pt", [{"name": "s"}])
    await api.json("POST", "/workflows/pt/runs/bulk", 201, json={"runs": [{}] * 2})
    w = await api.worker(["pt.s"])
    ok, bad = await api.poll(w, max_tasks=2)
    huge = "x" * (api.svc.settings.max_payload_bytes + 10)
    for item, status, part in (
        ({"output": "NUL \u0000"}, 422, "output"),
        ({"output": huge}, 413, "output"),
    ):
        items = [
            {"step_run_id": ok["step_run_id"], "lease_token": ok["lease_token"], "output": 1},
            {"step_run_id": bad["step_run_id"], "lease_token": bad["lease_token"], **item},
        ]
        for path, body in (
            ("/step-runs/results", {"results": items}),
            (f"/workers/{w}/poll", {"max_tasks": 1, "wait_s": 0, "results": items}),
        ):
            problem = _problem(await api.call("POST", path, json=body), status)
            [pointed] = problem["errors"]  # type: ignore[misc]
            assert pointed["loc"] == ["body", "results", "1", part], (path, problem)
    # Nothing was applied: both leases are still held.
    assert (await api.run(ok["run_id"]))["steps"][0]["status"] == "running"
    await api.complete(ok, 1)
    await api.complete(bad, 2)

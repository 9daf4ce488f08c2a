from __future__ import annotations

from tests.integration.conftest import Api


async def test_chain_runs_in_order_with_parent_outputs(api: Api) -> None:
    await api.register(
        "chain", [{"name": "a"}, {"name": "b", "parents": ["a"]}, {"name": "c", "parents": ["b"]}]
    )
    run = await api.trigger("chain", {"x": 1})
    assert run["status"] == "queued"
    w = await api.worker(["chain.a", "chain.b", "chain.c"])
    seen = []
    for expected, output in (("a", {"a": 1}), ("b", {"b": 2}), ("c", {"c": 3})):
        tasks = await api.poll(w)
        assert [t["step"] for t in tasks] == [expected]
        seen.append(tasks[0])
        assert tasks[0]["input"] == {"x": 1}
        await api.complete(tasks[0], output)
    assert seen[1]["parents"] == {"a": {"a": 1}}
    assert seen[2]["parents"] == {"b": {"b": 2}}
    final = await api.run(run["id"])
    assert final["status"] == "succeeded"
    assert [s["output"] for s in final["steps"]] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert all(s["attempts"][0]["outcome"] == "succeeded" for s in final["steps"])

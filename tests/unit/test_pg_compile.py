"""db.pg renders the named statements once to asyncpg's ``$n`` placeholders."""

from __future__ import annotations

import pytest

from db import queries as Q
from db import queries_reads as R
from db import queries_reaper as P
from db.pg import Result, compile_sql


def test_names_become_numbers_once_each_and_casts_stay() -> None:
    sql, names = compile_sql("SELECT :a, CAST(:b AS int), :a, x::jsonb FROM t WHERE y = :c")
    assert sql == "SELECT $1, CAST($2 AS int), $1, x::jsonb FROM t WHERE y = $3"
    assert names == ("a", "b", "c")


def test_escaped_colon_is_literal() -> None:
    sql, names = compile_sql("SELECT '\\:not_a_param', :p")
    assert sql == "SELECT ':not_a_param', $1" and names == ("p",)


def test_every_named_query_compiles_without_leftover_names() -> None:
    named = [(name, getattr(module, name)) for module in (Q, R, P) for name in dir(module)]
    assert {"GET_RUN", "CLAIM", "REAPER_CANDIDATES"} <= {name for name, _ in named}
    for name, clause in named:
        if hasattr(clause, "text") and name.isupper():
            sql, names = compile_sql(clause.text)
            assert len(names) == len(set(names)), name
            for n in names:
                assert f":{n} " not in sql and not sql.endswith(f":{n}"), name


def test_result_accessors() -> None:
    rows = Result([(1, "x"), (2, "y")])
    assert rows.first() == (1, "x") and rows.scalar() == 1 and len(rows.all()) == 2
    assert Result([(7,)]).scalar_one() == 7
    assert Result([]).first() is None and Result([]).scalar() is None
    with pytest.raises(LookupError):
        rows.one()

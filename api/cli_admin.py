"""``cairn tenant ...``, ``cairn token ...`` and ``cairn check``.

They work against ``CAIRN_DATABASE_URL`` or, without it, the embedded Postgres in
``CAIRN_DATA_DIR`` (``--data-dir``). ``tenant`` and ``token`` bring the schema to head first;
``check`` only reads, and refuses a database whose schema is not at head.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # `cairn worker` runs on SDK-only hosts: no server imports at load time
    from api.settings import Settings
    from db.pg import Conn

T = TypeVar("T")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data_dir_help = "embedded Postgres data dir when CAIRN_DATABASE_URL is unset (CAIRN_DATA_DIR)"
    tenant = sub.add_parser("tenant", help="manage tenants: create, list")
    tsub = tenant.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a tenant and print its id")
    create.add_argument("name", help="unique tenant name")
    tlist = tsub.add_parser("list", help="list tenants")
    for p in (create, tlist):
        p.add_argument("--data-dir", help=data_dir_help)

    token = sub.add_parser("token", help="manage API tokens: create, list, revoke")
    ksub = token.add_subparsers(dest="action", required=True)
    kcreate = ksub.add_parser("create", help="create a token and print it (shown only once)")
    kcreate.add_argument("--tenant", required=True, help="tenant name or id")
    kcreate.add_argument("--role", required=True, choices=["admin", "worker", "viewer"])
    kcreate.add_argument("--name", default="", help="a label for the token")
    klist = ksub.add_parser("list", help="list tokens by prefix (never the secret)")
    klist.add_argument("--tenant", help="only this tenant (name or id)")
    krevoke = ksub.add_parser("revoke", help="revoke a token by its prefix")
    krevoke.add_argument("prefix", help="the token's prefix (as listed), e.g. 1a2b3c4d")
    for p in (kcreate, klist, krevoke):
        p.add_argument("--data-dir", help=data_dir_help)

    check = sub.add_parser(
        "check", help="check the database's invariants; exit 1 and list violations if any"
    )
    check.add_argument(
        "--slack",
        type=float,
        default=30.0,
        help="seconds an expired lease may wait for the reaper before it counts (default 30)",
    )
    check.add_argument("--data-dir", help=data_dir_help)


class NotAtHead(Exception):
    """The database's schema is not the one this cairn's migrations end at."""


def _with_database(
    settings: Settings, fn: Callable[[Conn], Awaitable[T]], *, migrate: bool = True
) -> T:
    """Run ``fn`` in one transaction on the configured (or embedded) database: migrated first,
    or with ``migrate=False`` only if its schema is already at head (else :class:`NotAtHead`)."""
    from db.embedded import EmbeddedPostgres
    from db.engine import Database, create_engine
    from db.engine import migrate as migrate_schema

    embedded = None
    url = settings.database_url
    if url is None:
        if not migrate and not Path(settings.data_dir).is_dir():
            raise NotAtHead(f"no embedded database in {settings.data_dir}")
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()

    async def go(url: str) -> T:
        db = Database(create_engine(url, pool_size=1, max_overflow=0), pool_size=2)
        try:
            if migrate:
                await migrate_schema(db.engine)
            else:
                async with db.connect() as conn:
                    problem = await schema_problem(conn)
                if problem:
                    raise NotAtHead(problem)
            return await db.transaction(fn)
        finally:
            await db.dispose()

    try:
        with reaching_database():
            return asyncio.run(go(url))
    finally:
        if embedded is not None:
            embedded.stop()


async def schema_problem(conn: Conn) -> str | None:
    """What is wrong with the database's schema for this cairn, or None when it is at head."""
    from db.engine import script_heads, stored_revisions

    head = ", ".join(sorted(script_heads()))
    found = await stored_revisions(conn)
    if found is None:
        return f"the database has no Cairn schema (never migrated; head is {head})"
    if found == script_heads():
        return None
    at = ", ".join(sorted(found)) or "none"
    return f"the database schema is at revision {at}, not at this cairn's head {head}"


class DatabaseFailure(Exception):
    """The database could not be reached or used; the message says why, in one line."""


@contextlib.contextmanager
def reaching_database() -> Iterator[None]:
    """Turn a failure to reach the database inside the block into :class:`DatabaseFailure`."""
    try:
        yield
    except Exception as err:
        reason = database_failure(err)
        if reason is None:
            raise
        raise DatabaseFailure(reason) from err


def database_failure(err: BaseException) -> str | None:
    """One line saying why the database could not be used, or None if ``err`` is not about
    reaching it (refused, unknown host, timed out, bad credentials, no such database)."""
    from db.engine import translate
    from db.errors import DatabaseUnavailable

    if not isinstance(err, DatabaseUnavailable | OSError) and not isinstance(
        translate(err), DatabaseUnavailable
    ):
        return None
    root: BaseException = err
    seen = {id(root)}
    while True:  # the driver's own words: SQLAlchemy keeps them in .orig, we in __cause__
        nxt = getattr(root, "orig", None) or root.__cause__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    return " ".join(str(root).split()) or type(root).__name__


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _tenant(args: argparse.Namespace, settings: Settings) -> int:
    from db import tokens

    if args.action == "create":
        tid = _with_database(settings, lambda conn: tokens.create_tenant(conn, args.name))
        print(tid)
        print(f"cairn: tenant {args.name!r} created", file=sys.stderr)
        return 0
    rows = _with_database(settings, tokens.list_tenants)
    table = [["ID", "NAME", "CREATED"]]
    table += [[str(r.id), r.name, _when(r.created_at)] for r in rows]
    print(_table(table))
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from db import tokens

    if args.action == "create":
        token, prefix = _with_database(
            settings,
            lambda conn: tokens.create_token(conn, args.tenant, args.role, args.name),
        )
        print(token)
        print(
            f"cairn: token {prefix} ({args.role}, tenant {args.tenant!r}) created; it is shown"
            " only this once, store it now",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        infos = _with_database(settings, lambda conn: tokens.list_tokens(conn, args.tenant))
        table = [["PREFIX", "TENANT", "ROLE", "NAME", "CREATED", "LAST USED", "REVOKED"]]
        table += [
            [
                i.prefix,
                i.tenant_name,
                i.role,
                i.name or "-",
                _when(i.created_at),
                _when(i.last_used_at),
                _when(i.revoked_at),
            ]
            for i in infos
        ]
        print(_table(table))
        return 0
    found = _with_database(settings, lambda conn: tokens.revoke(conn, args.prefix))
    if not found:
        print(f"cairn: error: no token with prefix {args.prefix!r}", file=sys.stderr)
        return 1
    print(
        f"cairn: token {tokens.prefix_of(args.prefix)} revoked (servers stop accepting it"
        " within CAIRN_AUTH_CACHE_S)",
        file=sys.stderr,
    )
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from db.check import Violation, run_checks

    async def go(conn: Conn) -> list[Violation]:
        return await run_checks(conn, slack_s=args.slack)

    found = _with_database(settings, go, migrate=False)
    for v in found:
        print(f"{v.check}\t{v.detail}")
    print(f"cairn check: {len(found)} violation(s)", file=sys.stderr)
    return 1 if found else 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 done; 1 the command ran and says no (violations found, no such token, a name
    taken); 2 it could not run (database unreachable, schema not at head for ``check``)."""
    from db.tokens import TokenAdminError

    try:
        if args.command == "check":
            return _check(args, settings)
        return _tenant(args, settings) if args.command == "tenant" else _token(args, settings)
    except TokenAdminError as err:
        print(f"cairn: error: {err}", file=sys.stderr)
        return 1
    except NotAtHead as err:
        print(
            f"cairn {args.command}: {err}: run `cairn migrate` first (nothing was checked)",
            file=sys.stderr,
        )
        return 2

"""The ``cairn`` command: ``serve``, ``migrate``, ``worker``, ``tenant``, ``token``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from api import cli_admin

log = logging.getLogger("cairn")

AUTH_OFF_BANNER = """\
cairn: ****************************************************************
cairn: *  AUTH IS OFF: anyone who can reach this port has full rights  *
cairn: *  (default tenant). Fine on loopback only; for anything else   *
cairn: *  run `cairn serve --auth` (CAIRN_AUTH=true) with API tokens.   *
cairn: ****************************************************************"""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import SUPERVISOR_PID_ENV, create_app
    from api.httpproto import CairnHttpProtocol
    from api.settings import Settings
    from db.embedded import EmbeddedPostgres

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.auth:
        overrides["auth"] = True
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if not settings.auth and not is_loopback(settings.host):
        print(
            f"cairn: refusing to serve on {settings.host} with authentication off: pass --auth"
            " (or CAIRN_AUTH=true) and create tokens with `cairn token create`, or bind to"
            " 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    if settings.auth:
        print(
            "cairn: auth ON: /api/v1 needs `Authorization: Bearer <token>`"
            " (cairn tenant create / cairn token create)",
            file=sys.stderr,
        )
    else:
        print(AUTH_OFF_BANNER, file=sys.stderr)
    embedded = None
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
        settings = settings.model_copy(update={"database_url": url})
        print(f"cairn: embedded PostgreSQL in {embedded.pgdata}", file=sys.stderr)
    print(
        f"cairn: serving on http://{settings.host}:{settings.port} "
        f"(API /api/v1, docs /docs, metrics /metrics)",
        file=sys.stderr,
    )
    # uvicorn re-raises SIGTERM once it has shut down; make that an orderly exit so the
    # `finally` below stops the embedded Postgres instead of the default handler killing us.
    signal.signal(signal.SIGTERM, _exit_quietly)
    # uvicorn's httptools protocol, answering malformed and stalled requests in problem+json.
    http: Any = functools.partial(CairnHttpProtocol, head_timeout_s=settings.request_head_timeout_s)
    try:
        if args.workers > 1:
            # Several processes share the socket; each builds its app from the environment.
            asyncio.run(_migrate_url(settings.database_url or ""))
            os.environ["CAIRN_DATABASE_URL"] = settings.database_url or ""
            os.environ["CAIRN_RUN_MIGRATIONS"] = "false"
            os.environ["CAIRN_AUTH"] = "true" if settings.auth else "false"
            os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # see api.app.die_with_parent
            with metrics_dir():  # each process's counters, summed by whichever answers a scrape
                uvicorn.run(
                    "api.app:app_from_env",
                    factory=True,
                    workers=args.workers,
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level,
                    timeout_graceful_shutdown=5,
                    http=http,
                )
        else:
            # One process keeps its metrics in memory, unless the operator set a multi-process
            # directory (prometheus_client then writes there): its stale files go first.
            shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            with metrics_dir() if shared else contextlib.nullcontext():
                uvicorn.run(
                    create_app(settings),
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level,
                    timeout_graceful_shutdown=5,
                    http=http,
                )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """The directory the server processes share their metrics through (multi-process mode).

    ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it (its ``*.db`` files from an earlier
    server are removed first: they would add to this one's counters), else a new temporary
    directory, removed at exit. Set in the environment the server processes inherit.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield given
        return
    path = tempfile.mkdtemp(prefix="cairn-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _migrate_url(url: str) -> None:
    from db.engine import create_engine, migrate

    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _migrate(args: argparse.Namespace) -> int:
    from api.settings import Settings
    from db.embedded import EmbeddedPostgres

    settings = Settings()
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(args.data_dir or settings.data_dir)
        url = embedded.start()
    try:
        asyncio.run(_migrate_url(url))
    finally:
        if embedded is not None:
            embedded.stop()
    print("cairn: schema at head", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn durable workflow engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run an API replica (embedded Postgres if no URL)")
    serve.add_argument("--host", help="bind address (CAIRN_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CAIRN_PORT, default 8080)")
    serve.add_argument("--data-dir", help="embedded Postgres data dir (CAIRN_DATA_DIR)")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--auth",
        action="store_true",
        help="require API tokens (CAIRN_AUTH); mandatory on a non-loopback address",
    )
    migrate = sub.add_parser("migrate", help="bring the database schema to head")
    migrate.add_argument("--data-dir", help="embedded Postgres data dir (CAIRN_DATA_DIR)")
    worker = sub.add_parser("worker", help="run a worker: cairn worker module:attr [--url ...]")
    worker.add_argument("rest", nargs=argparse.REMAINDER)
    cli_admin.add_parsers(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CAIRN_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate(args)
    if args.command in ("tenant", "token", "check"):
        return cli_admin.run(args)
    from worker_sdk import cli as worker_cli

    return worker_cli.main(args.rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

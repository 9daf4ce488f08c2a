"""The ``cairn`` command: ``serve``, ``migrate``, ``worker``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger("cairn")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.settings import Settings
    from db.embedded import EmbeddedPostgres

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    settings = Settings(**overrides)  # type: ignore[arg-type]
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
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=5,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from api.settings import Settings
    from db.embedded import EmbeddedPostgres
    from db.engine import create_engine, migrate

    settings = Settings()
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(args.data_dir or settings.data_dir)
        url = embedded.start()

    async def run() -> None:
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
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
    migrate = sub.add_parser("migrate", help="bring the database schema to head")
    migrate.add_argument("--data-dir", help="embedded Postgres data dir (CAIRN_DATA_DIR)")
    worker = sub.add_parser("worker", help="run a worker: cairn worker module:attr [--url ...]")
    worker.add_argument("rest", nargs=argparse.REMAINDER)
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
    from worker_sdk import cli as worker_cli

    return worker_cli.main(args.rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

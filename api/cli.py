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
from typing import TYPE_CHECKING, Any

from api import cli_admin

if TYPE_CHECKING:  # `cairn worker` runs on SDK-only hosts: no server imports at load time
    from api.settings import Settings

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


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import SUPERVISOR_PID_ENV, create_app
    from api.httpproto import CairnHttpProtocol
    from api.settings import DEFAULT_PORT, port_env_is_service_link
    from db.embedded import EmbeddedPostgres

    if args.port is None and port_env_is_service_link():
        print(
            f"cairn: warning: ignoring CAIRN_PORT={os.environ['CAIRN_PORT']!r}: Kubernetes sets"
            " that for a Service named `cairn` (set `enableServiceLinks: false` on the pod or"
            f" rename the Service); serving on port {DEFAULT_PORT}",
            file=sys.stderr,
        )
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
        f"cairn: serving on http://{url_host(settings.host)}:{settings.port} "
        f"(API /api/v1, docs /docs, metrics /metrics)",
        file=sys.stderr,
    )
    # uvicorn re-raises SIGTERM once it has shut down; make that an orderly exit so the
    # `finally` below stops the embedded Postgres instead of the default handler killing us.
    signal.signal(signal.SIGTERM, _exit_quietly)
    # uvicorn's httptools protocol, answering malformed and stalled requests in problem+json.
    http: Any = functools.partial(CairnHttpProtocol, head_timeout_s=settings.request_head_timeout_s)
    try:
        # Migrated here, once (not racing in each of N processes), so that a database it cannot
        # reach is one line, not the server's start-up traceback.
        if settings.run_migrations:
            with cli_admin.reaching_database():
                asyncio.run(_migrate_url(settings.database_url or ""))
            settings = settings.model_copy(update={"run_migrations": False})
        if args.workers > 1:
            # Several processes share the socket; each builds its app from the environment.
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


def _migrate(settings: Settings) -> int:
    from db.embedded import EmbeddedPostgres

    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    try:
        with cli_admin.reaching_database():
            asyncio.run(_migrate_url(url))
    finally:
        if embedded is not None:
            embedded.stop()
    print("cairn: schema at head", file=sys.stderr)
    return 0


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def data_dir_problem(path: str) -> str | None:
    """Why the embedded Postgres cannot keep its data in ``path`` (None if it can). A missing
    directory is made, with its missing parents, as for the default ``.cairn/pgdata``."""
    target = Path(path).absolute()
    for place in (target, *target.parents):
        if not place.exists():
            continue
        if not place.is_dir():
            what = "is" if place == target else f"cannot be made: {place} is"
            return f"{what} a file, not a directory"
        if not os.access(place, os.W_OK | os.X_OK):
            what = "is" if place == target else f"cannot be made: {place} is"
            return f"{what} not writable by this user"
        return None
    return None  # pragma: no cover - "/" exists


def load(args: argparse.Namespace) -> Settings:
    """The settings, the command line's flags on top of the environment; raises
    :class:`api.settings.SettingsError` naming what is wrong."""
    from api.settings import SettingsError, load_settings

    overrides: dict[str, tuple[str, object]] = {}
    if getattr(args, "host", None):
        overrides["host"] = ("--host", args.host)
    if getattr(args, "port", None) is not None:  # --port 0 is refused, not the default
        overrides["port"] = ("--port", args.port)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = ("--data-dir", args.data_dir)
    if getattr(args, "auth", False):
        overrides["auth"] = ("--auth", True)
    settings = load_settings(overrides)
    problems = []
    if args.command == "serve" and args.workers < 1:
        problems.append(f"--workers={args.workers} is not allowed: must be an integer >= 1")
    if settings.database_url is None:  # the embedded Postgres keeps its data there
        problem = data_dir_problem(settings.data_dir)
        if problem:
            name = "--data-dir" if "data_dir" in overrides else "CAIRN_DATA_DIR"
            problems.append(
                f"{name}={settings.data_dir!r} is not allowed: {problem}; it must be a directory"
                " (made if missing) for the embedded PostgreSQL's data, used when"
                " CAIRN_DATABASE_URL is unset"
            )
    if problems:
        raise SettingsError(problems)
    return settings


class QuietAlembic(logging.Filter):
    """Alembic's per-run preamble, said on every command; its "Running upgrade" lines stay."""

    NOISE = ("Context impl ", "Will assume ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.getLevelNamesMapping().get(level.upper(), TRACE_LEVEL),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # "setup plugin" x7
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, QuietAlembic) for f in migration.filters):
        migration.addFilter(QuietAlembic())


TRACE_LEVEL = 5  # uvicorn's "trace", below DEBUG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn durable workflow engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run an API replica (embedded Postgres if no URL)")
    serve.add_argument("--host", help="bind address (CAIRN_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 1-65535 (CAIRN_PORT, default 8080)")
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
    # Only listed here: `cairn worker ...` goes to the worker's own parser (see main).
    sub.add_parser(
        "worker",
        help="run a worker: cairn worker module:attr [--url U] ... (cairn worker --help)",
        add_help=False,
    )
    cli_admin.add_parsers(sub)
    return parser


def _worker(argv: list[str]) -> int:
    from worker_sdk import cli as worker_cli

    parser = worker_cli.build_parser()
    parser.prog = "cairn worker"
    parser.parse_args(argv)  # --help and usage errors, under the name the operator typed
    return worker_cli.main(argv)  # it configures logging itself (its --log-level)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return _worker(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "worker":  # only reached with options before it: `cairn -- worker`
        return _worker([])
    try:
        from api.settings import SettingsError
    except ModuleNotFoundError as err:  # an SDK-only install (`pip install cairn`)
        print(
            f"cairn: error: `cairn {args.command}` needs the server's packages ({err.name} is"
            " missing): pip install 'cairn[server]'",
            file=sys.stderr,
        )
        return 2

    try:
        settings = load(args)
    except SettingsError as err:
        for line in err.lines:
            print(f"cairn: error: {line}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "migrate":
            return _migrate(settings)
        return cli_admin.run(args, settings)
    except cli_admin.DatabaseFailure as err:
        where = _shown_url(settings.database_url) if settings.database_url else "embedded"
        print(
            f"cairn: error: cannot use the database {where}: {err}; check CAIRN_DATABASE_URL"
            " and that the server is up",
            file=sys.stderr,
        )
        return 2


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

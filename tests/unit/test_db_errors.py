"""Driver errors are translated once, at the db boundary, into the domain errors the API maps."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import pytest

from db.engine import translate
from db.errors import DatabaseUnavailable, InvalidPayload, SchemaNotReady


@pytest.mark.parametrize(
    "err",
    [
        asyncpg.InvalidCatalogNameError("database does not exist"),  # 3D000
        asyncpg.InvalidPasswordError("password authentication failed"),  # 28P01
        asyncpg.CannotConnectNowError("the database system is starting up"),  # 57P03
        asyncpg.AdminShutdownError("terminating connection"),  # 57P01
        asyncpg.TooManyConnectionsError("too many clients"),  # 53300
        asyncpg.ConnectionDoesNotExistError("connection was closed"),  # 08003
        asyncpg.InterfaceError("connection is closed"),
        asyncpg_base.InternalClientError("cannot switch to state 12"),
        ConnectionRefusedError(111, "refused"),
    ],
)
def test_connection_level_errors_mean_unavailable(err: BaseException) -> None:
    assert isinstance(translate(err), DatabaseUnavailable)


def test_data_exceptions_are_the_clients_fault() -> None:
    err = asyncpg.CharacterNotInRepertoireError("invalid byte sequence")  # 22021
    assert isinstance(translate(err), InvalidPayload)


def test_client_side_encoding_errors_and_unknown_errors_stay_as_they_are() -> None:
    bug = asyncpg_base.DataError("invalid input for query argument $1")
    assert translate(bug) is bug
    other = asyncpg.UniqueViolationError("duplicate key")
    assert translate(other) is other


def test_a_missing_table_or_function_means_the_schema_is_not_migrated() -> None:
    for err in (
        asyncpg.UndefinedTableError('relation "workflows" does not exist'),  # 42P01
        asyncpg.UndefinedFunctionError("function cairn_poll(...) does not exist"),  # 42883
    ):
        translated = translate(err)
        assert isinstance(translated, SchemaNotReady) and translated.status == 503
        assert translated.code == "not_ready"

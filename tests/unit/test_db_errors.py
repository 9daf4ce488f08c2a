"""Driver errors are translated once, at the db boundary, into the domain errors the API maps."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import pytest

from db.engine import translate
from db.errors import DatabaseBusy, DatabaseUnavailable, InvalidPayload, SchemaNotReady


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
        asyncpg.ObjectNotInPrerequisiteStateError("database is not accepting connections"),
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


@pytest.mark.parametrize(
    ("err", "kind", "code"),
    [
        # The database is not migrated (a table or function is missing).
        (asyncpg.UndefinedTableError('relation "workflows" does not exist'), SchemaNotReady,
         "not_ready"),  # 42P01
        (asyncpg.UndefinedFunctionError("function cairn_poll(...) does not exist"),
         SchemaNotReady, "not_ready"),  # 42883
        # Still aborted after the transaction's retries: nothing applied, send it again.
        (asyncpg.DeadlockDetectedError("deadlock detected"), DatabaseBusy,
         "database_busy"),  # 40P01
        (asyncpg.SerializationError("could not serialize access"), DatabaseBusy,
         "database_busy"),  # 40001
    ],
)  # fmt: skip
def test_503s_that_are_not_a_lost_connection(
    err: BaseException, kind: type[DatabaseUnavailable], code: str
) -> None:
    translated = translate(err)
    assert isinstance(translated, kind) and translated.status == 503
    assert translated.code == code

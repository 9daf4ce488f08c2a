"""Domain errors raised by the data layer; ``api`` maps each to one problem+json response."""

from __future__ import annotations


class CairnDBError(Exception):
    """Base of every error the data layer raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(CairnDBError):
    status = 404
    code = "not_found"


class InvalidDefinition(CairnDBError):
    status = 422
    code = "invalid_definition"


class InvalidPayload(CairnDBError):
    status = 422
    code = "invalid_payload"


class PayloadTooLarge(CairnDBError):
    status = 413
    code = "payload_too_large"


class InvalidState(CairnDBError):
    """The request is well formed but the target is in a state that does not allow it."""

    status = 409
    code = "invalid_state"


class LeaseConflict(CairnDBError):
    """A fenced write (heartbeat, complete, fail) from someone who is not the lease holder."""

    status = 409

    def __init__(self, code: str, detail: str, *, conflicting: bool, reason: str) -> None:
        super().__init__(detail)
        self.code = code
        self.conflicting = conflicting
        self.reason = reason


class DatabaseUnavailable(CairnDBError):
    status = 503
    code = "database_unavailable"


class DatabaseBusy(DatabaseUnavailable):
    """Postgres kept aborting the request's transaction (deadlock, serialization failure)
    after every retry: nothing was applied, and the same request may pass a moment later."""

    code = "database_busy"


class SchemaNotReady(DatabaseUnavailable):
    """The database answers but its schema is not this server's (migrations not run)."""

    code = "not_ready"

"""Exception types of metersync.

Every error a user can cause or meet has its own type, and its message names what was wrong
(the tenant, the column, the value, the valid range) so that one line on stderr is enough.
Secrets (API keys, passwords) never appear in a message.
"""

from __future__ import annotations


class MeterSyncError(Exception):
    """Base of every error metersync raises on purpose."""


class ConfigError(MeterSyncError):
    """Bad configuration or command-line input (invalid batch size, unknown tenant, ...)."""


class UnknownTenantError(ConfigError):
    """The tenant does not exist in the sync database."""

    def __init__(self, tenant_id: int) -> None:
        super().__init__(f"unknown tenant {tenant_id}: no row in table tenant")
        self.tenant_id = tenant_id


class SchemaError(MeterSyncError):
    """The sync database's schema cannot be served (unsupported column type, missing table)."""


class DatabaseUnavailableError(MeterSyncError):
    """The sync database could not be reached (or the connection was lost mid-operation)."""


#: The old name of :class:`DatabaseUnavailableError`; kept so existing imports and ``except``
#: clauses work.
DatabaseUnavailable = DatabaseUnavailableError


class TenantLockLostError(DatabaseUnavailableError):
    """The session holding a tenant's lock was lost; the cycle stops before touching anything.

    A reconnect opens a new session that does not hold the lock (another worker may hold it
    now), so no work that needs the lock continues on it. A subclass of
    :class:`DatabaseUnavailableError`: callers that already handle a lost database treat it so.
    """


class TenantBusyError(MeterSyncError):
    """Another worker holds this tenant's lock for the same operation."""


class MalformedPageError(MeterSyncError):
    """A download page failed validation; nothing of it was written and the cursor did not move."""


class ClientSystemError(MeterSyncError):
    """The Client System answered with an error or could not be reached.

    ``status`` is the HTTP status when there was a response, else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ClientSystemError):
    """401/403: the API key was refused. Never retried; the cycle stops at once."""


class BadRequestError(ClientSystemError):
    """400: the Client System found the request body malformed. Not retried."""


class PayloadTooLargeError(ClientSystemError):
    """413: the batch is larger than the Client System accepts. Not retried."""


class RemoteUnavailableError(ClientSystemError):
    """Retries are spent on timeouts, connection errors, 408, 429 or 5xx. Readings stay pending."""


class OutcomeUnknownError(ClientSystemError):
    """The batch reached a Client System that is not idempotent and its outcome is unknown
    (read timeout, connection dropped after sending, a 5xx that does not say the batch failed,
    an answer that cannot be read). Never resent automatically: the readings are held
    ``in_doubt`` until an operator runs ``metersync resolve``."""


class InconsistentResponseError(ClientSystemError):
    """A 200 whose counts do not add up to the number sent: the batch counts as failed."""


class CodecError(MeterSyncError):
    """The codec cannot encode or decode the data; the message names the column, row or byte."""


class CodecTypeError(CodecError, TypeError):
    """An Arrow type without a PostgreSQL mapping, or an input that is not Arrow data.

    Also a ``TypeError``, so callers that caught the codec's old ``TypeError`` keep working.
    """


class CodecValueError(CodecError, ValueError):
    """A value PostgreSQL or the JSON form cannot hold, malformed binary COPY input, or a row
    larger than a body limit.

    Also a ``ValueError``, so callers that caught the codec's old ``ValueError`` keep working.
    """

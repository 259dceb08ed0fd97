"""Structured logs: one JSON object per line, with the tenant and cycle they belong to.

``metersync --log-format json`` installs :class:`JsonFormatter`; every line has ``time`` (UTC,
ISO 8601), ``level``, ``logger`` and ``message``, and when known ``tenant``, ``cycle``,
``operation``, ``batch``, ``counts``, ``seconds`` and ``error``. Those come from a log call's
``extra=`` first, else from the context set with :func:`log_context` / :func:`bind` (a
contextvar, so each asyncio task keeps its own). Exceptions go to ``exception`` as text.

Secrets never appear: every message and traceback passes :func:`redact`, which masks DSN
passwords (URL userinfo and ``password=``), API key headers and assignments, and every value
given to :func:`register_secret` (the CLI registers the tenants' keys). The human-readable
format can use the same masking through :class:`RedactingFormatter`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "RedactingFormatter",
    "bind",
    "current_context",
    "formatter",
    "log_context",
    "loop_cycle",
    "redact",
    "register_secret",
    "report_fields",
    "unbind",
]

#: Fields a line carries when known (from ``extra=`` or the context), in this order.
CONTEXT_FIELDS = ("tenant", "cycle", "operation", "batch", "counts", "seconds", "error")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "metersync_log_context", default=MappingProxyType({})
)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields (``tenant=17, cycle=3``) to every line logged from this context on.

    Returns a token for :func:`unbind`; a ``None`` value removes the field.
    """
    merged = {**_context.get(), **fields}
    return _context.set({k: v for k, v in merged.items() if v is not None})


def loop_cycle(number: int) -> contextvars.Token[Mapping[str, Any]]:
    """A loop starts its cycle ``number``: log lines carry ``cycle``, and ``/healthz`` learns
    where cycles begin (see :mod:`metersync.observe.health`). Returns the token for
    :func:`unbind` at the cycle's end."""
    from metersync.observe.activity import ACTIVITY

    ACTIVITY.loop_cycle_started()
    return bind(cycle=number)


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Restore the context as it was before :func:`bind` returned ``token``."""
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """``with log_context(tenant=17, operation="upload"):`` every line inside carries them."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, Any]:
    """The fields bound in this context (a copy)."""
    return dict(_context.get())


# -- secrets ----------------------------------------------------------------------------------

_MASK = "***"
_PATTERNS = (
    # postgresql://user:secret@host, https://user:secret@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\g<1>{_MASK}@"),
    # libpq key/value DSN: password=secret, password='se cret'
    (
        re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE),
        rf"\g<1>{_MASK}",
    ),
    # X-API-Key: k, api_key=k, "api_key": "k", Authorization: Bearer k
    (
        re.compile(
            r"((?:x-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)"
            r"(?!\*\*\*)[^\s\"',;}\]]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{_MASK}",
    ),
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it would appear in a log line (e.g. a tenant's API key).

    Values shorter than 6 characters are not registered: masking them would garble ordinary
    words while protecting nothing worth the name.
    """
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with DSN passwords, API keys and registered secrets replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# -- formatters -------------------------------------------------------------------------------


class RedactingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output passes :func:`redact` (for the human format)."""

    def format(self, record: logging.LogRecord) -> str:
        """The usual line, secrets masked."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, secrets masked."""
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        bound = _context.get()
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name, bound.get(name))
            if value is not None:
                doc[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = redact(record.exc_text)
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(doc, default=_fallback).decode()


def _fallback(value: Any) -> Any:
    """Anything orjson cannot write (a Decimal, a dataclass with slots...) as redacted text."""
    return redact(str(value))


#: The values ``--log-format`` accepts.
LOG_FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(log_format: str = "text") -> logging.Formatter:
    """The formatter of a ``--log-format``: ``text`` (human, the default) or ``json``.

    Both mask secrets. An unknown name raises ``ValueError`` naming the accepted ones.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return RedactingFormatter(_TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")


def report_fields(report: Any) -> dict[str, Any]:
    """``extra=`` fields of an end-of-operation log line from an Upload/DownloadReport.

    ``tenant``, ``counts`` (every integer field of the report but the tenant id: batches,
    readings_sent, confirmed, pages, inserted, statements, ...), ``seconds`` and, when the
    operation ended early, ``error``. Never raises: a report of another shape gives what it has.
    """
    fields: dict[str, Any] = {}
    try:
        names = [f for f in getattr(report, "__dataclass_fields__", {}) if f != "tenant_id"]
        counts = {
            name: value
            for name in names
            if isinstance(value := getattr(report, name, None), int) and not isinstance(value, bool)
        }
        fields["counts"] = counts
        tenant = getattr(report, "tenant_id", None)
        if tenant is not None:
            fields["tenant"] = tenant
        seconds = getattr(report, "seconds", None)
        if isinstance(seconds, int | float):
            fields["seconds"] = round(float(seconds), 3)
        error = getattr(report, "error", None)
        if error:
            fields["error"] = str(error)
    except Exception:  # logging must never fail an operation
        pass
    return fields

"""Client System profiles: what the server at the other end promises (SPEC §7, issue 10).

Two kinds of Client System exist in the field:

* ``metersync`` — our contract (the reference server): idempotent by ``meter_reading_id``, a
  download endpoint, an advertised body limit, optionally a site filter. It says so on
  ``GET /health``::

      {"status":"ok","contract":"metersync","contract_version":2,"idempotent":true,
       "download":true,"max_body_bytes":67108864,"site_filter":true}

* ``metertrack`` — the original MeterTrack Client System that sites already run: NOT idempotent
  (a resend stores a second copy), no download endpoint, a 10 MB body limit, nulls refused,
  its own reply shape. Its health answer is ``{"status":"OK",...}`` or ``{"status":"Degraded"}``.

Negotiation is deliberately one-sided: a server is treated as idempotent only when it
*advertises* it (or the operator configured ``client_profile = "metersync"``). Anything else —
MeterTrack's health shape, a 404, a JSON object without ``contract: "metersync"`` — is
``metertrack``, the profile in which an unknown outcome is held ``in_doubt`` instead of resent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from metersync.errors import ConfigError

__all__ = [
    "CLIENT_PROFILES",
    "METERSYNC",
    "METERTRACK",
    "METERTRACK_MAX_BODY_BYTES",
    "ClientProfile",
    "check_profile_setting",
    "from_health",
    "with_body_limit",
]

ProfileName = Literal["metersync", "metertrack"]
#: Values of the ``client_profile`` setting.
CLIENT_PROFILES: tuple[str, ...] = ("auto", "metersync", "metertrack")
#: MeterTrack's JSON body parser limit: 10 MB = 10,485,760 bytes (after inflating gzip).
METERTRACK_MAX_BODY_BYTES = 10_485_760
#: The reference server's default limit (64 MiB), assumed when ``metersync`` is configured but
#: the server's ``/health`` does not say otherwise.
METERSYNC_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Smallest body limit accepted from a server or a setting: a single wide reading must fit.
MIN_BODY_BYTES = 4096
CONTRACT = "metersync"


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """What a Client System offers.

    ``name``: ``metersync`` or ``metertrack``. ``idempotent``: a resend of a reading with the
    same ``meter_reading_id`` stores no second copy (only then may an unknown outcome be
    resent). ``download``: ``GET /sync/readings`` exists. ``max_body_bytes``: the largest upload
    body it accepts (batches are split below it). ``site_filter``: uploads may carry
    ``X-Metersync-Site`` and downloads may ask ``exclude_site``. ``source``: how it was decided
    (``advertised``, ``configured`` or ``default``), for logs and ``status``.
    """

    name: ProfileName
    idempotent: bool
    download: bool
    max_body_bytes: int
    site_filter: bool
    source: str = "default"

    @property
    def json_profile(self) -> str:
        """The codec's JSON profile for upload bodies (``codec.json_rows(profile=...)``)."""
        return self.name


#: The original MeterTrack Client System (issue 10): the safe assumption for a silent server.
METERTRACK = ClientProfile(
    name="metertrack",
    idempotent=False,
    download=False,
    max_body_bytes=METERTRACK_MAX_BODY_BYTES,
    site_filter=False,
)

#: Our contract when configured without an advertisement to refine it.
METERSYNC = ClientProfile(
    name="metersync",
    idempotent=True,
    download=True,
    max_body_bytes=METERSYNC_MAX_BODY_BYTES,
    site_filter=False,
)


def check_profile_setting(value: str | None) -> str:
    """The ``client_profile`` setting, validated (``None`` → ``auto``)."""
    if value is None:
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in CLIENT_PROFILES:
        raise ConfigError(
            f"client_profile must be one of {', '.join(CLIENT_PROFILES)}, got {value!r}"
        )
    return value.strip().lower()


def _flag(body: dict[str, Any], key: str) -> bool:
    return body.get(key) is True  # only a real JSON true promises anything


def _body_limit(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_BODY_BYTES:
        return None
    return value


def from_health(body: Any) -> ClientProfile:
    """The profile a parsed ``GET /health`` answer advertises.

    Only ``contract == "metersync"`` yields the ``metersync`` profile, and then each capability
    only when advertised as a JSON ``true`` (a missing ``idempotent`` means *not* idempotent: we
    never assume a promise nobody made). Everything else is ``metertrack``.
    """
    if not isinstance(body, dict) or body.get("contract") != CONTRACT:
        return replace(METERTRACK, source="advertised")
    limit = _body_limit(body.get("max_body_bytes"))
    return ClientProfile(
        name="metersync",
        idempotent=_flag(body, "idempotent"),
        download=_flag(body, "download"),
        max_body_bytes=limit if limit is not None else METERSYNC_MAX_BODY_BYTES,
        site_filter=_flag(body, "site_filter"),
        source="advertised",
    )


def configured(name: str, advertised: ClientProfile | None = None) -> ClientProfile:
    """The profile the operator forced with ``client_profile`` (``metersync``/``metertrack``).

    A forced ``metersync`` is idempotent and offers download by configuration; what the server
    advertised (if it did) still refines the body limit and the site filter.
    """
    if name == "metertrack":
        return replace(METERTRACK, source="configured")
    if name != "metersync":
        raise ConfigError(f"client_profile {name!r} cannot be forced (metersync or metertrack)")
    base = replace(METERSYNC, source="configured")
    if advertised is not None and advertised.name == "metersync":
        base = replace(
            base,
            max_body_bytes=advertised.max_body_bytes,
            site_filter=advertised.site_filter,
        )
    return base


def with_body_limit(profile: ClientProfile, max_body_bytes: int | None) -> ClientProfile:
    """``profile`` with the operator's ``max_body_bytes`` override applied (``None``: unchanged)."""
    if max_body_bytes is None:
        return profile
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise ConfigError(f"max_body_bytes must be an integer, got {max_body_bytes!r}")
    if max_body_bytes < MIN_BODY_BYTES:
        raise ConfigError(f"max_body_bytes must be >= {MIN_BODY_BYTES}, got {max_body_bytes}")
    return replace(profile, max_body_bytes=max_body_bytes)

"""The admin API's guard, shared by every server profile (issue 11, item 3).

The admin API can delete everything (``POST /admin/reset``), so it is never open: a server
started without a token makes one (:func:`new_admin_token`) and says it; an app built without
any token refuses every admin call.
"""

from __future__ import annotations

import hmac
import secrets

ADMIN_TOKEN_HEADER = "X-Admin-Token"


def new_admin_token() -> str:
    """A fresh random admin token (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(24)


def admin_refusal(token: str | None, supplied: str | None) -> str | None:
    """Why an admin request carrying ``supplied`` is refused, or None when it may proceed."""
    if token is None:
        return "the admin API is disabled: this server has no admin token"
    if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
        return f"missing or wrong {ADMIN_TOKEN_HEADER}"
    return None

"""What keeps the dashboard safe: basic auth, the ``authorize`` hook, CSRF tokens, headers.

- Basic auth (``USER:PASS``) is compared in constant time; without it every request gets 401.
- ``authorize(environ) -> bool``: the mounting project's own check; False gives 403.
- Every action is a POST that carries the session's CSRF token (a random value kept in the
  dashboard's signed session cookie, sent back as the form field ``csrf_token``); a POST
  without it, or with another, gets 403. No GET changes anything.
- Read-only mode refuses every POST with 403 (the pages show no buttons).
- Every response says: no framing, no inline script or style, no referrer to other sites.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from typing import Any, Callable, Mapping

#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf_token"
#: The key of the token in the dashboard's session.
CSRF_KEY = "csrf"

HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "Cache-Control": "no-store",
}


def parse_credentials(value: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` as a pair, None for None or ""; ValueError without a colon or a user."""
    if not value:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user:
        raise ValueError("basic auth must be USER:PASS")
    return user, password


class BasicAuth:
    """Checks an ``Authorization: Basic`` header against one user and password."""

    realm = "jobrunner"

    def __init__(self, user: str, password: str):
        self._expected = f"{user}:{password}".encode()

    def allows(self, header: str | None) -> bool:
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        # The whole USER:PASS in one constant-time comparison: no early exit on the user.
        return hmac.compare_digest(given, self._expected)


def refusal(environ: Mapping[str, Any], basic: BasicAuth | None,
            authorize: Callable[[Mapping[str, Any]], bool] | None) -> int | None:
    """401 or 403 when the request may not see the dashboard, else None."""
    if basic is not None and not basic.allows(environ.get("HTTP_AUTHORIZATION")):
        return 401
    if authorize is not None and not authorize(environ):
        return 403
    return None


def csrf_token(session: Any) -> str:
    """The session's token, made on first use."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_valid(session: Any, sent: Any) -> bool:
    """Whether a POST's token is the session's own."""
    expected = session.get(CSRF_KEY)
    if not isinstance(expected, str) or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def add_headers(headers: Any) -> None:
    for name, value in HEADERS.items():
        headers.setdefault(name, value)

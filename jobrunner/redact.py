"""Connection URLs and libpq DSNs as messages may show them: every password masked."""

from __future__ import annotations

import re
from urllib.parse import unquote

#: What a masked secret is shown as.
MASK = "***"

#: Names of query parameters and DSN keywords whose values are secrets, compared in lower
#: case with ``-`` as ``_``; any name containing one of ``_SECRET_PARTS`` is one too.
_SECRET_NAMES = frozenset({"password", "pass", "passwd", "pwd", "auth", "sslpassword"})
_SECRET_PARTS = ("password", "secret", "token", "apikey", "api_key", "credential")

#: ``scheme://`` at the start: a URL (redis://, rediss://, unix://, postgresql://, ...).
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
#: One ``keyword = value`` of a libpq DSN: the value is single-quoted (``\'`` and ``\\``
#: escaped) or runs to the next blank; libpq allows blanks around ``=``.
_PAIR = re.compile(r"(\s*)([A-Za-z_][A-Za-z0-9_.-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|(?:[^\s\\]|\\.)*)",
                   re.DOTALL)
#: Last resort for text that does not parse: a secret keyword's value up to the next blank.
_LOOSE = re.compile(r"([A-Za-z_]*(?:pass|pwd|secret|token)[A-Za-z_]*\s*=\s*)('[^']*'?|\S+)",
                    re.IGNORECASE)


def is_secret(name: str) -> bool:
    """True when a query parameter or DSN keyword called ``name`` holds a secret."""
    key = unquote(name).strip().lower().replace("-", "_")
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def redact(target: str | None) -> str:
    """``target`` (a URL or a libpq ``key=value`` DSN) with each password replaced by ``***``.

    Masked: the password of a URL's userinfo (``user:pw@`` -> ``user:***@``; a userinfo
    without ``:`` is a user name and stays, except in a Redis URL, where it is often a
    password written without the ``:``), secret query parameters (``?password=``,
    ``sslpassword``, ... see ``is_secret``), and the values of secret DSN keywords, quoted or
    not. A connection string nested in a DSN value (libpq's ``dbname=postgresql://...``) is
    masked too. ``None`` gives ``""``.
    """
    if not target:
        return ""
    if _URL.match(target):
        return _redact_url(target)
    if "=" in target:
        return _redact_dsn(target)
    return target


def _redact_url(url):
    scheme, sep, rest = url.partition("://")
    # The authority ends where the query or fragment starts; a password may hold a raw "/",
    # so the userinfo ends at the last "@" before that point.
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
        elif scheme.strip().lower().startswith("redis"):
            rest = MASK + rest[at:]
    query_at = rest.find("?")
    if query_at < 0:
        return scheme + sep + rest
    query, hash_sign, fragment = rest[query_at + 1:].partition("#")
    return (scheme + sep + rest[:query_at + 1] + _redact_query(query) + hash_sign + fragment)


def _redact_query(query):
    def one(item):
        name, equals, value = item.partition("=")
        return f"{name}={MASK}" if equals and is_secret(name) else item
    return "&".join(";".join(one(p) for p in part.split(";")) for part in query.split("&"))


def _redact_dsn(dsn):
    out, at, secret = [], 0, False
    while at < len(dsn):
        match = _PAIR.match(dsn, at)
        if match is None or match.end() == at:
            if not dsn[at:].strip():
                out.append(dsn[at:])
            elif secret:
                # Words after a secret that are no ``key=value`` were most likely part of it
                # (an unquoted password with a blank): hide them too.
                out.append(" " + MASK)
            else:
                # Not libpq's syntax from here on: mask what looks like a secret, keep the rest.
                out.append(_LOOSE.sub(lambda m: m.group(1) + MASK, dsn[at:]))
            break
        blank, name, equals, value = match.groups()
        secret = is_secret(name)
        if secret:
            value = f"'{MASK}'" if value.startswith("'") else MASK
        elif "=" in value or "://" in value:
            quoted = len(value) > 1 and value[0] == value[-1] == "'"
            inner = redact(value[1:-1] if quoted else value)
            value = f"'{inner}'" if quoted else inner
        out.append(blank + name + equals + value)
        at = match.end()
    return "".join(out)

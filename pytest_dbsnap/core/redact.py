"""Passwords never reach logs, reports, metadata or error messages: everything shown goes through here."""

from __future__ import annotations

import re
from urllib.parse import quote

# postgresql://user:secret@host -> postgresql://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")
# password=secret in keyword DSNs, PGPASSWORD=secret in environments
_KEYWORD_PASSWORD = re.compile(
    # a quoted value may contain \' (libpq's escape), so the quoted form runs to the first unescaped quote
    r"(?P<head>\b(?:password|PGPASSWORD|POSTGRES_PASSWORD)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)
# Secrets known to this process (the local cluster's password, a DSN's password): hidden wherever they appear,
# also outside a DSN (an app printing its settings, a password put into a command by a placeholder).
_SECRETS: set[str] = set()
_MIN_SECRET = 6  # shorter values would blank out ordinary words; they are weak anyway
# Development defaults (the compose file's "postgres") are words in every message, not secrets to hide.
_NOT_SECRET = {"postgres", "password", "secret", "changeme"}


def add_secret(value: str | None) -> None:
    """Remember a secret so that redact() hides it verbatim and URL-quoted."""
    if value and len(value) >= _MIN_SECRET and value.lower() not in _NOT_SECRET:
        _SECRETS.update({value, quote(value, safe="")})


def redact(text: str) -> str:
    """Replace every password in a DSN, URL or key=value string, and every known secret, with ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    text = _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text

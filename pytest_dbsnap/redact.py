"""Passwords never reach logs, reports, metadata or error messages: everything shown goes through here."""

from __future__ import annotations

import re

# postgresql://user:secret@host -> postgresql://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")
# password=secret in keyword DSNs, PGPASSWORD=secret in environments
_KEYWORD_PASSWORD = re.compile(
    # a quoted value may contain \' (libpq's escape), so the quoted form runs to the first unescaped quote
    r"(?P<head>\b(?:password|PGPASSWORD|POSTGRES_PASSWORD)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)


# Passwords a placeholder ({pg_password}) put into a command line, where no pattern above would find them.
_SECRETS: set[str] = set()


def remember_secret(value: str) -> None:
    """From now on, redact() hides `value` wherever it stands as a word of its own."""
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Replace every password in a DSN, URL or key=value string, and every remembered secret, with ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    text = _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text

"""Environment settings shared by every entry point, so each fails the same clear way (exit 2)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

# The servers only ever listen on loopback: they exist for tests and local runs.
HOST = "127.0.0.1"


class ConfigError(Exception):
    """A missing or malformed setting: entry points turn it into exit code 2."""


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def database_url(environ: Mapping[str, str] | None = None) -> str:
    url = _env(environ).get("DATABASE_URL", "").strip()
    if not url:
        raise ConfigError("DATABASE_URL is not set (expected e.g. postgresql://postgres@127.0.0.1:5432/app)")
    return url


def port(environ: Mapping[str, str] | None = None) -> int:
    raw = _env(environ).get("PORT", "").strip()
    if not raw:
        raise ConfigError("PORT is not set (expected a TCP port number, e.g. PORT=8000)")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"PORT must be an integer between 1 and 65535, got {raw!r}")
    return int(raw)


def backend_url(environ: Mapping[str, str] | None = None) -> str:
    raw = _env(environ).get("BACKEND_URL", "").strip()
    if not raw:
        raise ConfigError("BACKEND_URL is not set (expected e.g. http://127.0.0.1:8000)")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"BACKEND_URL must be an http(s) URL without query or fragment, got {raw!r}")
    return raw.rstrip("/")

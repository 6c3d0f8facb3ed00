"""Django settings for the app's own processes in a dbsnap session (migrate, the seed, runserver): the project's
settings, named by DBSNAP_DJANGO_PROJECT_SETTINGS, with DATABASES["default"] pointed at DATABASE_URL, so that a
project made by `django-admin startproject` runs on the session's PostgreSQL with settings.py unchanged.

It runs inside the app, so it imports only the standard library and the project's settings module.
"""

from __future__ import annotations

import importlib
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

# Lower case: Django takes every upper-case name of a settings module for a setting.
_project_variable = "DBSNAP_DJANGO_PROJECT_SETTINGS"  # pytest_dbsnap.config.django_env sets it
_postgres_engine = "django.db.backends.postgresql"
_url_keys = {"host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD", "dbname": "NAME"}


def database_entry(url: str, base: dict[str, Any]) -> dict[str, Any]:
    """The DATABASES entry for a libpq URL, keeping what the project's own entry says beyond the connection
    (ATOMIC_REQUESTS, CONN_MAX_AGE, a PostGIS engine and its OPTIONS). The entry of another engine (SQLite) keeps
    neither its engine nor its OPTIONS, which PostgreSQL would not understand; URL parameters Django has no key
    for (sslmode...) go to OPTIONS, which Django hands to the driver."""
    parts = urlsplit(url)
    engine = str(base.get("ENGINE") or "")
    postgres = "postgres" in engine or "postgis" in engine  # a PostGIS or wrapped backend stays as it is
    entry = {key: value for key, value in base.items() if postgres or key not in ("OPTIONS", "TEST")}
    entry["ENGINE"] = engine if postgres else _postgres_engine
    entry.update(
        NAME=unquote(parts.path.lstrip("/")),
        USER=unquote(parts.username or ""),
        PASSWORD=unquote(parts.password or ""),
        HOST=parts.hostname or "",
        PORT=str(parts.port or ""),
    )
    options = dict(base.get("OPTIONS") or {}) if postgres else {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _url_keys:
            entry[_url_keys[key]] = value  # a socket folder comes as ?host=/path
        else:
            options[key] = value
    entry["OPTIONS"] = options
    return entry


def _load() -> dict[str, Any]:
    """The project's settings (Django reads only upper-case names) with the default database replaced."""
    name = os.environ.get(_project_variable)
    if not name:
        raise RuntimeError(
            f"pytest_dbsnap.django_settings wraps a project's settings module, and {_project_variable} "
            f"does not name one. Set it to your settings module (e.g. mysite.settings), or set "
            f"DJANGO_SETTINGS_MODULE to your own settings instead."
        )
    project = importlib.import_module(name)
    values = {key: getattr(project, key) for key in dir(project) if key.isupper()}
    url = os.environ.get("DATABASE_URL")
    if url:
        databases = dict(values.get("DATABASES") or {})  # a copy: the project's module keeps its own
        databases["default"] = database_entry(url, dict(databases.get("default") or {}))
        values["DATABASES"] = databases
    return values


globals().update(_load())

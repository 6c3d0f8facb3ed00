"""pytest-django on the restored database: registered only when pytest-django is active, Django settings are
configured and the `django` setting is on.

Django's default connection is pointed at the session's app database (each xdist worker's own) instead of an
empty test database that pytest-django would create; `django_db` tests then run in a transaction rolled back
after each test, so they see the seeded rows and leave no trace. A transactional test (`transaction=True`,
`transactional_db`, `live_server`) ends by emptying every table, so it gets a private clone of the dump's
template instead, dropped after it. Registered from pytest_configure, after pytest-django, so that these
fixtures override its `django_db_setup` (a project's conftest.py still overrides both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_dbsnap.config.settings import Settings
    from pytest_dbsnap.postgres.base import Server
    from pytest_dbsnap.stack.session import DatabaseOutcome

PLUGIN_NAME = "dbsnap.django"
_CONNECTION_KEYS = {"host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD"}


def maybe_register(config: pytest.Config, settings: Settings) -> bool:
    """Register this module's fixtures when pytest-django is active with configured settings (and not off)."""
    if not settings.django or not config.pluginmanager.hasplugin("django"):
        return False
    from pytest_django.lazy_django import django_settings_is_configured

    if not django_settings_is_configured():
        return False
    import sys

    if not config.pluginmanager.is_registered(sys.modules[__name__]):
        config.pluginmanager.register(sys.modules[__name__], PLUGIN_NAME)
    return True


def database_settings(server: Server, database: str, base: dict[str, Any]) -> dict[str, Any]:
    """Django's DATABASES entry for `database` on `server`: the project's own entry (its OPTIONS, ATOMIC_REQUESTS,
    TEST...) with the engine and connection replaced; libpq keywords Django has no key for go to OPTIONS."""
    entry: dict[str, Any] = {**base, "ENGINE": "django.db.backends.postgresql", "NAME": database}
    options = dict(base.get("OPTIONS") or {}) if base.get("ENGINE") == entry["ENGINE"] else {}
    for key in ("HOST", "PORT", "USER", "PASSWORD"):
        entry[key] = ""
    for key, value in server.params.items():
        if key in _CONNECTION_KEYS:
            entry[_CONNECTION_KEYS[key]] = value
        elif key != "dbname":
            options[key] = value
    entry["OPTIONS"] = options
    return entry


def point_default_at(server: Server, database: str) -> None:
    """Make Django's default connection (in every thread) use `database`: the settings are replaced and the
    handler rebuilt, since a cached connection of another engine cannot just be given a new name."""
    from django.conf import settings as django_settings
    from django.db import connections

    connections.close_all()
    base = dict(django_settings.DATABASES.get("default", {}))
    django_settings.DATABASES["default"] = database_settings(server, database, base)
    connections._settings = None  # configure_settings reads DATABASES again
    connections.__dict__.pop("settings", None)  # the cached_property
    with contextlib.suppress(AttributeError):  # not connected in this thread yet
        del connections["default"]


def rename_default(database: str) -> None:
    """Point the default connection at another database of the same server. The settings dict is shared by the
    connection objects of every thread (the live server's too), so this reaches them all."""
    from django.db import connections

    connections.close_all()
    connections["default"].settings_dict["NAME"] = database


def _is_transactional(request: pytest.FixtureRequest) -> bool:
    """What pytest-django decides: TransactionTestCase (which empties every table afterwards) or TestCase."""
    from pytest_django.fixtures import validate_django_db

    marker = request.node.get_closest_marker("django_db")
    transactional = reset = False
    if marker is not None:
        transactional, reset, *_rest = validate_django_db(marker)
    return bool(
        transactional
        or reset
        or "transactional_db" in request.fixturenames
        or "live_server" in request.fixturenames
        or "django_db_reset_sequences" in request.fixturenames
    )


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    pg_server: Server,
    dbsnap_database: DatabaseOutcome,
) -> Iterator[None]:
    """pytest-dbsnap's database instead of pytest-django's test database (none is created)."""
    from pytest_dbsnap.plugin.fixtures import app_database

    name = app_database(request.config, dbsnap_database)
    with django_db_blocker.unblock():
        point_default_at(pg_server, name)
    yield
    with django_db_blocker.unblock():
        from django.db import connections

        connections.close_all()


@pytest.fixture
def _dbsnap_django_private(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    django_db_blocker: Any,
    pg_server: Server,
    dbsnap_database: DatabaseOutcome,
) -> Iterator[str | None]:
    """For a transactional test: a private clone of the dump's template as Django's default database, dropped
    after the test (after pytest-django's flush), so the shared database keeps its rows."""
    if not _is_transactional(request):
        yield None
        return
    from pytest_dbsnap.plugin.fixtures import clone_for_test

    with contextlib.ExitStack() as stack:
        name = clone_for_test(
            stack,
            pg_server,
            dbsnap_database,
            need="a transactional Django test gets a private clone of the restored dump's template",
            fix="Run without --skip-dump-restore, or set django = false in [tool.dbsnap] to let "
            "pytest-django create its own test database.",
        )
        with django_db_blocker.unblock():
            rename_default(name)
        try:
            yield name
        finally:
            with django_db_blocker.unblock():
                rename_default(dbsnap_database.database)


@pytest.fixture
def _django_db_helper(_dbsnap_django_private: str | None, _django_db_helper: None) -> None:
    """pytest-django's own helper (requested by the same name), entered after the private clone is in place."""

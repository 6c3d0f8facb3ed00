"""Did the migrate command reach the database it was given? One that exits 0 and leaves that database with no
table, view or sequence most likely migrated another one (a project's own settings, a SQLite file): said as a
warning, so the session does not fail later with an unrelated error or pass on an empty database."""

from __future__ import annotations

from collections.abc import Iterable

from pytest_dbsnap.postgres.databases import Connection

# Tables (plain, partitioned, foreign), views, materialized views and sequences outside the system schemas.
_USER_RELATIONS = """
SELECT EXISTS (
    SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
)
"""


def holds_nothing(conn: Connection) -> bool:
    """True when the connected database has no table, view or sequence of its own."""
    row = conn.execute(_USER_RELATIONS).fetchone()
    return not (row and row[0])


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def left_empty_warning(command: str, where: str, env_table: Iterable[str], django_settings: str | None) -> str:
    """The warning for a migrate `command` that left `where` empty, naming every variable it was given: DATABASE_URL,
    the [tool.dbsnap.env] names and, for a Django project, the settings module that wraps its own."""
    given = "DATABASE_URL"
    table = sorted(set(env_table) - {"DATABASE_URL"})
    if table:
        given += f" and, from [tool.dbsnap.env], {_listed(table)}"
    if django_settings is not None:
        given += (
            f", with DJANGO_SETTINGS_MODULE=pytest_dbsnap.django_settings ({django_settings} with "
            f"DATABASES['default'] taken from DATABASE_URL)"
        )
    return (
        f"the migrate command ({command}) exited 0 but left {where} with no table, view or sequence. It was given "
        f"{given}: the app probably reads its database from somewhere else (its own settings, another variable, "
        f"a SQLite file) and migrated that one. Make the app read one of these variables, or add the one it "
        f'reads to [tool.dbsnap.env] (e.g. MY_DB_URL = "{{database_url}}").'
    )

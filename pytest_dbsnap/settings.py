"""One frozen Settings object per session, built once from every source with a clear error on bad values.

Each setting is declared once in OPTIONS; that one row yields its pyproject key (`[tool.dbsnap] key`), its
pytest ini key (`dbsnap_key`), its environment variable (`DBSNAP_KEY`) and, where it has one, its command-line
flag. Precedence, lowest to highest: pyproject < ini < environment < command line, decided with `is None`
so that a false or empty value given on purpose is kept.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pytest_dbsnap.errors import ConfigError
from pytest_dbsnap.redact import redact

PROVIDERS = ("auto", "local", "docker", "external")
# auto: render in Chromium when one is found, skip with the reason otherwise; required: fail without one.
BROWSER_MODES = ("auto", "required", "off")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# --- value parsers: each takes a raw value (a TOML value or a string) and returns the typed value -------------


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false (also accepted: 1/0, yes/no, on/off)")


def parse_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def parse_name(value: object) -> str:
    """Environment and database names end up in file and database names, so keep them plain."""
    text = parse_str(value).strip()
    if not _NAME.match(text):
        raise ValueError("expected 1-63 letters, digits, '_', '-' or '.', not starting with '-' or '.'")
    return text


def parse_path(value: object) -> Path:
    text = parse_str(value).strip()
    if not text:
        raise ValueError("expected a path, got an empty string")
    return Path(os.path.expanduser(text))


def parse_positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number of 1 or more")
    try:
        number = int(value) if isinstance(value, int | str) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise ValueError("expected a whole number of 1 or more")
    return number


def parse_positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds above 0")
    try:
        number = float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number <= 0:  # "nan" and "inf" parse as floats
        raise ValueError("expected a number of seconds above 0")
    return number


def parse_command(value: object) -> tuple[str, ...]:
    """A command is a list of arguments, or one string split the way a POSIX shell would split it."""
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        parts = list(value)
    else:
        raise ValueError('expected a command as a string ("python -m app.seed") or a list of strings')
    if not parts:
        raise ValueError("expected a command, got an empty one")
    return tuple(parts)


def parse_commands(value: object) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, str):
        return tuple(parse_command(line) for line in value.splitlines() if line.strip())
    if isinstance(value, list):
        return tuple(parse_command(item) for item in value)
    raise ValueError("expected a list of commands")


def parse_str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(stripped for part in re.split(r"[\n,]", value) if (stripped := part.strip()))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError("expected a list of strings (or one string, comma or newline separated)")


def parse_provider(value: object) -> str:
    text = parse_str(value).strip().lower()
    if text not in PROVIDERS:
        raise ValueError(f"expected one of {', '.join(PROVIDERS)}")
    return text


def parse_browser_mode(value: object) -> str:
    text = parse_str(value).strip().lower()
    if text not in BROWSER_MODES:
        raise ValueError(f"expected one of {', '.join(BROWSER_MODES)}")
    return text


def parse_css_selector(value: object) -> str:
    text = parse_str(value).strip()
    if not text:
        raise ValueError('expected a CSS selector, such as "#node-list li[data-node-id]"')
    return text


def parse_port(value: object) -> int | None:
    """'auto' (or 0) picks a free port at start; otherwise a fixed port."""
    if isinstance(value, bool):  # False == 0 in Python, so a bool would otherwise pass as "auto"
        raise ValueError('expected "auto" or a port number from 1 to 65535')
    if value in ("auto", 0, "0"):
        return None
    try:
        port = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else -1
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ValueError('expected "auto" or a port number from 1 to 65535')
    return port


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def split_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValueError('expected a URL like "s3://bucket/prefix"')
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError('expected a bucket name after s3:// (letters, digits, ".", "-", "_"): s3://bucket/prefix')
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError("expected a prefix of plain folder names (no empty, '.' or '..' parts)")
    return bucket, prefix


def parse_s3_url(value: object) -> str:
    text = parse_str(value).strip()
    split_s3_url(text)
    return text


def parse_http_url(value: object) -> str:
    text = parse_str(value).strip()
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError('expected an http:// or https:// URL, such as "http://127.0.0.1:9000"')
    return text.rstrip("/")


def parse_env_table(value: object) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {key: str(item) for key, item in value.items()}
    raise ValueError("expected a table of NAME = value")


# --- the table of settings ----------------------------------------------------------------------------------


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
        "libpq DSN or URL of an existing server (external provider); DATABASE_URL is read too",
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
        "allow_remote",
        parse_bool,
        False,
        "allow a DSN whose host is not this machine (restoring drops and replaces databases there)",
        flag="--dbsnap-allow-remote",
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
        "push_dump",
        parse_bool,
        False,
        "push the dump this session generated or used to the remote store",
        flag="--push-dump",
        flag_is_switch=True,
    ),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


@dataclass(frozen=True)
class ServiceSettings:
    """How to start one app service ([tool.dbsnap.backend] or [tool.dbsnap.frontend])."""

    name: str
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # None: pick a free port at start
    health_url: str = "http://127.0.0.1:{port}/"
    expected_status: int = 200
    start_timeout: float = 30.0
    prepare: tuple[tuple[str, ...], ...] = ()
    requires: tuple[str, ...] = ()  # programs the environment phase checks for (node, npm...)
    # The frontend's browser checks (frontend table only): whether to run them, which Chromium, what to wait for.
    browser: str = "auto"
    browser_path: Path | None = None  # None: chromium, chromium-browser, google-chrome... on PATH
    render_selector: str | None = None  # None: the page's load event is enough


_SERVICE_KEYS: dict[str, Callable[[object], Any]] = {
    "command": parse_command,
    "cwd": parse_path,
    "env": parse_env_table,
    "port": parse_port,
    "health_url": parse_str,
    "expected_status": parse_positive_int,
    "start_timeout": parse_positive_float,
    "prepare": parse_commands,
    "requires": parse_str_list,
    "browser": parse_browser_mode,
    "browser_path": parse_path,
    "render_selector": parse_css_selector,
}
_FRONTEND_ONLY_KEYS = ("browser", "browser_path", "render_selector")


@dataclass(frozen=True)
class Settings:
    """Everything a session or a CLI call needs to know, resolved once."""

    project_root: Path
    provider: str = "auto"
    dsn: str | None = None
    database: str = "app"
    env: str = "dev"
    dumps_dir: Path = Path("seeds/dumps")
    pg_bindir: Path | None = None
    cache_dir: Path | None = None
    compose_file: Path = Path("docker-compose.dev.yml")
    compose_service: str = "postgres"
    compose_user: str = "postgres"
    compose_password: str = "postgres"  # noqa: S105 - the compose file's development default, not a secret
    allow_remote: bool = False
    migrate_command: tuple[str, ...] | None = None
    seed_command: tuple[str, ...] | None = None
    schema_version_query: str | None = None
    fingerprint_inputs: tuple[str, ...] = ()
    verify: bool = True
    restore_jobs: int | None = None
    skip_dump_restore: bool = False
    regenerate_dump: bool = False
    skip_frontend: bool = False
    logs_dir: Path = Path("reports/logs")
    required_tools: tuple[str, ...] = ()
    warm_cluster: bool = True
    cluster_snapshot: bool = True
    start_timeout: float = 30.0
    remote: str | None = None
    remote_endpoint_url: str | None = None
    push_dump: bool = False
    backend: ServiceSettings | None = None
    frontend: ServiceSettings | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def jobs(self) -> int:
        return self.restore_jobs or os.cpu_count() or 1

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "pytest-dbsnap"

    @property
    def warm_key(self) -> str | None:
        """Parked clusters are per project, so two projects never drop each other's templates."""
        if not self.warm_cluster:
            return None
        return hashlib.sha256(str(self.project_root.resolve()).encode()).hexdigest()[:10]

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml from `start` upwards, as the CLI finds its project."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_pyproject_table(pyproject: Path | None) -> dict[str, Any]:
    if pyproject is None or not pyproject.is_file():
        return {}
    try:
        with pyproject.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML ({exc}); fix the file and run again.") from exc
    tool = document.get("tool", {})
    table = tool.get("dbsnap", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.dbsnap] in {pyproject} must be a table.")
    return table


def _bad_value(key: str, source: str, value: object, reason: str) -> ConfigError:
    # Other values (a service's env table, a command with a URL in it) may hold a password too.
    shown = "***" if key in {"dsn", "compose_password"} else redact(repr(value))
    return ConfigError(f"Setting {key!r} from {source} has the value {shown}, which is not accepted: {reason}.")


def _parse_service(name: str, table: object, project_root: Path, pyproject: Path | None) -> ServiceSettings:
    where = f"[tool.dbsnap.{name}] in {pyproject}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table with at least a command.")
    unknown = sorted(set(table) - set(_SERVICE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(_SERVICE_KEYS)}."
        )
    if "command" not in table:
        raise ConfigError(f'{where} has no command; add command = "..." (the program that serves the {name}).')
    misplaced = [key for key in _FRONTEND_ONLY_KEYS if key in table and name != "frontend"]
    if misplaced:
        raise ConfigError(
            f"{where} has {', '.join(misplaced)}, which only [tool.dbsnap.frontend] takes (the "
            f"browser checks render the frontend); move them there."
        )
    values: dict[str, Any] = {}
    for key, raw in table.items():
        try:
            values[key] = _SERVICE_KEYS[key](raw)
        except ValueError as exc:
            raise _bad_value(f"{name}.{key}", where, raw, str(exc)) from None
    cwd = values.pop("cwd", Path("."))
    # "chromium" is looked up on PATH; a path with a folder in it is relative to the project.
    browser_path = values.get("browser_path")
    if browser_path is not None and len(browser_path.parts) > 1:
        values["browser_path"] = project_root / browser_path
    return ServiceSettings(name=name, cwd=(project_root / cwd).resolve(), **values)


def load_settings(
    *,
    project_root: Path,
    pyproject: Path | None = None,
    ini: Mapping[str, object | None] | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, object | None] | None = None,
    cli_flags: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources (pyproject < ini < environment < command line) into one validated Settings.

    `ini` and `cli` are keyed by setting key; None means "not given there".
    """
    table = read_pyproject_table(pyproject)
    services = {name: table.pop(name) for name in ("backend", "frontend") if name in table}
    unknown = sorted(set(table) - set(OPTIONS_BY_KEY))
    if unknown:
        raise ConfigError(
            f"[tool.dbsnap] in {pyproject} has unknown key(s) {', '.join(unknown)}; accepted keys: "
            f"{', '.join(OPTIONS_BY_KEY)}, backend, frontend."
        )
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, object | None]]] = [
        (f"[tool.dbsnap] in {pyproject}", table),
        ("the pytest ini file", ini or {}),
        # An empty variable counts as unset, as shells make it easy to set one to nothing by accident.
        ("the environment", {o.key: environ.get(o.env_name) or None for o in OPTIONS}),
        ("the command line", cli or {}),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        for source, layer in layers:
            raw = layer.get(option.key)
            if raw is None:
                continue
            if source == "the environment":
                where = f"the environment variable {option.env_name}"
            elif source == "the command line" and (flag := (cli_flags or {}).get(option.key, option.flag)):
                where = f"the command-line flag {flag}"
            elif source == "the pytest ini file":
                where = f"the ini option {option.ini_name}"
            else:
                where = source
            try:
                values[option.key] = option.parse(raw)
            except ValueError as exc:
                raise _bad_value(option.key, where, raw, str(exc)) from None
            sources[option.key] = source
    if "dsn" not in values and environ.get("DATABASE_URL"):
        values["dsn"] = environ["DATABASE_URL"]
        sources["dsn"] = "the environment variable DATABASE_URL"
    # Paths in the configuration are relative to the project, not to wherever pytest was started.
    for key in ("dumps_dir", "pg_bindir", "cache_dir", "compose_file", "logs_dir"):
        if isinstance(values.get(key), Path):
            values[key] = (project_root / values[key]).resolve()
    defaults: dict[str, Any] = {f.name: f.default for f in fields(Settings)}
    for key in ("dumps_dir", "compose_file", "logs_dir"):
        values.setdefault(key, (project_root / defaults[key]).resolve())
    parsed_services: dict[str, Any] = {
        name: _parse_service(name, raw, project_root, pyproject) for name, raw in services.items()
    }
    return Settings(project_root=project_root, sources=sources, **values, **parsed_services)


def cli_values(namespace: object, keys: Sequence[str] | None = None) -> dict[str, object | None]:
    """The command-line layer from an argparse namespace: flags the user did not give stay None."""
    result: dict[str, object | None] = {}
    for option in OPTIONS:
        if keys is not None and option.key not in keys:
            continue
        value = getattr(namespace, option.dest, None)
        result[option.key] = value
    return result

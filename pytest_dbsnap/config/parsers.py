"""Value parsers for settings: each takes a raw value (a TOML value or a string from an ini file, the
environment or a flag) and returns the typed value, or raises a ConfigError that says what was expected."""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pytest_dbsnap.config.placeholders import Command

PROVIDERS = ("auto", "local", "docker", "external")


# auto: render in Chromium when one is found, skip with the reason otherwise; required: fail without one.
BROWSER_MODES = ("auto", "required", "off")


# Where the PostgreSQL programs come from (pg_bindir wins over all): auto takes the server wheel when it is
# installed (the `server` extra), else the system's; postgres/binaries.py knows the wheel.
POSTGRES_BINARIES = ("auto", "wheel", "system")


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


_TRUE = {"1", "true", "yes", "on"}


_FALSE = {"0", "false", "no", "off", ""}


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


def parse_count(value: object) -> int:
    """A whole number of 0 or more (0 turns the thing off)."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number of 0 or more")
    try:
        number = int(value) if isinstance(value, int | str) else None
    except ValueError:
        number = None
    if number is None or number < 0:
        raise ValueError("expected a whole number of 0 or more")
    return number


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30, "TIB": 2**40}
_BYTES = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]I?B|B)?$", re.IGNORECASE)
_FACTOR = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*x$", re.IGNORECASE)


@dataclass(frozen=True)
class DiskBudget:
    """The most disk the dump's databases on a server may take: a size, or a factor of the database's size
    (the template's). Plain values, so the server layer can use it without the settings."""

    size_bytes: int | None = None
    factor: float | None = None

    def limit(self, database_bytes: int) -> int:
        if self.size_bytes is not None:
            return self.size_bytes
        assert self.factor is not None
        return int(self.factor * database_bytes)

    def __str__(self) -> str:
        if self.size_bytes is not None:
            return f"{self.size_bytes / 1e9:g} GB"
        return f"{self.factor:g}x the database"


def parse_disk_budget(value: object) -> DiskBudget:
    """'20GB', '500 MiB', '1000000' (bytes) or '2x' (a factor of the database's size, at least 1)."""
    text = str(value).strip() if isinstance(value, int | float | str) and not isinstance(value, bool) else ""
    factor = _FACTOR.match(text)
    if factor:
        number = float(factor["number"])
        if number < 1:
            raise ValueError("expected a factor of 1x or more (the template alone is 1x)")
        return DiskBudget(factor=number)
    size = _BYTES.match(text)
    if size:
        number = float(size["number"]) * _UNITS[(size["unit"] or "").upper()]
        if number >= 1:
            return DiskBudget(size_bytes=int(number))
    raise ValueError("expected a size such as 20GB or 500MB, or a factor of the database's size such as 2x")


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

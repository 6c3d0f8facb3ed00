"""Placeholders such as {database_url} or {port} in the commands, URLs and environment values of [tool.dbsnap],
filled late, where the values exist (the database being migrated, the port a service was given).

`{name}` with a known name is replaced; `{{` and `}}` are literal braces; a brace around anything that is not a
name (`{1: 2}`, a JSON body in a command) is kept as it is, so ordinary text rarely needs escaping.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from pytest_dbsnap.core.redact import add_secret
from pytest_dbsnap.errors import ConfigError

# Every name a placeholder may use, in the order the documentation lists them.
NAMES = (
    "database_url",
    "database",
    "pg_host",
    "pg_port",
    "pg_user",
    "pg_password",
    "port",
    "backend_url",
    "frontend_url",
)
DATABASE_NAMES = NAMES[:6]
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A command given as one string is split after filling; a value with these in it would be split or unquoted.
_SPLITS = re.compile(r"[\s'\"\\]")

Command = str | tuple[str, ...]


def fill(text: str, values: Mapping[str, str], *, key: str) -> str:
    """`text` with every {name} replaced by values[name]; a name not in `values` is a ConfigError naming the
    setting (`key`), the name and the names known there. A password filled in is remembered, so that
    redact() hides it wherever the text is shown."""

    def replace(match: re.Match[str]) -> str:
        token = match[0]
        if token in ("{{", "}}"):
            return token[0]
        name = match[1]
        if name not in values:
            elsewhere = " (it has no value there)" if name in NAMES else ""
            raise ConfigError(
                f"Setting {key!r} uses the placeholder {{{name}}}, which is not known there{elsewhere}. Known "
                f"placeholders in {key}: {', '.join('{' + known + '}' for known in values) or 'none'}. Write {{{{ "
                f"and }}}} for literal braces."
            )
        if name == "pg_password":
            add_secret(values[name])
        return values[name]

    return _TOKEN.sub(replace, text)


def command_argv(command: Command, values: Mapping[str, str], *, key: str) -> list[str]:
    """The arguments of a configured command with its placeholders filled.

    A list is filled argument by argument and never split. A string is filled first and then split the way a
    POSIX shell would (no shell runs); a filled value that would change that split (a space, a quote, a
    backslash) is refused with the fix, the list form.
    """
    if isinstance(command, tuple | list):
        return [fill(part, values, key=key) for part in command]
    for name in names_in(command):
        if name in values and _SPLITS.search(values[name]):
            raise ConfigError(
                f"Setting {key!r} is one string that is split into arguments after {{{name}}} is filled in, and "
                f"the value of {{{name}}} holds a space, a quote or a backslash, which would change that split. "
                f'Write {key} as a list of arguments instead (["prog", "--flag", "{{{name}}}"]): each argument '
                f"is filled on its own and never split."
            )
    return split_command(fill(command, values, key=key), key=key)


def names_in(*texts: str) -> set[str]:
    """The placeholder names the texts use."""
    return {match[1] for text in texts for match in _TOKEN.finditer(text) if match[1]}


def split_command(text: str, *, key: str) -> list[str]:
    try:
        parts = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"Setting {key!r} cannot be split into arguments ({exc}); check its quotes.") from None
    if not parts:
        raise ConfigError(f"Setting {key!r} is an empty command; give the program to run.")
    return parts


def check(text: str | Sequence[str], known: Sequence[str], *, key: str) -> None:
    """Stop at start on a placeholder that will not be known where `text` is used (a typo, {port} in the
    migrate command), instead of failing minutes later."""
    values = dict.fromkeys(known, "")
    for part in [text] if isinstance(text, str) else text:
        fill(part, values, key=key)


def database_values(params: Mapping[str, str], dsn: str, database: str) -> dict[str, str]:
    """The database placeholders for one database of a server (`params` are its connection keywords)."""
    return {
        "database_url": dsn,
        "database": database,
        "pg_host": params.get("host", ""),
        "pg_port": params.get("port", "5432"),
        "pg_user": params.get("user", ""),
        "pg_password": params.get("password", ""),
    }


def fill_env(env: Mapping[str, str], values: Mapping[str, str], *, key: str) -> dict[str, str]:
    """An environment table with its placeholders filled. A variable whose placeholder has no value for this
    program ({port} of [tool.dbsnap.env] while migrating) is left out of its environment: the names were
    checked at start, so what is missing here is only not there yet."""
    filled: dict[str, str] = {}
    for variable, value in env.items():
        if names_in(value) <= set(values):
            filled[variable] = fill(value, values, key=f"{key}.{variable}")
    return filled

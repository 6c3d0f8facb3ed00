"""Placeholders: every name filled, {{ }} literal, unknown names stopped at start naming key, name and known
names, strings filled before they are split, and a password put into a command hidden wherever it is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.placeholders import NAMES, command_argv, database_values, fill, fill_env
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import ConfigError

VALUES = {
    "database_url": "postgresql://app:s3cr3t-Pa55@127.0.0.1:5433/shop",
    "database": "shop",
    "pg_host": "127.0.0.1",
    "pg_port": "5433",
    "pg_user": "app",
    "pg_password": "s3cr3t-Pa55",
    "port": "8123",
    "backend_url": "http://127.0.0.1:8123",
    "frontend_url": "http://127.0.0.1:8124",
}


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_filled(name: str) -> None:
    assert fill(f"<{{{name}}}>", VALUES, key="k") == f"<{VALUES[name]}>"


def test_double_braces_are_literal_and_other_braces_are_kept() -> None:
    text = 'echo {{port}} {port} {"a": 1} {1:2} }}'
    assert fill(text, VALUES, key="k") == 'echo {port} 8123 {"a": 1} {1:2} }'


def test_an_unknown_name_names_the_key_the_name_and_the_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        fill("alembic -x url={databse_url} upgrade head", VALUES, key="migrate_command")
    message = str(info.value)
    assert "'migrate_command'" in message
    assert "{databse_url}" in message
    assert all(f"{{{name}}}" in message for name in NAMES)


def test_a_name_without_a_value_there_says_so() -> None:
    with pytest.raises(ConfigError, match=r"\{port\}, which is not known there \(it has no value there\)"):
        fill("{port}", {"database": "x"}, key="seed_command")


def test_a_string_command_is_filled_then_split_and_a_list_is_filled_per_argument() -> None:
    assert command_argv("sh -c 'migrate --db {database} --port {pg_port}'", VALUES, key="k") == [
        "sh",
        "-c",
        "migrate --db shop --port 5433",
    ]
    spaced = {**VALUES, "pg_password": "two words"}
    assert command_argv(("tool", "--password={pg_password}"), spaced, key="k") == ["tool", "--password=two words"]
    with pytest.raises(ConfigError, match=r"list of arguments instead"):
        command_argv("tool --password={pg_password}", spaced, key="seed_command")


def test_a_password_filled_into_a_command_is_redacted_where_it_is_shown() -> None:
    secret = "Zq9-only-in-this-test"  # noqa: S105 - a made-up value the test follows
    argv = command_argv("psql -W {pg_password}", {**VALUES, "pg_password": secret}, key="k")
    assert argv == ["psql", "-W", secret]
    assert redact(f"command failed: {' '.join(argv)}") == "command failed: psql -W ***"


def test_env_values_with_no_value_here_are_left_out() -> None:
    env = {"DB": "{database_url}", "APP_PORT": "{port}", "PLAIN": "x"}
    database_only = {k: VALUES[k] for k in ("database_url", "database")}
    assert fill_env(env, database_only, key="env") == {"DB": VALUES["database_url"], "PLAIN": "x"}


def test_database_values_come_from_the_server_params() -> None:
    params = {"host": "127.0.0.1", "port": "5433", "user": "app", "password": "pw"}
    values = database_values(params, "postgresql://app:pw@127.0.0.1:5433/shop", "shop")
    assert values == {
        "database_url": "postgresql://app:pw@127.0.0.1:5433/shop",
        "database": "shop",
        "pg_host": "127.0.0.1",
        "pg_port": "5433",
        "pg_user": "app",
        "pg_password": "pw",
    }


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('migrate_command = "alembic -x url={databse_url} upgrade head"', ["'migrate_command'", "{databse_url}"]),
        ('seed_command = ["seed", "--port={port}"]', ["'seed_command'", "{port}", "no value there"]),
        ('[tool.dbsnap.env]\nDB = "{database_ulr}"', ["'env.DB'", "{database_ulr}"]),
        ('[tool.dbsnap.backend]\ncommand = "serve {frontend_url}"', ["'backend.command'", "{frontend_url}"]),
        ('[tool.dbsnap.backend]\nurl = "{backend_url}/x"', ["'backend.url'", "{backend_url}"]),
        ('[tool.dbsnap.frontend]\nurl = "http://x/"\nhealth_url = "http://x:{port}/"', ["'frontend.health_url'"]),
        (
            '[tool.dbsnap.backend]\ncommand = "serve"\nenv = { A = "{prot}" }',
            ["'backend.env.A'", "{prot}", "{port}", "{backend_url}"],
        ),
    ],
    ids=["migrate", "seed-port", "env-table", "backend-frontend-url", "own-url", "url-only-port", "service-env"],
)
def test_placeholders_are_checked_when_the_settings_load(tmp_path: Path, toml: str, expected: list[str]) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[tool.dbsnap]\n{toml}\n" if not toml.startswith("[") else f"[tool.dbsnap]\n\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(project_root=tmp_path, pyproject=pyproject, environ={})
    for part in expected:
        assert part in str(info.value)


def test_the_env_table_and_the_dump_environment_name_live_side_by_side(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.dbsnap.env]\nDB_CONNECTION_STRING = "{database_url}"\nMODE = "smoke"\n')
    settings = load_settings(project_root=tmp_path, pyproject=pyproject, environ={"DBSNAP_ENV": "staging"})
    assert settings.app_env == {"DB_CONNECTION_STRING": "{database_url}", "MODE": "smoke"}
    assert settings.env == "staging"
    assert settings.has_table

"""[[tool.dbsnap.checks]] read at start: defaults, and one paragraph naming the entry's number and the key for
each kind of mistake; skip_checks names only built-ins that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.config.checks import BUILTIN_IDS, parse_checks
from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.errors import ConfigError


def test_defaults_per_kind() -> None:
    sql, request, frontend, command = parse_checks(
        [
            {"sql": "SELECT 1", "equals": 1},
            {"request": "post /api/x?y=1", "json": {"a": 1}},
            {"request": "GET /", "service": "frontend", "name": "home page"},
            {"command": ["node", "--version"]},
        ],
        "pyproject.toml",
    )
    assert (sql.phase, sql.order, sql.node_name, sql.what) == ("data", 5, "check_1", "SELECT 1")
    assert (request.phase, request.method, request.path, request.status) == ("backend", "POST", "/api/x?y=1", 200)
    assert (frontend.phase, frontend.node_name, frontend.what) == ("frontend", "home_page", "GET / on the frontend")
    assert (command.phase, command.order, command.command) == ("environment", 1, ("node", "--version"))


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ([{"sql": "SELECT 1"}], "number 1 in pyproject.toml: 'sql' needs exactly one of equals"),
        ([{"sql": "SELECT 1", "equals": 1, "at_least": 1}], "'sql' needs exactly one of equals"),
        ([{"request": "GET /", "equals": 1}], "number 1 in pyproject.toml: 'equals' belongs to a sql check"),
        ([{"command": "true", "status": 0}], "'status' belongs to a request check, and this is a command check"),
        ([{"name": "x"}], "has none of sql, request and command"),
        ([{"request": "GET /", "status": "200"}], "'status' has the value '200'; expected a whole number"),
        ([{"request": "GET /", "service": "db"}], "'service' has the value 'db'; expected \"backend\" or \"frontend\""),
        ([{"command": "true", "phase": "data", "order": 2}], "'order' is 2, but phase 'data' is number 5"),
        (
            [{"command": "a", "name": "same"}, {"command": "b", "name": "same"}],
            "number 2 in pyproject.toml has the name 'same', which check number 1",
        ),
        (
            [{"command": "a", "phase": "late", "order": 6}, {"command": "b", "phase": "late", "order": 7}],
            "number 2 in pyproject.toml gives phase 'late' the order 7",
        ),
        ([{"command": "sh -c 'unclosed"}], "'checks[1].command' cannot be split"),
        ([{"request": "GET /x", "headers": {"Authorization": "Bearer {token}"}}], "{token}"),
        ("not a list", "must be an array of tables"),
    ],
)
def test_mistakes_name_the_entry_and_the_key(checks: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_checks(checks, "pyproject.toml")
    assert expected in str(info.value)


def test_skip_checks_accepts_phases_and_checks_and_names_the_known_ones(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.dbsnap]\nskip_checks = ["frontend", "database.row_counts"]\n')
    settings = load_settings(project_root=tmp_path, pyproject=pyproject, environ={})
    assert settings.skip_checks == ("frontend", "database.row_counts")
    with pytest.raises(ConfigError) as info:
        load_settings(project_root=tmp_path, pyproject=pyproject, environ={"DBSNAP_SKIP_CHECKS": "database.rowcount"})
    message = str(info.value)
    assert "DBSNAP_SKIP_CHECKS" in message
    assert "'database.rowcount' is not a built-in check" in message
    assert all(name in message for name in BUILTIN_IDS)

"""The postgres_binaries setting: auto by default, every source's spelling, and one paragraph for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.errors import ConfigError


def test_auto_by_default_and_the_command_line_wins_over_the_environment(tmp_path: Path) -> None:
    assert load_settings(project_root=tmp_path, environ={}).postgres_binaries == "auto"
    settings = load_settings(
        project_root=tmp_path,
        environ={"DBSNAP_POSTGRES_BINARIES": " WHEEL "},
        cli={"postgres_binaries": "system"},
    )
    assert settings.postgres_binaries == "system"
    assert settings.source_of("postgres_binaries") == "the command line"
    from_environment = load_settings(project_root=tmp_path, environ={"DBSNAP_POSTGRES_BINARIES": " WHEEL "})
    assert from_environment.postgres_binaries == "wheel"


def test_a_malformed_value_is_one_paragraph_naming_the_source_and_the_choices(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.dbsnap]\npostgres_binaries = "embedded"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(project_root=tmp_path, pyproject=tmp_path / "pyproject.toml", environ={})
    message = str(raised.value)
    assert message.startswith("Setting 'postgres_binaries' from [tool.dbsnap] in ")
    assert "has the value 'embedded', which is not accepted: expected auto (the server wheel" in message
    assert "wheel or system" in message
    assert "\n" not in message

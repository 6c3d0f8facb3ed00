"""Phase 1, environment: the tools, files and configuration the stack needs are there before anything starts."""

from __future__ import annotations

import shutil

import pytest

from pytest_dbsnap import Settings, find_pg_tools

pytestmark = [pytest.mark.smoke, pytest.mark.order(1)]


def test_postgres_programs_are_installed(dbsnap_settings: Settings) -> None:
    tools = find_pg_tools(dbsnap_settings, need_server=dbsnap_settings.provider in ("auto", "local"))
    for program in ("pg_dump", "pg_restore"):
        assert tools.path(program).is_file(), f"{program} missing in {tools.bindir}"


def test_required_tools_are_on_path(dbsnap_settings: Settings) -> None:
    services = [dbsnap_settings.backend]
    if not dbsnap_settings.skip_frontend:
        services.append(dbsnap_settings.frontend)
    wanted = set(dbsnap_settings.required_tools)
    for service in services:
        if service is not None:
            wanted.update(service.requires)
    missing = sorted(tool for tool in wanted if shutil.which(tool) is None)
    assert not missing, f"programs not on PATH: {', '.join(missing)}"


def test_required_files_are_present(dbsnap_settings: Settings) -> None:
    root = dbsnap_settings.project_root
    for relative in ("pyproject.toml", "refapp/alembic.ini", "refapp/migrations/versions", "seeds/README.md"):
        assert (root / relative).exists(), f"{relative} is missing from {root}"
    for pattern in dbsnap_settings.fingerprint_inputs:
        assert list(root.glob(pattern)), f"fingerprint input {pattern!r} matches nothing"


def test_configuration_is_complete(dbsnap_settings: Settings) -> None:
    assert dbsnap_settings.seed_command, "no seed_command: a missing dump could not be generated"
    assert dbsnap_settings.migrate_command, "no migrate_command: the schema could not be brought to head"
    assert dbsnap_settings.backend is not None, "no [tool.dbsnap.backend]"
    assert "{port}" in dbsnap_settings.backend.health_url or dbsnap_settings.backend.port is not None
    if not dbsnap_settings.skip_frontend:
        assert dbsnap_settings.frontend is not None, "no [tool.dbsnap.frontend] (or pass --skip-frontend)"

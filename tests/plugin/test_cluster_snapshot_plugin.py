"""Cluster snapshots seen from a user's pytest run (pytester, one subprocess per run): the first run writes one,
a run with no parked cluster starts from it and says "cluster snapshot in N s", a damaged one is a one-line
warning and the dump is restored, and --no-cluster-snapshot turns it off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.snapshot import snapshots_of

# warm_cluster off: nothing is parked, so every run starts as a fresh machine would (the snapshot first).
PYPROJECT = """\
[tool.dbsnap]
database = "app"
env = "dev"
dumps_dir = "dumps"
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 100"
fingerprint_inputs = ["seed-inputs"]
warm_cluster = false
"""
TESTS = """
def test_the_seeded_rows_are_there(dbsnap_db):
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone() == (100,)
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(tmp_path / "cache"))
    (pytester.path / "seed-inputs").mkdir()
    (pytester.path / "seed-inputs" / "universe.txt").write_text("galaxies: spiral\n")
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_rows=TESTS)
    return pytester.path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)
    result.assert_outcomes(passed=1)
    return result


def lines_starting(result: pytest.RunResult, prefix: str) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith(prefix)]


def test_runs_write_use_and_fall_back_from_a_cluster_snapshot(pytester: pytest.Pytester, project: Path) -> None:
    first = run(pytester)
    store = DumpStore(project / "dumps")
    [name] = store.names("dev")
    [snapshot] = snapshots_of(store.dump_path("dev", name))
    [written] = lines_starting(first, "cluster snapshot ")
    assert written.startswith(f"cluster snapshot {snapshot.archive.name} written in ")

    second = run(pytester)
    [line] = lines_starting(second, "database: ")
    assert line.startswith(f"database: dev/{name} -> 'app': cluster snapshot in "), line
    assert lines_starting(second, "warning: ") == []
    assert lines_starting(second, "cluster snapshot ") == [], "an existing snapshot was written again"

    with snapshot.archive.open("r+b") as archive:
        archive.seek(snapshot.archive.stat().st_size // 2)
        archive.write(b"\0" * 64)
    third = run(pytester)
    [warning] = lines_starting(third, "warning: ")
    assert f"the cluster snapshot {snapshot.archive.name} was not used (its sha256 does not match" in warning
    [line] = lines_starting(third, "database: ")
    assert ": pg_restore in " in line, line
    assert lines_starting(third, "cluster snapshot "), "the damaged snapshot was not replaced"

    off = run(pytester, "--no-cluster-snapshot")
    [line] = lines_starting(off, "database: ")
    assert ": pg_restore in " in line, line


def test_under_xdist_the_controllers_cluster_writes_and_starts_from_the_snapshot(
    pytester: pytest.Pytester, project: Path
) -> None:
    """The controller owns the cluster: it writes the snapshot of the dump a worker restored cold when it
    stops it, and the next run's controller starts its cluster from it (the workers clone its template)."""
    pytester.makepyfile(test_more=TESTS.replace("test_the_seeded_rows_are_there", "test_again"))

    def run_xdist() -> pytest.RunResult:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=240)
        result.assert_outcomes(passed=2)
        return result

    first = run_xdist()
    store = DumpStore(pytester.path / "dumps")
    [name] = store.names("dev")
    [snapshot] = snapshots_of(store.dump_path("dev", name))
    [written] = lines_starting(first, "cluster snapshot ")
    assert written.startswith(f"cluster snapshot {snapshot.archive.name} written in ")

    second = run_xdist()
    [started] = lines_starting(second, "cluster started from the cluster snapshot ")
    assert started.startswith(f"cluster started from the cluster snapshot {snapshot.archive.name} in ")
    assert lines_starting(second, "cluster snapshot ") == [], "an existing snapshot was written again"
    assert not [line for line in second.stdout.lines if "pg_restore in" in line], "a worker restored the dump"

"""Real disk faults (as root, on small tmpfs mounts): a full dump store, a read-only store and a full cluster folder
give one paragraph naming the folder and the fix, never a traceback, and leave the store as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.dumps.store import DumpStore

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root and mount(8)"
)
DBSNAP = Path(sys.executable).with_name("dbsnap")
ENV = "dev"


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small file system of our own, unmounted afterwards (lazily, should a process still hold it)."""
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-fs-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def fill(folder: Path) -> None:
    """Take every free byte of the file system under `folder`."""
    with (folder / "filler").open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 16))
            out.flush()


def clean_env(cache: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return {**keep, "DBSNAP_CACHE_DIR": str(cache)}


def dbsnap(project: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DBSNAP), *args], cwd=project, env=clean_env(cache), capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip


def assert_one_paragraph(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def store_files(store: DumpStore) -> set[str]:
    return {p.name for p in store.env_dir(ENV).iterdir() if p.name != ".generate.lock"}


def test_a_full_store_gives_one_paragraph_and_keeps_the_latest_dump(
    project_writer: Callable[..., Path], shared_pg_cache: Path, tmp_path: Path
) -> None:
    project = project_writer(tmp_path / "project")
    with tmpfs("4m") as dumps:
        first = dbsnap(project, shared_pg_cache, "generate", "--env", ENV, "--dumps-dir", str(dumps))
        assert first.returncode == 0, first.stderr
        store = DumpStore(dumps)
        before = store_files(store)
        latest = store.latest_name(ENV)
        fill(dumps)
        (project / "seed-inputs" / "universe.txt").write_text("galaxies: elliptical\n")

        again = dbsnap(project, shared_pg_cache, "generate", "--env", ENV, "--dumps-dir", str(dumps))

        assert_one_paragraph(again, f"the folder {dumps / ENV} is full", "MB free", "dumps_dir")
        assert store_files(store) == before, "a half-written dump or metadata was left behind"
        assert store.latest_name(ENV) == latest
        verify = dbsnap(project, shared_pg_cache, "verify", "--env", ENV, "--dumps-dir", str(dumps))
        assert verify.returncode == 0, verify.stderr

        # A session that must generate shows the same paragraph as its failed test, not an OSError traceback.
        (project / "check_rows.py").write_text(CHECK_ROWS)
        session = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--dumps-dir={dumps}",
             "--regenerate-dump", "check_rows.py"],
            cwd=project, env=clean_env(shared_pg_cache), capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert session.returncode == 1, session.stdout
        assert "could not prepare the app database: Writing" in session.stdout, session.stdout
        assert f"the folder {dumps / ENV} is full" in session.stdout
        assert "OSError" not in session.stdout
        assert store_files(store) == before


def test_a_read_only_store_serves_reads_and_restores_and_refuses_writes_in_one_paragraph(
    project_writer: Callable[..., Path], shared_pg_cache: Path, tmp_path: Path
) -> None:
    project = project_writer(tmp_path / "project")
    with tmpfs("16m") as dumps:
        made = dbsnap(project, shared_pg_cache, "generate", "--env", ENV, "--dumps-dir", str(dumps))
        assert made.returncode == 0, made.stderr
        (dumps / ENV / ".generate.lock").unlink(missing_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(dumps)], check=True)
        store = DumpStore(dumps)
        name = store.latest_name(ENV)
        assert name is not None

        for args in (["list"], ["show"], ["verify"]):
            read = dbsnap(project, shared_pg_cache, *args, "--env", ENV, "--dumps-dir", str(dumps))
            assert read.returncode == 0, (args, read.stderr)
            assert name in read.stdout
        # A session that only restores works on it.
        (project / "check_rows.py").write_text(CHECK_ROWS)
        session = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--dumps-dir={dumps}", "check_rows.py"],
            cwd=project, env=clean_env(shared_pg_cache), capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert session.returncode == 0, session.stdout + session.stderr

        (project / "seed-inputs" / "universe.txt").write_text("galaxies: irregular\n")
        refused = dbsnap(project, shared_pg_cache, "generate", "--env", ENV, "--dumps-dir", str(dumps))
        assert_one_paragraph(refused, "read-only file system", "point dumps_dir at a writable folder")
        assert store.latest_name(ENV) == name


CHECK_ROWS = """\
def test_the_dump_was_restored(dbsnap_db, dbsnap_dump, dbsnap_database):
    assert dbsnap_database.method in {"spare swap", "template clone", "pg_restore"}
    count = dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()[0]
    assert count == dbsnap_dump.row_counts["public.reality_nodes"] > 0
"""


def test_a_full_cluster_folder_names_the_folder_and_tmpdir(tmp_path: Path) -> None:
    with tmpfs("3m") as small:
        result = subprocess.run(
            [sys.executable, "-c", START_CLUSTER, str(tmp_path / "empty-cache")],
            env={**os.environ, "TMPDIR": str(small)}, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "a disk is full" in result.stderr, result.stderr
    assert str(small) in result.stderr
    assert "TMPDIR" in result.stderr


START_CLUSTER = """\
import sys
from pathlib import Path
from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres.local import start_local_cluster
try:
    start_local_cluster(None, Path(sys.argv[1]), 30.0).stop()
except DbsnapError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""

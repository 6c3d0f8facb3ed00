"""`dbsnap up` leaves the project's seeded database running after the command ends and prints its DATABASE_URL;
a second `up` finds it; `dbsnap down` stops it. Real cluster, real seed, real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from pytest_dbsnap.dumps.store import DumpStore

DBSNAP = Path(sys.executable).with_name("dbsnap")


def run(project: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return subprocess.run(
        # Warnings shown: a ResourceWarning of a process object collected while its server runs must not appear.
        [str(DBSNAP), *args], cwd=project, env={**keep, "DBSNAP_CACHE_DIR": str(cache), "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_up_keeps_the_seeded_database_running_until_down(
    project_writer: Callable[..., Path], shared_pg_cache: Path, tmp_path: Path
) -> None:
    project = project_writer(tmp_path / "project")
    port = free_port()
    up = run(project, shared_pg_cache, "up", "--env", "dev", "--port", str(port))
    try:
        assert up.returncode == 0, up.stderr
        [line] = up.stdout.splitlines()
        assert line.startswith("DATABASE_URL=postgresql://postgres:")
        url = line.removeprefix("DATABASE_URL=")
        assert urlsplit(url).port == port
        assert "stop it with `dbsnap down`" in up.stderr
        assert "ResourceWarning" not in up.stderr
        meta = DumpStore(project / "dumps").latest("dev")
        assert meta is not None
        # The command has ended; the database answers with the dump's rows.
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM reality_nodes").fetchone()
        assert row is not None
        assert row[0] == meta.row_counts["public.reality_nodes"] > 0

        # Another cluster's start must not take it for a leftover of a dead process.
        other = run(project, shared_pg_cache, "generate", "--env", "dev", "--if-stale")
        assert other.returncode == 0, other.stderr
        again = run(project, shared_pg_cache, "up", "--env", "dev")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == line
        assert "already running" in again.stderr
    finally:
        down = run(project, shared_pg_cache, "down")
    assert down.returncode == 0, down.stderr
    assert "stopped the project's cluster" in down.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    assert "nothing to stop" in run(project, shared_pg_cache, "down").stdout

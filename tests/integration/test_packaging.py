"""The wheel users install holds the plugin and nothing else: no reference app, tests or seeds at the top level
of their environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_pytest_dbsnap_only(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and other runs share this tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("pytest_dbsnap", "refapp", "tests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    out = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = out.glob("pytest_dbsnap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = [folder for folder in top_level if folder.endswith(".dist-info")]
    assert top_level == {"pytest_dbsnap", *dist_info}, sorted(top_level)
    assert len(dist_info) == 1
    shipped = {"pytest_dbsnap/plugin/__init__.py", "pytest_dbsnap/py.typed", "pytest_dbsnap/dumps/restore.py"}
    assert shipped <= set(names)
    # The capture's maskers in C, compiled by the build (this machine has a C compiler), with their stub for mypy.
    assert "pytest_dbsnap/dumps/capture/_fastmask.pyi" in names
    assert [n for n in names if n.startswith("pytest_dbsnap/dumps/capture/_fastmask.") and n.endswith(".so")]
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info[0]}/entry_points.txt").decode()
    assert "dbsnap = pytest_dbsnap.plugin" in entry_points
    assert "dbsnap = pytest_dbsnap.cli:main" in entry_points

"""The wheel users install holds the plugin and nothing else: no reference app, tests or seeds at the top level
of their environment. Its C maskers are built where a compiler works, and left out (masking in Python) where not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pytest_dbsnap.dumps.capture.maskers import build_masker

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


def test_without_a_c_compiler_the_wheel_builds_and_masks_in_python(tmp_path: Path) -> None:
    """The C maskers are optional: a build whose compiler fails still gives a wheel, whose capture masks in
    Python with the same outputs and says why it is slower."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "pytest_dbsnap", source / "pytest_dbsnap", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    out = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", "-w",
         str(out), str(source)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "CC": "/bin/false"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = out.glob("pytest_dbsnap-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    check = (
        "from pytest_dbsnap.dumps.capture import maskers as m\n"
        f"assert m.__file__.startswith({str(unpacked)!r}), m.__file__\n"
        "assert not m.native_masking()\n"
        "print(m.python_only_note())\n"
        "print(m.build_masker('email', b'k').fast(b'ann@corp.com').decode())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DBSNAP_MASKING"} | {"PYTHONPATH": str(unpacked)}
    ran = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    note, email = ran.stdout.strip().splitlines()
    assert "without a C compiler" in note
    native = build_masker("email", b"k").native
    assert native is not None
    assert native.one(b"ann@corp.com") == email.encode()  # the same output as the compiled masker

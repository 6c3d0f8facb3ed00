"""The capture's C maskers under AddressSanitizer: _fastmask.c compiled with -fsanitize=address into a copy of the
package, then its unit tests run against that build with every allocation through malloc, so a read or write
past a buffer (or into memory already freed) fails the run instead of corrupting a capture."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "pytest_dbsnap" / "dumps" / "capture" / "_fastmask.c"


def test_the_c_maskers_pass_their_tests_under_address_sanitizer(tmp_path: Path) -> None:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    preload = libasan.stdout.strip()
    assert Path(preload).is_file(), f"gcc has no AddressSanitizer runtime ({preload})"
    copy = tmp_path / "pytest_dbsnap"
    shutil.copytree(ROOT / "pytest_dbsnap", copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = copy / "dumps" / "capture" / f"_fastmask{suffix}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
         f"-I{include}", str(SOURCE), "-o", str(built)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "LD_PRELOAD": preload,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "PYTHONMALLOC": "malloc",
    }
    env.pop("DBSNAP_MASKING", None)
    # One process: the sanitized build imported first (from the copy, ahead of the installed package on the
    # path), then the unit tests, which then use it (the plugin, imported early, is not assertion-rewritten).
    script = (
        "import sys, pytest, pytest_dbsnap.dumps.capture._fastmask as f\n"
        "assert f.__file__ == sys.argv[1], f.__file__\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', '--rootdir', sys.argv[2],\n"
        "                      '-W', 'ignore::pytest.PytestAssertRewriteWarning',\n"
        "                      '-c', sys.argv[2] + '/pyproject.toml', sys.argv[3]]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(built), str(ROOT), str(ROOT / "tests" / "unit" / "test_fastmask.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
    assert "AddressSanitizer" not in run.stderr

"""Repository-level pytest setup: pytester for the plugin tests, and the folder for hold files that tests across
the folders share. The dbsnap plugin itself loads through its pytest11 entry point, exactly as it does for users."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def hold_folder() -> Iterator[Path]:
    """A folder the server's unprivileged account can read (tmp_path is root's own, mode 0700), for a hold file
    that a function in the server waits on: a test catches a restore at a point and releases it itself, instead
    of hoping the restore is still there when it looks."""
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-hold-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

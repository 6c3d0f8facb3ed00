"""An app's command runs as in an activated virtual environment: `python` is our interpreter, and a console
script of that environment (`mlflow`, `alembic`) is found beside it even when the environment is not on PATH."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_dbsnap.core.proc import resolve_python


def test_python_is_the_running_interpreter() -> None:
    assert resolve_python(["python", "-m", "app"]) == [sys.executable, "-m", "app"]
    assert resolve_python(["python3", "x.py"]) == [sys.executable, "x.py"]


def test_a_console_script_beside_the_interpreter_is_found_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    beside = Path(sys.executable).parent / "dbsnap"  # this environment's own console script
    assert beside.is_file()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the environment is not activated
    assert resolve_python(["dbsnap", "list"]) == [str(beside), "list"]


def test_programs_on_path_paths_and_unknown_names_are_left_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert resolve_python(["sh", "-c", "true"]) == ["sh", "-c", "true"]
    assert resolve_python(["./run.sh"]) == ["./run.sh"]
    assert resolve_python(["no-such-program-anywhere"]) == ["no-such-program-anywhere"]
    assert resolve_python([]) == []

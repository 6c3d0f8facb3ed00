"""The README, seeds/README.md and docs/ must stay true to the code: every setting, flag and command is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.cli import COMMANDS
from pytest_dbsnap.config.options import OPTIONS, Option

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SEEDS_README = (ROOT / "seeds" / "README.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.key)
def test_every_setting_is_in_the_readme_table(option: Option) -> None:
    flag = option.flag or option.negative_flag
    row = f"| `{option.key}` | {f'`{flag}`' if flag else ''} |"
    assert row in README, f"README.md's configuration table lacks (or misnames the flag of) {option.key!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_is_documented_in_seeds_readme(command: str) -> None:
    assert f"dbsnap {command}" in SEEDS_README, f"seeds/README.md does not show `dbsnap {command}`"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make smoke" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()

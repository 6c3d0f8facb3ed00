"""The configurations the README shows in "Your app in five minutes" load as they are written: valid TOML,
known keys, placeholders known where they are used, well-formed checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README.split("## Your app in five minutes", 1)[1].split("\n## ", 1)[0]
EXAMPLES = re.findall(r"```toml\n(.*?)```", SECTION, flags=re.DOTALL)


def test_the_section_has_the_python_node_and_deployed_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("example", EXAMPLES, ids=["python", "node", "deployed"])
def test_each_example_loads(example: str, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(example)
    settings = load_settings(project_root=tmp_path, pyproject=pyproject, environ={})
    assert settings.backend is not None
    assert settings.frontend is not None
    assert settings.frontend.command is None, "every example serves its UI from the backend"
    assert settings.checks

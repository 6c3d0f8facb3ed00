"""docs/examples/github-actions.yml parses, is the workflow docs/ci.md shows, caches the dump store keyed by
`dbsnap fingerprint`, runs the CI command docs/cli.md gives and publishes the HTML and JUnit reports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "github-actions.yml"
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
CI_DOC = (ROOT / "docs" / "ci.md").read_text()


def _steps() -> list[dict[str, Any]]:
    workflow = yaml.safe_load(EXAMPLE.read_text())
    [job] = workflow["jobs"].values()
    steps: list[dict[str, Any]] = job["steps"]
    return steps


def _documented_ci_command() -> str:
    """The `... # in CI` line of docs/cli.md's everyday command lines, without its comment."""
    [line] = [line for line in CLI_DOC.splitlines() if line.rstrip().endswith("# in CI")]
    return line.split("#", 1)[0].strip()


def test_the_example_is_the_workflow_docs_ci_shows() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", CI_DOC, flags=re.DOTALL)
    assert blocks[0] == EXAMPLE.read_text()


def test_the_cache_is_keyed_by_dbsnap_fingerprint_computed_before_it() -> None:
    steps = _steps()
    [fingerprint] = [i for i, step in enumerate(steps) if "dbsnap fingerprint" in step.get("run", "")]
    [cache] = [i for i, step in enumerate(steps) if str(step.get("uses", "")).startswith("actions/cache@")]
    assert fingerprint < cache
    step_id = steps[fingerprint]["id"]
    assert "fingerprint=" in steps[fingerprint]["run"]
    assert f"steps.{step_id}.outputs.fingerprint" in steps[cache]["with"]["key"]
    assert steps[cache]["with"]["path"] == "seeds/dumps"
    assert "dbsnap fingerprint" in CLI_DOC  # the command the workflow uses is the documented one


def test_it_runs_the_documented_ci_command_after_the_cache_and_publishes_both_reports() -> None:
    steps = _steps()
    command = _documented_ci_command()
    assert command.startswith("pytest -m smoke")
    [run] = [i for i, step in enumerate(steps) if step.get("run", "").strip() == command]
    [cache] = [i for i, step in enumerate(steps) if str(step.get("uses", "")).startswith("actions/cache@")]
    assert cache < run
    html = re.search(r"--html=(\S+)", command)
    junit = re.search(r"--junitxml=(\S+)", command)
    assert html is not None
    assert junit is not None
    published = " ".join(str(step.get("with", {})) for step in steps[run + 1 :] if step.get("if") == "always()")
    assert html[1] in published
    assert junit[1] in published

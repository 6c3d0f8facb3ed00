"""README.md, docs/ and seeds/README.md must stay true to the code: every setting, flag, command, fixture and
dependency is documented where the README says it is, every relative link leads somewhere, and the README stays
a short front door."""

from __future__ import annotations

import argparse
import ast
import re
import tomllib
from pathlib import Path

import pytest

from pytest_dbsnap.cli import COMMANDS, build_parser
from pytest_dbsnap.config.options import OPTIONS, Option

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
SEEDS_README = (ROOT / "seeds" / "README.md").read_text()
CONFIGURATION = (DOCS / "configuration.md").read_text()
CLI_DOC = (DOCS / "cli.md").read_text()
FIXTURES_DOC = (DOCS / "fixtures.md").read_text()
DEPENDENCIES_DOC = (DOCS / "dependencies.md").read_text()

README_MAX_LINES = 300
# Fixtures the plugin defines under pytest-django's names, to give Django the restored database (docs/django.md).
PYTEST_DJANGO_OVERRIDES = {"django_db_setup"}


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a whole heading line), up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _without_code(text: str) -> str:
    """Markdown outside fenced code blocks and inline code spans: a `#` or `](` in code is neither heading nor link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def _documents_flag(text: str, flag: str) -> bool:
    return re.search(rf"`{re.escape(flag)}[` =]", text) is not None


# --- configuration ------------------------------------------------------------------------------------------

SETTINGS_TABLE = _section(CONFIGURATION, "## Settings")


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.key)
def test_every_setting_is_in_the_configuration_table(option: Option) -> None:
    flag = option.flag or option.negative_flag
    row = f"| `{option.key}` | {f'`{flag}`' if flag else ''} |"
    assert row in SETTINGS_TABLE, (
        f"docs/configuration.md's settings table lacks (or misnames the flag of) {option.key!r}"
    )


def test_the_configuration_table_names_no_setting_the_code_lacks() -> None:
    documented = re.findall(r"^\| `(\w+)` \|", SETTINGS_TABLE, flags=re.MULTILINE)
    assert sorted(documented) == sorted(option.key for option in OPTIONS)


# --- the command line ---------------------------------------------------------------------------------------

PYTEST_FLAGS = [(option.key, flag) for option in OPTIONS for flag in (option.flag, option.negative_flag) if flag]


@pytest.mark.parametrize(("key", "flag"), PYTEST_FLAGS, ids=[flag for _, flag in PYTEST_FLAGS])
def test_every_pytest_flag_is_in_docs_cli_with_its_setting(key: str, flag: str) -> None:
    table = _section(CLI_DOC, "## pytest flags")
    assert re.search(rf"^\| `{re.escape(flag)}(=[A-Z_]+)?` \| `{key}` \|", table, flags=re.MULTILINE), (
        f"docs/cli.md's pytest flags table lacks {flag} (setting {key})"
    )


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")}


SUBCOMMANDS = _subcommands()
COMMON_FLAGS = set.intersection(*(_flags(SUBCOMMANDS[name]) for name in COMMANDS))


def test_every_command_has_a_section_in_docs_cli() -> None:
    documented = re.findall(r"^### `dbsnap (\w+)`$", CLI_DOC, flags=re.MULTILINE)
    assert sorted(documented) == sorted(SUBCOMMANDS)


def test_the_flags_every_command_takes_are_in_docs_cli() -> None:
    common = _section(CLI_DOC, "### Flags every command takes")
    missing = sorted(flag for flag in COMMON_FLAGS if not _documents_flag(common, flag))
    assert not missing, f"docs/cli.md's 'Flags every command takes' lacks {missing}"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_flag_of_a_command_is_in_its_section_of_docs_cli(command: str) -> None:
    section = _section(CLI_DOC, f"### `dbsnap {command}`")
    own = _flags(SUBCOMMANDS[command]) - (COMMON_FLAGS if command in COMMANDS else set())
    missing = sorted(flag for flag in own if not _documents_flag(section, flag))
    assert not missing, f"docs/cli.md's section on dbsnap {command} lacks {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_is_documented_in_seeds_readme(command: str) -> None:
    assert f"dbsnap {command}" in SEEDS_README, f"seeds/README.md does not show `dbsnap {command}`"


# --- fixtures and dependencies ------------------------------------------------------------------------------


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def _plugin_fixtures() -> set[str]:
    names = set()
    for path in (ROOT / "pytest_dbsnap").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(_is_fixture(d) for d in node.decorator_list):
                names.add(node.name)
    return {name for name in names if not name.startswith("_")} - PYTEST_DJANGO_OVERRIDES


def test_every_fixture_is_in_docs_fixtures() -> None:
    fixtures = _plugin_fixtures()
    assert {"pg_server", "fresh_db", "frontend_page"} <= fixtures  # the walk finds them
    table = "\n".join(line for line in FIXTURES_DOC.splitlines() if line.startswith("| `"))
    missing = sorted(name for name in fixtures if f"`{name}`" not in table)
    assert not missing, f"docs/fixtures.md's table lacks {missing}"


def _dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    return sorted({re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0] for requirement in requirements})


@pytest.mark.parametrize("name", _dependencies())
def test_every_dependency_is_justified_in_the_readme_and_docs(name: str) -> None:
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flags=re.IGNORECASE)
    assert word.search(_section(README, "## Dependencies, and why each")), f"README.md's dependency list lacks {name}"
    assert word.search(DEPENDENCIES_DOC), f"docs/dependencies.md lacks {name}"


# --- the README, and the links between the pages -----------------------------------------------------------


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make smoke" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_a_short_front_door() -> None:
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the reference belongs in docs/"


def test_the_readme_links_to_every_page_of_docs() -> None:
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    missing = sorted(page for page in pages if f"]({page})" not in README)
    assert not missing, f"README.md does not link to {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {_slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


DOCUMENTS = sorted(
    {ROOT / "README.md", ROOT / "seeds" / "README.md", *DOCS.glob("*.md"), *(ROOT / "benchmarks").glob("*.md")}
)
LINKS = [
    (document, target)
    for document in DOCUMENTS
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(document.read_text()))
    if not re.match(r"[a-z]+:", target)
]


@pytest.mark.parametrize(
    ("document", "target"), LINKS, ids=[f"{document.relative_to(ROOT)}->{target}" for document, target in LINKS]
)
def test_every_relative_link_leads_to_a_file_and_heading(document: Path, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    path = (document.parent / path_part).resolve() if path_part else document
    assert path.exists(), f"{document.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{document.relative_to(ROOT)} links to {target}: no such heading"


def test_the_architecture_page_names_every_layer_folder_and_module() -> None:
    """docs/architecture.md draws the layers; a folder or module added without a word there fails here."""
    page = (DOCS / "architecture.md").read_text()
    package = ROOT / "pytest_dbsnap"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"`{folder.name}/`" in page, f"docs/architecture.md does not describe {folder.name}/"
        for module in sorted(folder.rglob("*.py")):  # sub-packages too (dumps/capture/)
            if module.stem.startswith("__"):
                continue
            assert f"`{module.stem}`" in page, f"docs/architecture.md does not name {module.relative_to(package)}"

"""The browser checks without a browser: the frontend table's keys, the messages, what the plugin shows of a page."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.errors import BrowserUnavailable, ConfigError
from pytest_dbsnap.plugin.browser import summary_line
from pytest_dbsnap.stack.browser import RenderedPage, Violation, describe_violations, render_page, set_aside

FRONTEND = '[tool.dbsnap.frontend]\ncommand = "npm run preview"\n'


def load(tmp_path: Path, pyproject: str) -> Settings:
    path = tmp_path / "pyproject.toml"
    path.write_text(pyproject)
    return load_settings(project_root=tmp_path, pyproject=path, environ={})


def test_defaults_render_when_a_browser_is_found(tmp_path: Path) -> None:
    frontend = load(tmp_path, FRONTEND).frontend
    assert frontend is not None
    assert (frontend.browser, frontend.browser_path, frontend.render_selector) == ("auto", None, None)


def test_browser_keys_are_read(tmp_path: Path) -> None:
    frontend = load(
        tmp_path,
        FRONTEND + 'browser = "Required"\nbrowser_path = "tools/chrome"\nrender_selector = " #list li "\n',
    ).frontend
    assert frontend is not None
    assert frontend.browser == "required"
    assert frontend.browser_path == tmp_path / "tools" / "chrome"  # relative to the project, not the cwd
    assert frontend.render_selector == "#list li"


def test_a_bare_browser_name_is_looked_up_on_path_later(tmp_path: Path) -> None:
    frontend = load(tmp_path, FRONTEND + 'browser_path = "chromium"\n').frontend
    assert frontend is not None
    assert frontend.browser_path == Path("chromium")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (FRONTEND + 'browser = "sometimes"\n', ["'frontend.browser'", "'sometimes'", "auto, required, off"]),
        (FRONTEND + 'render_selector = ""\n', ["'frontend.render_selector'", "CSS selector"]),
        (
            FRONTEND + 'render_selector = "#node-list li[data-node-id"\n',
            ["'frontend.render_selector'", "'[' is never closed in this CSS selector"],
        ),
        (FRONTEND + 'render_selector = "li[title=\'x]"\n', ["'frontend.render_selector'", '"\'" is never closed']),
        (FRONTEND + 'render_selector = "li)"\n', ["'frontend.render_selector'", "')' closes nothing"]),
        (
            '[tool.dbsnap.backend]\ncommand = "serve"\nbrowser = "off"\n',
            ["[tool.dbsnap.backend]", "browser", "only [tool.dbsnap.frontend] takes"],
        ),
        (
            FRONTEND + 'allowed_console_errors = ["auth/refresh (400"]\n',
            ["'frontend.allowed_console_errors'", "is not a regular expression", "missing )"],
        ),
        (
            FRONTEND + 'ignored_axe_rules = ["Color Contrast"]\n',
            ["'frontend.ignored_axe_rules'", "not an axe-core rule id"],
        ),
        (
            '[tool.dbsnap.backend]\ncommand = "serve"\nignored_axe_rules = ["region"]\n',
            ["[tool.dbsnap.backend]", "ignored_axe_rules", "only [tool.dbsnap.frontend] takes"],
        ),
    ],
    ids=[
        "mode",
        "empty-selector",
        "unclosed-bracket",
        "unclosed-quote",
        "stray-parenthesis",
        "backend-table",
        "bad-regex",
        "bad-rule",
        "axe-in-backend",
    ],
)
def test_bad_browser_settings_name_the_key_and_the_fix(tmp_path: Path, table: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, table)
    for part in expected:
        assert part in str(raised.value)


def violation(rule: str, impact: str, count: int = 1) -> Violation:
    return Violation(rule, impact, f"{rule} help", f"https://example.invalid/{rule}", ("#a",), "<a id=a>", count)


def test_violations_read_as_rule_impact_and_element() -> None:
    text = describe_violations((violation("image-alt", "critical", count=3),), "4.12.1")
    assert text.splitlines() == [
        "1 accessibility violation(s) (axe-core 4.12.1):",
        "  - image-alt [critical] image-alt help: #a (and 2 more) -> <a id=a>",
    ]
    assert repr(violation("region", "moderate")) == "Violation(region, moderate)"


def rendered(
    *, seconds: float = 1.0, console_errors: tuple[str, ...] = (), violations: tuple[Violation, ...] = ()
) -> RenderedPage:
    """A page as the browser would report it, without a browser."""
    return RenderedPage(
        url="http://127.0.0.1:1",
        title="t",
        seconds=seconds,
        screenshot=b"",
        first_screen=b"",
        screenshot_path=None,
        console_errors=console_errors,
        violations=violations,
        axe_version="4.12.1",
        html="",
        rendered=(),
    )


def test_summary_line_counts_by_impact() -> None:
    page = rendered(
        seconds=1.5,
        violations=(violation("label", "critical"), violation("region", "moderate"), violation("list", "moderate")),
    )
    assert [v.rule for v in page.blocking_violations] == ["label"]
    assert summary_line(page) == (
        "http://127.0.0.1:1 in 1.50 s: 0 console error(s); axe-core 4.12.1: 1 critical, 2 moderate"
    )


def test_allowed_errors_and_ignored_rules_are_set_aside_not_dropped(tmp_path: Path) -> None:
    frontend = load(
        tmp_path,
        FRONTEND
        + 'allowed_console_errors = ["/auth/refresh", "^console.warn"]\nignored_axe_rules = "color-contrast"\n',
    ).frontend
    assert frontend is not None
    page = rendered(
        console_errors=(
            "console.error: Failed to load resource: 400 (http://127.0.0.1:1/auth/refresh:1)",
            "uncaught TypeError: x is undefined",
        ),
        violations=(violation("color-contrast", "serious"), violation("label", "critical")),
    )
    kept = set_aside(page, frontend.allowed_console_errors, frontend.ignored_axe_rules)
    assert kept.console_errors == ("uncaught TypeError: x is undefined",)
    assert kept.allowed_console_errors == (page.console_errors[0],)
    assert [v.rule for v in kept.blocking_violations] == ["label"]
    assert [v.rule for v in kept.ignored_violations] == ["color-contrast"]
    assert summary_line(kept) == (
        "http://127.0.0.1:1 in 1.00 s: 1 console error(s) (1 allowed); axe-core 4.12.1: 1 critical "
        "(1 rule(s) ignored: color-contrast)"
    )


def test_without_playwright_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "playwright", None)
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    with pytest.raises(BrowserUnavailable) as raised:
        render_page("http://127.0.0.1:1/")
    message = str(raised.value)
    assert "is not installed" in message
    assert "pip install 'pytest-dbsnap[browser]'" in message
    assert 'browser = "off"' in message

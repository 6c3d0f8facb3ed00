"""The pytest face of the browser checks: the `frontend_page` fixture, and what the page looked like and logged
in the reports (pytest-html extras when pytest-html is installed, report sections and the terminal otherwise)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Generator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbsnap.config.settings import ServiceSettings, Settings
from pytest_dbsnap.errors import BrowserUnavailable, RenderError
from pytest_dbsnap.plugin.fixtures import fail_setup
from pytest_dbsnap.plugin.report import progress_reporter
from pytest_dbsnap.stack.browser import RenderedPage, browser_at_hand, describe_violations, render_page, set_aside

if TYPE_CHECKING:
    from pytest_dbsnap.stack.services import RunningService

FIXTURE = "frontend_page"
DEFAULT_TIMEOUT = 15.0


@dataclass(frozen=True)
class PageEvidence:
    """What the reports show of the rendered page, whether it rendered or not."""

    url: str
    screenshots: tuple[tuple[str, bytes], ...]  # (name, PNG): the first screen, then the full page if longer
    console_errors: tuple[str, ...]
    page: RenderedPage | None  # None when the page did not render


def _screenshots(first_screen: bytes | None, full_page: bytes | None) -> tuple[tuple[str, bytes], ...]:
    # The report's thumbnail crops to its middle, which for a long page is a slice of a list: lead with the top.
    shots = [("Frontend page, first screen", first_screen), ("Frontend page, full length", full_page)]
    if first_screen == full_page:
        shots = shots[:1]
    return tuple((name, png) for name, png in shots if png)


EVIDENCE_KEY = pytest.StashKey[PageEvidence]()
SCREENSHOT_SHOWN_KEY = pytest.StashKey[bool]()
WORKER_SUMMARY_KEY = pytest.StashKey[list[str]]()  # the section's lines from the xdist worker that rendered


@pytest.fixture(scope="session")
def frontend_page(pytestconfig: pytest.Config, dbsnap_settings: Settings, frontend: RunningService) -> RenderedPage:
    """The frontend rendered once in headless Chromium: its screenshot, console errors, the elements matching
    render_selector and the axe-core violations. Skipped (browser = "auto") or failed (browser = "required")
    with the reason when no browser can run."""
    options = dbsnap_settings.frontend or ServiceSettings(name="frontend", command=(), cwd=dbsnap_settings.project_root)
    if options.browser == "off":
        pytest.skip('the browser checks are off (browser = "off" in [tool.dbsnap.frontend])')
    try:
        browser_at_hand(options.browser_path)  # before the step: a missing browser is no failed render
    except BrowserUnavailable as exc:
        if options.browser == "required":
            fail_setup(
                'the browser checks are required (browser = "required" in [tool.dbsnap.frontend]) but cannot run', exc
            )
        pytest.skip(f"no browser for the frontend page checks: {exc}")
    progress = progress_reporter(pytestconfig)
    progress.step(f"rendering {frontend.url} in headless Chromium")
    try:
        page = render_page(
            frontend.url,
            browser_path=options.browser_path,
            render_selector=options.render_selector,
            timeout=options.start_timeout if dbsnap_settings.frontend else DEFAULT_TIMEOUT,
            screenshot_path=dbsnap_settings.logs_dir.parent / "frontend.png",
        )
    except BrowserUnavailable as exc:  # Chromium itself would not start
        progress.end(failed=True)
        if options.browser == "required":
            fail_setup(
                'the browser checks are required (browser = "required" in [tool.dbsnap.frontend]) but cannot run', exc
            )
        pytest.skip(f"no browser for the frontend page checks: {exc}")
    except RenderError as exc:
        progress.end(failed=True)
        screenshots = _screenshots(exc.first_screen, exc.screenshot)
        pytestconfig.stash[EVIDENCE_KEY] = PageEvidence(exc.url, screenshots, exc.console_errors, None)
        fail_setup("the frontend page did not render", exc)
    finally:
        progress.end()
    page = set_aside(page, options.allowed_console_errors, options.ignored_axe_rules)
    screenshots = _screenshots(page.first_screen, page.screenshot)
    pytestconfig.stash[EVIDENCE_KEY] = PageEvidence(page.url, screenshots, page.console_errors, page)
    return page


def summary_line(page: RenderedPage) -> str:
    """One line on the rendered page for the terminal and the HTML report."""
    counts = {
        impact: sum(1 for v in page.violations if v.impact == impact)
        for impact in ("critical", "serious", "moderate", "minor")
    }
    audit = ", ".join(f"{n} {impact}" for impact, n in counts.items() if n) or "no violations"
    if page.ignored_violations:
        ignored = ", ".join(v.rule for v in page.ignored_violations)
        audit += f" ({len(page.ignored_violations)} rule(s) ignored: {ignored})"
    shown = f"{len(page.rendered)} element(s) rendered, " if page.rendered else ""
    allowed = f" ({len(page.allowed_console_errors)} allowed)" if page.allowed_console_errors else ""
    return (
        f"{page.url} in {page.seconds:.2f} s: {shown}{len(page.console_errors)} console error(s){allowed}; "
        f"axe-core {page.axe_version}: {audit}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if FIXTURE in getattr(item, "fixturenames", ()) and (report.when == "call" or report.failed):
        evidence = item.config.stash.get(EVIDENCE_KEY, None)
        if evidence is not None:
            _attach(item.config, report, evidence)
    return report


def _attach(config: pytest.Config, report: pytest.TestReport, evidence: PageEvidence) -> None:
    """Console errors on a failed report; the screenshot on the first report and on every failed one."""
    extras = _html_extras()
    attached: list[dict[str, str | None]] = []
    if report.failed and evidence.console_errors:
        text = "\n".join(evidence.console_errors)
        if evidence.console_errors[0] not in report.longreprtext:  # else the failure already quotes them
            report.sections.append(("frontend page console errors", text))
        if extras is not None:
            attached.append(extras.text(text, name="Console errors"))
    first = not config.stash.get(SCREENSHOT_SHOWN_KEY, False)
    if extras is not None and evidence.screenshots and (first or report.failed):
        config.stash[SCREENSHOT_SHOWN_KEY] = True
        if evidence.page is not None:
            attached.append(extras.html(_summary_html(evidence.page)))
        for name, png in evidence.screenshots:
            attached.append(extras.png(base64.b64encode(png).decode("ascii"), name=name))
    if attached:
        report.extras = [*getattr(report, "extras", []), *attached]  # type: ignore[attr-defined]


def _html_extras() -> ModuleType | None:
    try:
        from pytest_html import extras
    except ImportError:
        return None
    module: ModuleType = extras
    return module


def _summary_html(page: RenderedPage) -> str:
    """The summary line and every axe violation (linked to its rule's page), above the screenshot."""
    rows = "".join(
        f"<li><a href='{html.escape(v.help_url)}'>{html.escape(v.rule)}</a> "
        f"<strong>{html.escape(v.impact)}</strong>: {html.escape(v.help)}; "
        f"<code>{html.escape(', '.join(v.targets))}</code>{f' and {v.count - 1} more' if v.count > 1 else ''}</li>"
        for v in page.violations
    )
    listing = f"<ul style='margin:4px 0'>{rows}</ul>" if rows else ""
    # pytest-html writes its body text in light grey; this is read first, so it gets the page's dark text.
    return (
        f"<div class='dbsnap-frontend-page' style='color:#1b1b1f;font-size:13px'>"
        f"<p>Frontend page: {html.escape(summary_line(page))}</p>{listing}</div>"
    )


def _summary_lines(config: pytest.Config) -> list[str]:
    """The terminal's "dbsnap frontend page" section of this process (empty when the page did not render)."""
    evidence = config.stash.get(EVIDENCE_KEY, None)
    if evidence is None or evidence.page is None:
        return []
    page = evidence.page
    lines = [summary_line(page)]
    if page.screenshot_path is not None:
        lines.append(f"screenshot: {page.screenshot_path}")
    if page.violations:
        lines.append(describe_violations(page.violations, page.axe_version))
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: the section travels to the controller, which writes the terminal summary."""
    workeroutput = getattr(session.config, "workeroutput", None)
    lines = _summary_lines(session.config)
    if workeroutput is not None and lines:
        workeroutput["dbsnap_frontend_page"] = json.dumps(lines)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    shared = getattr(node, "workeroutput", {}).get("dbsnap_frontend_page")
    if shared:
        node.config.stash.setdefault(WORKER_SUMMARY_KEY, []).extend(json.loads(shared))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    lines = _summary_lines(config) or config.stash.get(WORKER_SUMMARY_KEY, [])
    if not lines:
        return
    terminalreporter.section("dbsnap frontend page")
    for line in lines:
        terminalreporter.write_line(line)

"""The frontend in a real browser: Playwright drives a Chromium found on this machine, waits for the data to
render, keeps the page's console errors, takes a screenshot and runs the axe-core accessibility audit."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pytest_dbsnap.errors import BrowserUnavailable, RenderError

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, ViewportSize

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, maybe as root (Chromium refuses its sandbox there), without a GPU, and quiet: none of the calls home
# that hang or log errors on a machine whose network is closed, as CI runners often are.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
# axe-core's impacts, mildest first; the phase fails on the last two.
IMPACTS = ("minor", "moderate", "serious", "critical")
BLOCKING_IMPACTS = ("serious", "critical")
# After the data shows, wait this long at most for the page's other requests (totals, filters) to finish.
SETTLE_SECONDS = 5.0
LAUNCH_TIMEOUT = 60.0  # seconds for Chromium itself to start, apart from the page's own time
OFF_HINT = 'Set browser = "off" in [tool.dbsnap.frontend] to skip the browser checks.'
CHROMIUM_HINT = (
    "Install Chromium (Debian: apt-get install chromium; macOS: brew install --cask chromium) or give the path "
    f"of a Chrome or Chromium as browser_path in [tool.dbsnap.frontend]. {OFF_HINT}"
)
PLAYWRIGHT_HINT = (
    "Install them with pip install 'pytest-dbsnap[browser]' (no `playwright install` needed: the system "
    f"Chromium is driven through its path). {OFF_HINT}"
)


@dataclass(frozen=True, repr=False)
class Violation:
    """One axe-core rule the page breaks, with the first elements that break it."""

    rule: str
    impact: str  # minor, moderate, serious or critical
    help: str
    help_url: str
    targets: tuple[str, ...]  # CSS selectors of the first few offending elements
    snippet: str  # HTML of the first offending element, shortened
    count: int  # how many elements break it

    def __repr__(self) -> str:  # short, as pytest shows it under a failed assert
        return f"Violation({self.rule}, {self.impact})"

    @property
    def blocking(self) -> bool:
        return self.impact in BLOCKING_IMPACTS

    def describe(self) -> str:
        more = f" (and {self.count - 1} more)" if self.count > 1 else ""
        where = ", ".join(self.targets) or "the page"
        return f"{self.rule} [{self.impact}] {self.help}: {where}{more} -> {self.snippet}"


@dataclass(frozen=True)
class RenderedElement:
    """An element matched by render_selector, as the page showed it."""

    text: str
    attributes: Mapping[str, str]


@dataclass(frozen=True, repr=False)
class RenderedPage:
    """What the browser saw of the frontend once its data rendered."""

    url: str
    title: str
    seconds: float  # from starting the browser to the end of the audit
    screenshot: bytes  # full-page PNG
    first_screen: bytes  # PNG of the viewport, as a visitor first sees the page
    screenshot_path: Path | None
    console_errors: tuple[str, ...]  # console.error messages, failed loads and uncaught exceptions
    violations: tuple[Violation, ...]  # most severe first
    axe_version: str
    html: str  # the DOM after rendering, serialised
    rendered: tuple[RenderedElement, ...]  # the elements matching render_selector (none without one)
    # Set aside by the frontend's allowed_console_errors and ignored_axe_rules: reported, never failing.
    allowed_console_errors: tuple[str, ...] = ()
    ignored_violations: tuple[Violation, ...] = ()

    def __repr__(self) -> str:  # without the screenshot and the HTML, which would fill a traceback
        return (
            f"RenderedPage({self.url}, {len(self.rendered)} rendered, {len(self.console_errors)} console "
            f"error(s), {len(self.violations)} violation(s))"
        )

    @property
    def blocking_violations(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.blocking)

    @property
    def minor_violations(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if not v.blocking)


def set_aside(
    page: RenderedPage, allowed_console_errors: Sequence[str], ignored_axe_rules: Sequence[str]
) -> RenderedPage:
    """The page with the console errors and axe rules the project accepts moved out of what the checks see."""
    patterns = [re.compile(pattern) for pattern in allowed_console_errors]
    allowed = tuple(error for error in page.console_errors if any(p.search(error) for p in patterns))
    ignored = tuple(v for v in page.violations if v.rule in ignored_axe_rules)
    return replace(
        page,
        console_errors=tuple(error for error in page.console_errors if error not in allowed),
        violations=tuple(v for v in page.violations if v not in ignored),
        allowed_console_errors=page.allowed_console_errors + allowed,
        ignored_violations=page.ignored_violations + ignored,
    )


def describe_violations(violations: tuple[Violation, ...], axe_version: str = "") -> str:
    """A readable list, one violation a line: rule, impact, what it asks, where."""
    engine = f" (axe-core {axe_version})" if axe_version else ""
    lines = [f"{len(violations)} accessibility violation(s){engine}:"]
    lines += [f"  - {violation.describe()}" for violation in violations]
    return "\n".join(lines)


def find_chromium(browser_path: Path | None) -> Path | None:
    """The Chromium to drive: the configured one, else the first of CHROMIUM_NAMES on PATH.

    None means none was found here; Playwright's own downloaded Chromium (`playwright install`) is then tried.
    """
    if browser_path is not None:
        found = shutil.which(str(browser_path)) if len(browser_path.parts) == 1 else None
        if found:
            return Path(found)
        if browser_path.is_file() and os.access(browser_path, os.X_OK):
            return browser_path
        raise BrowserUnavailable(
            f"browser_path in [tool.dbsnap.frontend] is {str(browser_path)!r}, which is not an executable file"
            f"{' on PATH' if len(browser_path.parts) == 1 else ''}. {CHROMIUM_HINT}"
        )
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def browser_at_hand(browser_path: Path | None) -> Path | None:
    """find_chromium, once Playwright and axe are importable; BrowserUnavailable (a skip, not a failure, under
    browser = "auto") when they are not."""
    executable = find_chromium(browser_path)
    try:
        import axe_playwright_python.sync_playwright  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailable(
            f"the browser checks need Playwright and axe-playwright-python, and "
            f"{exc.name} is not installed. {PLAYWRIGHT_HINT}"
        ) from None
    return executable


def render_page(
    url: str,
    *,
    browser_path: Path | None = None,
    render_selector: str | None = None,
    timeout: float = 15.0,
    screenshot_path: Path | None = None,
) -> RenderedPage:
    """Open `url` in headless Chromium, wait for `render_selector`, screenshot and audit the page.

    Raises BrowserUnavailable when there is no Chromium or no Playwright, RenderError when the page does not
    load or the selector does not appear within `timeout` seconds (with the page's console errors).
    """
    executable = browser_at_hand(browser_path)
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    # Starting Chromium is ours to wait for, not the page's: on a loaded CI runner it can take seconds, and the
    # page's time (`timeout`) starts when the browser is ready.
    launch_ms = max(LAUNCH_TIMEOUT, timeout) * 1000

    def remaining_ms() -> float:
        return max(1.0, (deadline - time.monotonic()) * 1000)

    console_errors: list[str] = []
    manager = sync_playwright()
    with manager as playwright:
        _quiet_when_the_driver_dies(manager)
        try:
            browser = playwright.chromium.launch(
                executable_path=executable, args=list(CHROMIUM_FLAGS), headless=True, timeout=launch_ms
            )
        except PlaywrightError as exc:
            what = f"Chromium at {executable}" if executable else "Playwright's own Chromium"
            looked = "" if executable else f" No Chromium was found on PATH ({', '.join(CHROMIUM_NAMES)})."
            raise BrowserUnavailable(
                f"{what} did not start ({_first_line(exc.message)}).{looked} {CHROMIUM_HINT}"
            ) from None
        deadline = time.monotonic() + timeout
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda message: _keep_console_error(message, console_errors))
            page.on("pageerror", lambda error: console_errors.append(_describe_page_error(error)))

            def failure(message: str) -> RenderError:
                first_screen, screenshot = _screenshots(page, screenshot_path)
                errors = tuple(console_errors)
                logged = (
                    "Console errors of the page:\n" + "\n".join(f"  {e}" for e in errors)
                    if errors
                    else "The page logged no console errors."
                )
                return RenderError(
                    f"{message} {logged}",
                    url=url,
                    console_errors=errors,
                    screenshot=screenshot,
                    first_screen=first_screen,
                )

            try:
                page.goto(url, wait_until="load", timeout=remaining_ms())
            except PlaywrightError as exc:
                raise failure(f"The browser could not open {url} ({_first_line(exc.message)}).") from None
            if render_selector is not None:
                try:
                    page.wait_for_selector(render_selector, timeout=remaining_ms())
                except PlaywrightError as exc:
                    if not isinstance(exc, PlaywrightTimeout):
                        raise _selector_error(render_selector, url, exc) from None
                    raise failure(
                        f"The frontend page at {url} did not show {render_selector!r} within "
                        f"{timeout:g} s (render_selector in [tool.dbsnap.frontend])."
                    ) from None
            _settle(page, min(SETTLE_SECONDS * 1000, remaining_ms()))
            first_screen, screenshot = _screenshots(page, screenshot_path)
            rendered = _rendered_elements(page, render_selector) if render_selector else ()
            title, html = page.title(), page.content()
            audit = Axe().run(page).response
        finally:
            browser.close()
    return RenderedPage(
        url=url,
        title=title,
        seconds=time.monotonic() - started,
        screenshot=screenshot,
        first_screen=first_screen,
        screenshot_path=screenshot_path,
        console_errors=tuple(console_errors),
        violations=_violations(audit),
        axe_version=str(audit.get("testEngine", {}).get("version", "")),
        html=html,
        rendered=rendered,
    )


_DRIVER_GONE = "Connection closed while reading from the driver"


def _quiet_when_the_driver_dies(manager: object) -> None:
    """Ctrl-C in a terminal reaches the whole process group, Playwright's driver too. It dies under the calls in
    flight, whose futures then print "Future exception was never retrieved" over the KeyboardInterrupt that
    ends the run. Only that consequence is silenced; anything else still goes to asyncio's default handler."""
    import asyncio  # here: the plugin imports this module at start, and asyncio costs a run that renders nothing

    loop = getattr(manager, "_loop", None)  # the sync API's private event loop (playwright 1.40 to 1.5x at least)
    if not isinstance(loop, asyncio.AbstractEventLoop):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _DRIVER_GONE in str(context.get("exception", "")):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _selector_error(selector: str, url: str, exc: Exception) -> RenderError:
    """Playwright rejects a malformed selector at once: name it, instead of reporting a page that never rendered."""
    reason = _first_line(getattr(exc, "message", str(exc))).removeprefix("Page.wait_for_selector: ")
    return RenderError(
        f"render_selector {selector!r} in [tool.dbsnap.frontend] is not a selector the browser can use "
        f'({reason}); fix it, for example "#node-list li[data-node-id]". The page at {url} itself loaded.',
        url=url,
    )


def _settle(page: Page, timeout_ms: float) -> None:
    """Let the page's other requests finish, so the screenshot and the audit see it complete; a page that
    keeps polling is audited as it is after the wait."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_load_state("networkidle", timeout=timeout_ms)


def _screenshots(page: Page, path: Path | None) -> tuple[bytes, bytes]:
    """The first screen and the full page; the full page is also written to `path`."""
    first_screen = page.screenshot(timeout=5000)
    full_page = page.screenshot(full_page=True, timeout=5000)
    if path is not None:
        _write(path, full_page)
    return first_screen, full_page


def _keep_console_error(message: ConsoleMessage, errors: list[str]) -> None:
    if message.type != "error":
        return
    location = message.location
    if urlsplit(location.get("url") or "").path == "/favicon.ico":
        return  # Chromium asks for /favicon.ico on its own; a page without one is not broken
    where = f" ({location['url']}:{location['lineNumber'] + 1})" if location.get("url") else ""
    errors.append(f"console.error: {message.text}{where}")


def _describe_page_error(error: Any) -> str:
    """An uncaught exception: its name, message and where it was thrown (the first frame of the stack)."""
    frames = re.findall(r"^\s+at (.+)$", error.stack or "", flags=re.MULTILINE)
    where = f" at {frames[0]}" if frames else ""
    return f"uncaught {error.name or 'Error'}: {error.message}{where}"


def _rendered_elements(page: Page, selector: str) -> tuple[RenderedElement, ...]:
    found = page.eval_on_selector_all(
        selector,
        "els => els.map(e => ({text: e.innerText, attributes: Object.fromEntries("
        "Array.from(e.attributes, a => [a.name, a.value]))}))",
    )
    return tuple(RenderedElement(text=item["text"], attributes=dict(item["attributes"])) for item in found)


def _violations(audit: Mapping[str, Any]) -> tuple[Violation, ...]:
    found = []
    for rule in audit.get("violations", []):
        nodes = rule.get("nodes", [])
        impact = rule.get("impact") or "minor"
        found.append(
            Violation(
                rule=rule["id"],
                impact=impact,
                help=rule.get("help", ""),
                help_url=rule.get("helpUrl", ""),
                targets=tuple(_selector(node.get("target", [])) for node in nodes[:3]),
                snippet=_shorten(nodes[0].get("html", "")) if nodes else "",
                count=len(nodes),
            )
        )
    severity = {impact: rank for rank, impact in enumerate(IMPACTS)}
    return tuple(sorted(found, key=lambda v: -severity.get(v.impact, 0)))


def _selector(target: list[Any]) -> str:
    # axe gives a list of selectors from the document down through iframes; shadow DOM parts are lists too.
    return " >>> ".join(" >>> ".join(part) if isinstance(part, list) else str(part) for part in target)


def _shorten(snippet: str, limit: int = 100) -> str:
    flat = " ".join(snippet.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip() and not set(line) <= {"=", " "}]
    return lines[0] if lines else message.strip()


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    temporary.replace(path)

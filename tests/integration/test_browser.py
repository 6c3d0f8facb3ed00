"""The frontend phase in a real browser: headless Chromium over real HTTP, no mocks.

Small pages served by a stdlib HTTP server stand in for a frontend: one breaks an accessibility rule, one
throws from its script. Through pytester, the real phase-4 module runs against them, with the `frontend` fixture
overridden in conftest.py the way a user points the plugin at a stack it does not start. The reference app is
checked by the real smoke phase in a subprocess.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.errors import BrowserUnavailable, RenderError
from pytest_dbsnap.stack.browser import BLOCKING_IMPACTS, describe_violations, find_chromium, render_page

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PHASE_4 = PROJECT_ROOT / "tests" / "smoke" / "test_04_frontend.py"
BROWSER_TESTS = "accessibility or console"  # the phase-4 tests that need only the page, not the database

ACCESSIBLE_HEAD = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
# A linked image without alt text: the link has no name (serious) and the image no text alternative (critical).
VIOLATING_PAGE = (
    ACCESSIBLE_HEAD.format(title="Violation")
    + '<body><main><h1>Nodes</h1><ul id="node-list"><li data-node-id="1">Bexari</li></ul>'
    + '<a href="/next"><img src="next.png" id="next-arrow"></a></main></body></html>'
)
THROWING_PAGE = (
    ACCESSIBLE_HEAD.format(title="Throws")
    + '<body><main><h1>Nodes</h1><ul id="node-list"><li data-node-id="1">Bexari</li></ul></main>'
    + '<script>console.error("stats request answered 500");'
    + 'window.setTimeout(() => { throw new TypeError("renderNode: node.kind is undefined"); }, 0);</script>'
    + "</body></html>"
)
NEVER_RENDERS_PAGE = (
    ACCESSIBLE_HEAD.format(title="Never")
    + '<body><main><h1>Nodes</h1><ul id="node-list"></ul></main>'
    + '<script>console.error("GET /api/reality-nodes failed: connection refused");</script></body></html>'
)

PNG_1X1 = bytes.fromhex(  # a 1x1 blue PNG, so the image loads and only its missing alt text is wrong
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63e0f6eafe0f00032401e0930a31c50000000049454e44ae426082"
)
PROJECT_TOML = """\
[tool.pytest.ini_options]
addopts = ["-ra", "-p", "no:cacheprovider"]
filterwarnings = ["error"]

[tool.dbsnap.frontend]
command = "python -m http.server"   # never started: conftest.py points `frontend` at the test's server
render_selector = "#node-list li[data-node-id]"
start_timeout = 10
{extra}
"""
CONFTEST = """\
from pathlib import Path

import httpx
import pytest

from pytest_dbsnap.stack.services import RunningService


@pytest.fixture(scope="session")
def frontend():
    url = Path("page-url.txt").read_text()
    with httpx.Client(base_url=url) as client:
        yield RunningService("frontend", url, client, Path("frontend.log"), None)
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pages above on a real HTTP server on loopback; yields its base URL."""
    root = tmp_path_factory.mktemp("site")
    for name, page in [("violation", VIOLATING_PAGE), ("throws", THROWING_PAGE), ("never", NEVER_RENDERS_PAGE)]:
        (root / f"{name}.html").write_text(page)
    (root / "next.png").write_bytes(PNG_1X1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def chromium() -> Path:
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[browser]'")
    found = find_chromium(None)
    if found is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome); see the README's set-up")
    return found


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project whose frontend is the test's page; the real phase-4 module is its test file."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_04_frontend=PHASE_4.read_text())
    write_project(pytester)
    return pytester


def write_project(pytester: pytest.Pytester, extra: str = "") -> None:
    (pytester.path / "pyproject.toml").write_text(PROJECT_TOML.format(extra=extra))


def run_phase(pytester: pytest.Pytester, page_url: str, *args: str) -> pytest.RunResult:
    (pytester.path / "page-url.txt").write_text(page_url)
    return pytester.runpytest_subprocess("-k", BROWSER_TESTS, *args)


def output_of(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


# --- the audit and the console, directly --------------------------------------------------------------------


def test_injected_violation_is_found_with_rule_impact_and_element(chromium: Path, site: str) -> None:
    page = render_page(f"{site}/violation.html", browser_path=chromium, render_selector="#node-list li")
    found = {violation.rule: violation for violation in page.blocking_violations}
    assert found["image-alt"].impact == "critical"
    assert found["link-name"].impact == "serious"
    assert found["image-alt"].targets == ("#next-arrow",)
    assert all(violation.impact in BLOCKING_IMPACTS for violation in page.blocking_violations)
    message = describe_violations(page.blocking_violations, page.axe_version)
    assert "image-alt [critical] Images must have alternative text: #next-arrow" in message
    assert "link-name [serious]" in message
    assert page.screenshot.startswith(b"\x89PNG"), "the screenshot is not a PNG"
    assert [element.attributes["data-node-id"] for element in page.rendered] == ["1"]


def test_console_errors_and_uncaught_exceptions_are_kept(chromium: Path, site: str) -> None:
    page = render_page(f"{site}/throws.html", browser_path=chromium)
    assert any("console.error: stats request answered 500" in error for error in page.console_errors)
    assert any(
        error.startswith("uncaught TypeError: renderNode: node.kind is undefined") for error in page.console_errors
    ), page.console_errors
    assert not page.blocking_violations, describe_violations(page.blocking_violations)


def test_data_that_never_renders_is_a_clear_error(chromium: Path, site: str, tmp_path: Path) -> None:
    screenshot = tmp_path / "frontend.png"
    with pytest.raises(RenderError) as raised:
        render_page(
            f"{site}/never.html",
            browser_path=chromium,
            render_selector="#node-list li",
            timeout=2,
            screenshot_path=screenshot,
        )
    message = str(raised.value)
    assert "did not show '#node-list li' within 2 s" in message
    assert "GET /api/reality-nodes failed: connection refused" in message
    assert raised.value.screenshot is not None
    assert screenshot.read_bytes() == raised.value.screenshot


def test_a_malformed_render_selector_is_named_at_once(chromium: Path, site: str) -> None:
    """Brackets that pair up pass the settings; Playwright's parser catches the rest without waiting it out."""
    with pytest.raises(RenderError) as raised:
        render_page(f"{site}/never.html", browser_path=chromium, render_selector="#node-list li::", timeout=30)
    message = str(raised.value)
    assert message.startswith("render_selector '#node-list li::' in [tool.dbsnap.frontend] is not a selector the ")
    assert 'Unexpected token ":"' in message
    assert "The page at " in message
    assert "did not show" not in message


CTRL_C_SCRIPT = """
import sys
from pathlib import Path
from pytest_dbsnap.stack.browser import render_page
try:
    render_page(sys.argv[1], browser_path=Path(sys.argv[2]), render_selector="#node-list li", timeout=60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _renders_a_page(pgid: int) -> bool:
    """Whether Chromium, started by a process of the group (Playwright's driver) in a group of its own, runs a
    renderer: the page is open and waited on."""
    processes: dict[int, tuple[int, int, bytes]] = {}  # pid -> (parent, group, command line)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            processes[int(entry.name)] = (int(stat[1]), int(stat[2]), (entry / "cmdline").read_bytes())
        except (OSError, IndexError):
            continue

    def descends_from_group(pid: int) -> bool:
        for _ in range(10):
            parent, group, _command = processes.get(pid, (0, 0, b""))
            if group == pgid:
                return True
            pid = parent
        return False

    return any(
        b"--type=renderer" in command and descends_from_group(pid) for pid, (_p, _g, command) in processes.items()
    )


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the browser's processes through /proc")
def test_ctrl_c_while_the_page_renders_ends_quietly(chromium: Path, site: str, tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group, Playwright's driver and Chromium included."""
    script = tmp_path / "render.py"
    script.write_text(CTRL_C_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script), f"{site}/never.html", str(chromium)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as rendering:
        deadline = time.monotonic() + 60
        while not _renders_a_page(rendering.pid):
            assert rendering.poll() is None, rendering.communicate()
            assert time.monotonic() < deadline, "Chromium never opened the page"
            time.sleep(0.05)  # polling interval while the browser starts
        os.killpg(rendering.pid, signal.SIGINT)
        stdout, stderr = rendering.communicate(timeout=60)
    assert stdout == "interrupted\n", stderr
    assert "Future exception was never retrieved" not in stderr
    assert "Traceback" not in stderr, stderr


def test_a_missing_browser_path_says_how_to_install_one(tmp_path: Path) -> None:
    with pytest.raises(BrowserUnavailable, match="is not an executable file") as raised:
        find_chromium(tmp_path / "no-such-chromium")
    assert "apt-get install chromium" in str(raised.value)


# --- the phase through pytester: assertion messages, the HTML report, no browser -----------------------------


def test_phase_fails_on_the_violation_naming_rule_impact_and_element(
    chromium: Path, site: str, project: pytest.Pytester
) -> None:
    result = run_phase(project, f"{site}/violation.html")
    result.assert_outcomes(passed=1, failed=1)
    output = output_of(result)
    assert "FAILED test_04_frontend.py::test_no_serious_accessibility_violations" in output
    assert "image-alt [critical] Images must have alternative text: #next-arrow" in output
    assert "link-name [serious] Links must have discernible text" in output


def test_known_console_errors_and_axe_rules_of_the_app_can_be_accepted(
    chromium: Path, site: str, project: pytest.Pytester
) -> None:
    """A real app's login page logs a 400 on /auth/refresh and fails a rule its team has accepted: the checks
    pass with those set aside, and the summary still says what was set aside."""
    write_project(
        project,
        'allowed_console_errors = ["stats request answered 500", "^uncaught TypeError: renderNode"]\n'
        'ignored_axe_rules = ["image-alt", "link-name"]\n',
    )
    result = run_phase(project, f"{site}/throws.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*throws.html in * s: 1 element(s) rendered, 0 console error(s) (2 allowed)*"])

    result = run_phase(project, f"{site}/violation.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*violation.html in * (2 rule(s) ignored: image-alt, link-name)*"])

    write_project(project, 'ignored_axe_rules = ["link-name"]\n')  # one rule accepted, the other still fails
    result = run_phase(project, f"{site}/violation.html")
    result.assert_outcomes(passed=1, failed=1)
    assert "image-alt [critical]" in output_of(result)


def test_under_xdist_the_frontend_page_section_comes_from_the_worker(
    chromium: Path, site: str, project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_pg_cache: Path
) -> None:
    """The xdist controller starts a server for the workers: from the suite's shared pristine cluster."""
    pytest.importorskip("xdist")
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(shared_pg_cache))
    result = run_phase(project, f"{site}/violation.html", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= dbsnap frontend page =*",
            f"{site}/violation.html in * s: 1 element(s) rendered, 0 console error(s); axe-core *: 1 critical, "
            "1 serious*",
            "screenshot: *frontend.png",
        ]
    )


def test_script_error_shows_in_the_html_report_with_the_screenshot(
    chromium: Path, site: str, project: pytest.Pytester
) -> None:
    report = project.path / "report.html"
    result = run_phase(project, f"{site}/throws.html", f"--html={report}", "--self-contained-html")
    result.assert_outcomes(passed=1, failed=1)
    assert "FAILED test_04_frontend.py::test_no_console_errors" in output_of(result)
    text = report.read_text()
    assert "uncaught TypeError: renderNode: node.kind is undefined" in text  # the failure, in the test's log
    # The console errors as a text extra of the failed test: its "Console errors" link, with the whole list.
    attached = {base64.b64decode(data).decode() for data in re.findall(r"data:text/plain;[^,]*base64,([\w+/=]+)", text)}
    url = f"{site}/throws.html"
    assert attached == {
        f"console.error: stats request answered 500 ({url}:1)\n"
        f"uncaught TypeError: renderNode: node.kind is undefined at {url}:1:261"
    }
    assert "&#34;name&#34;: &#34;Console errors&#34;" in text
    # The screenshot, inlined: once on the first test that used the page, once on the failure.
    assert len(re.findall(r"data:image/png;base64,iVBORw0KGgo", text)) == 2


@pytest.mark.parametrize(
    ("setting", "outcome", "expected"),
    [
        ('browser_path = "{missing}"', {"skipped": 2}, "no browser for the frontend page checks: browser_path"),
        (
            'browser_path = "{missing}"\nbrowser = "required"',
            {"errors": 2},
            'the browser checks are required (browser = "required" in [tool.dbsnap.frontend]) but cannot run',
        ),
        ('browser = "off"', {"skipped": 2}, 'the browser checks are off (browser = "off"'),
    ],
    ids=["auto-skips", "required-fails", "off"],
)
def test_without_a_browser_the_phase_says_so(
    site: str, project: pytest.Pytester, setting: str, outcome: dict[str, int], expected: str
) -> None:
    write_project(project, setting.format(missing=project.path / "no-such-chromium"))
    result = run_phase(project, f"{site}/violation.html")
    result.assert_outcomes(**outcome)
    output = output_of(result)
    assert expected in output
    assert "Traceback" not in output


def test_no_chromium_on_path_skips_with_the_reason(
    site: str, project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no Chromium on PATH, Playwright's own download is tried last; neither is here."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-playwright-browsers"))
    result = run_phase(project, f"{site}/violation.html")
    result.assert_outcomes(skipped=2)
    output = output_of(result)
    assert "Playwright's own Chromium did not start" in output
    assert "No Chromium was found on PATH (chromium, chromium-browser, google-chrome, google-chrome-stable)" in output
    assert "Traceback" not in output


# --- the reference app -------------------------------------------------------------------------------------


def test_reference_app_passes_phase_4_in_the_browser(chromium: Path, tmp_path: Path) -> None:
    """The real phase 4 against the reference app: the list matches the database, nothing serious in the audit."""
    report = tmp_path / "smoke.html"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DBSNAP_", "PYTEST_"))}
    env.pop("DATABASE_URL", None)
    env["DBSNAP_LOGS_DIR"] = str(tmp_path / "logs")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "smoke", "-p", "no:cacheprovider", str(PHASE_4),
         f"--html={report}", "--self-contained-html"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b6 passed\b", done.stdout), done.stdout[-2000:]
    summary = re.search(r"^http://127\.0\.0\.1:\d+ in [\d.]+ s: .*$", done.stdout, flags=re.MULTILINE)
    assert summary is not None, done.stdout[-2000:]
    assert "50 element(s) rendered, 0 console error(s)" in summary[0]
    assert "serious" not in summary[0]
    assert "critical" not in summary[0]
    assert (tmp_path / "frontend.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64,iVBORw0KGgo" in report.read_text()

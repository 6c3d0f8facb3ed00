"""The backend and frontend fixtures from a user's run (pytester, real processes, real HTTP): what a service is
given, and how a service that cannot start fails its phase: one paragraph, later phases skipped, no process left."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# A stand-in app service. argv: name, mode. It records its pid at start (so a test can tell whether it ran and
# whether it is gone); "exit" dies at start with a message, "deaf" never answers 200, "ok" answers with what
# it was given.
SERVICE = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

name = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
Path(f"{name}.pid").write_text(str(os.getpid()))
print(f"{name} starting on port {os.environ['PORT']}", flush=True)
if mode == "exit":
    print(f"{name}: cannot reach the message queue, giving up", flush=True)
    sys.exit(7)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if mode == "deaf":
            status, body = 503, b"still warming up"
        else:
            status = 200
            body = json.dumps({
                "service": name,
                "database": urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/"),
                "port": os.environ["PORT"],
                "backend_url": os.environ.get("BACKEND_URL"),
            }).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

PROJECT = """\
[tool.dbsnap]
warm_cluster = false
{database}

[tool.dbsnap.backend]
command = "python service.py backend {backend_mode}"
health_url = "http://127.0.0.1:{{port}}/health"
start_timeout = {start_timeout}
{backend_port}

[tool.dbsnap.frontend]
command = "python service.py frontend"
health_url = "http://127.0.0.1:{{port}}/health"
start_timeout = 30
"""

SEED = """\
dumps_dir = "{dumps_dir}"
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 60"
schema_version_query = "SELECT version_num FROM alembic_version"
"""

# Three phases: one that needs nothing, the backend's, the frontend's.
PHASES = {
    "test_01_environment": """
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(1)]

        def test_environment():
            pass
    """,
    "test_02_backend": """
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]

        def test_health(backend):
            assert backend.client.get("/health").status_code == 200
    """,
    "test_03_frontend": """
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(3)]

        def test_page(frontend):
            assert frontend.client.get("/").status_code == 200
    """,
}
LATER_SKIPPED = (
    r"^SKIPPED \[1\] .*: the backend phase failed \(test_02_backend\.py::test_health\), so this later "
    r"phase was not run$"
)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The inner runs must not see the caller's DBSNAP_* or DATABASE_URL, and share one pristine-cluster cache."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this process listens on for the length of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def write_project(
    pytester: pytest.Pytester,
    *,
    backend_mode: str = "ok",
    start_timeout: float = 30,
    backend_port: int | None = None,
    dumps_dir: Path | None = None,
) -> None:
    """A project whose backend is the stand-in service; without a dump store the runs use --skip-dump-restore."""
    pytester.makepyprojecttoml(
        PROJECT.format(
            database=SEED.format(dumps_dir=dumps_dir) if dumps_dir else "",
            backend_mode=backend_mode,
            start_timeout=start_timeout,
            backend_port=f"port = {backend_port}" if backend_port else "",
        )
    )
    pytester.makepyfile(service=SERVICE)


def run_phases(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(**PHASES)
    return pytester.runpytest_subprocess("--skip-dump-restore", "-rs", "-p", "no:cacheprovider", timeout=120)


def error_paragraph(result: pytest.RunResult, test: str) -> list[str]:
    """The lines pytest shows for a test's setup error, up to the next section."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.match(rf"^_+ ERROR at setup of {test} _+$", line))
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^(-{5}|={5}|_{5})", lines[i]))
    return lines[start + 1 : end]


def assert_clean_failure(result: pytest.RunResult, paragraph: list[str]) -> None:
    """A user's mistake reads as the plugin's message only: no traceback, no chained exceptions, no internals."""
    output = result.stdout.str() + result.stderr.str()
    for noise in ("Traceback", "During handling of the above exception", "direct cause", "mirakuru"):
        assert noise not in output, noise
    assert not any("pytest_dbsnap/" in line for line in paragraph), paragraph
    assert sum(line.startswith("pytest-dbsnap: ") for line in paragraph) == 1, paragraph


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited; this container's PID 1 does not reap orphans, so a
    finished process can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def started_pid(pytester: pytest.Pytester, name: str) -> int | None:
    path = pytester.path / f"{name}.pid"
    return int(path.read_text()) if path.exists() else None


def test_backend_that_exits_at_start_fails_its_phase_with_one_paragraph(pytester: pytest.Pytester) -> None:
    write_project(pytester, backend_mode="exit")

    result = run_phases(pytester)

    result.assert_outcomes(passed=1, errors=1, skipped=1)
    paragraph = error_paragraph(result, "test_health")
    assert re.match(
        r"^pytest-dbsnap: the backend did not start: The backend service exited with code 7 while starting, before "
        r"http://127\.0\.0\.1:\d+/health answered 200 \(command: \S+ service\.py backend exit\)\.",
        paragraph[0],
    ), paragraph[0]
    assert re.fullmatch(r"Last lines of \S+/backend\.log:", paragraph[1]), paragraph[1]
    assert "backend: cannot reach the message queue, giving up" in paragraph[2:]
    assert_clean_failure(result, paragraph)
    result.stdout.re_match_lines([LATER_SKIPPED])
    pid = started_pid(pytester, "backend")
    assert pid is not None
    assert not is_running(pid)
    assert started_pid(pytester, "frontend") is None


def test_fixed_backend_port_in_use_is_a_clear_message_naming_the_port(
    pytester: pytest.Pytester, busy_port: int
) -> None:
    write_project(pytester, backend_port=busy_port)

    result = run_phases(pytester)

    result.assert_outcomes(passed=1, errors=1, skipped=1)
    paragraph = error_paragraph(result, "test_health")
    assert paragraph[0].startswith(
        f"pytest-dbsnap: the backend did not start: The backend service is set to port {busy_port}, but port "
        f"{busy_port} on 127.0.0.1 is already in use"
    ), paragraph[0]
    assert 'set port = "auto" in [tool.dbsnap.backend]' in paragraph[0]
    assert_clean_failure(result, paragraph)
    result.stdout.re_match_lines([LATER_SKIPPED])
    assert started_pid(pytester, "backend") is None, "the backend was started on a port already in use"


def test_health_url_that_never_answers_is_a_clear_message_naming_the_url(pytester: pytest.Pytester) -> None:
    write_project(pytester, backend_mode="deaf", start_timeout=2)

    result = run_phases(pytester)

    result.assert_outcomes(passed=1, errors=1, skipped=1)
    paragraph = error_paragraph(result, "test_health")
    match = re.match(
        r"^pytest-dbsnap: the backend did not start: The backend service did not answer 200 at "
        r"(?P<url>http://127\.0\.0\.1:(?P<port>\d+)/health) within 2 s \(command: \S+ service\.py backend deaf\); "
        r"the last answer was (?P<answer>.+)\. It was stopped\.",
        paragraph[0],
    )
    assert match, paragraph[0]
    assert match["answer"] == "status 503"
    assert f"backend starting on port {match['port']}" in paragraph
    assert_clean_failure(result, paragraph)
    result.stdout.re_match_lines([LATER_SKIPPED])
    pid = started_pid(pytester, "backend")
    assert pid is not None
    assert not is_running(pid), "the backend that never became healthy is still running"


def test_services_get_the_restored_database_and_their_port_and_stop_after_a_failing_run(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write_project(pytester, dumps_dir=tmp_path_factory.getbasetemp() / "shared-dumps")
    pytester.makepyfile(
        test_services="""
        import json
        from pathlib import Path

        def test_backend(backend, dbsnap_database):
            facts = {**backend.client.get("/health").json(), "url": backend.url,
                     "restored": dbsnap_database.database, "method": dbsnap_database.method}
            Path("backend.json").write_text(json.dumps(facts))

        def test_frontend(frontend, backend):
            facts = {**frontend.client.get("/").json(), "url": frontend.url, "backend": backend.url}
            Path("frontend.json").write_text(json.dumps(facts))

        def test_fails_so_the_run_fails(backend, frontend):
            assert False, "on purpose"
    """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)

    result.assert_outcomes(passed=2, failed=1)
    backend = json.loads((pytester.path / "backend.json").read_text())
    assert backend["method"] in {"pg_restore", "template clone", "spare swap"}, "the database was not restored"
    assert backend["database"] == backend["restored"] == "app"
    assert backend["port"] == str(urlsplit(backend["url"]).port)
    frontend = json.loads((pytester.path / "frontend.json").read_text())
    assert frontend["backend_url"] == frontend["backend"] == backend["url"]
    assert frontend["port"] == str(urlsplit(frontend["url"]).port) != backend["port"]
    for name in ("backend", "frontend"):
        pid = started_pid(pytester, name)
        assert pid is not None
        assert not is_running(pid), f"the {name} outlived the run"

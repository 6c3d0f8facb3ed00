"""Any app by configuration alone (pytester, a real local cluster, real processes and HTTP): a project with only a
pyproject.toml and a tiny app, no test files, gets the built-in phases and its declarative checks from
`pytest -m smoke`; placeholders, the [tool.dbsnap.env] table, url-only services and the ways to switch the
built-ins off, each seen from a user's run."""

from __future__ import annotations

import os
import re
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The tiny app: a backend on http.server and psycopg that reads its database from DB_CONNECTION_STRING (so only
# the [tool.dbsnap.env] table can give it one) and serves an admin page itself, the way many apps do.
APP = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import psycopg

Path("backend.pid").write_text(str(os.getpid()))
DSN = os.environ["DB_CONNECTION_STRING"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body, kind="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with psycopg.connect(DSN) as conn:
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        if self.path == "/health":
            self.send(200, json.dumps({"status": "ok"}))
        elif self.path.startswith("/api/items"):
            self.send(200, json.dumps({"total": count}))
        elif self.path.startswith("/env/"):
            self.send(200, os.environ.get(self.path.removeprefix("/env/"), "(unset)"), "text/plain")
        elif self.path.startswith("/admin/"):
            page = ('<!doctype html><html lang="en"><head><title>Admin</title></head><body><main><h1>Admin</h1>'
                    f'<ul id="items"><li data-id="1">{count} items</li></ul></main></body></html>')
            self.send(200, page, "text/html")
        else:
            self.send(404, json.dumps({"error": "not found"}))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.headers.get("X-Database") != os.environ["DB_NAME"]:
            self.send(401, json.dumps({"error": "wrong database header"}))
        else:
            self.send(201, json.dumps({"echo": body}))


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
"""

# The migrate command gets the database name as an argument ({database}) and must find the same name in the
# environment table; both come from placeholders filled for the scratch database of the generation.
MIGRATE = """\
import os, sys
import psycopg

if sys.argv[1] != os.environ["DB_NAME"]:
    sys.exit(f"argument {sys.argv[1]} and DB_NAME {os.environ['DB_NAME']} differ")
with psycopg.connect(os.environ["DB_CONNECTION_STRING"]) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (v text)")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version VALUES ('3')")
"""

SEED = """\
import os
import psycopg

with psycopg.connect(os.environ["DB_CONNECTION_STRING"]) as conn:
    conn.execute("INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 200) g")
"""

PYPROJECT = """\
[tool.dbsnap]
dumps_dir = "{dumps_dir}"
migrate_command = "python migrate.py {{database}}"
seed_command = ["python", "seed.py"]
schema_version_query = "SELECT v FROM schema_version"
fingerprint_inputs = ["migrate.py", "seed.py"]
warm_cluster = false
{extra}

[tool.dbsnap.env]
DB_CONNECTION_STRING = "{{database_url}}"
DB_NAME = "{{database}}"
SHARED = "from the env table"
LITERAL = "{{{{not a placeholder}}}}"
APP_PORT = "{{port}}"

[tool.dbsnap.backend]
command = "python app.py --port {{port}}"
health_url = "{{backend_url}}/health"
env = {{ SHARED = "from the backend's env" }}

[tool.dbsnap.frontend]
url = "{{backend_url}}/admin/"
browser = "{browser}"
render_selector = "#items li"

{checks}
"""

CHECKS = """\
[[tool.dbsnap.checks]]
name = "items"
sql = "SELECT count(*) FROM items"
equals = 200

[[tool.dbsnap.checks]]
name = "some_items"
sql = "SELECT count(*) FROM items"
at_least = 100

[[tool.dbsnap.checks]]
name = "api_total"
request = "GET /api/items"
contains = '"total": 200'

[[tool.dbsnap.checks]]
name = "post_with_header"
request = "POST /api/echo"
json = { hello = "world" }
headers = { X-Database = "{database}" }
status = 201
contains = "world"

[[tool.dbsnap.checks]]
name = "admin_page"
request = "GET /"
service = "frontend"
contains = "<h1>Admin</h1>"

[[tool.dbsnap.checks]]
name = "python_runs"
command = "python -c 'import sys; sys.exit(0)'"

[[tool.dbsnap.checks]]
name = "env_in_a_command"
phase = "after_data"
order = 6
command = ["python", "-c", "import os, sys; sys.exit(os.environ['SHARED'] != 'from the env table')"]
"""

BUILTIN_IDS = [
    "dbsnap::environment::postgres_programs",
    "dbsnap::environment::required_programs",
    "dbsnap::database::server_answers",
    "dbsnap::database::dump_sha256",
    "dbsnap::database::schema_version",
    "dbsnap::database::row_counts",
    "dbsnap::backend::health",
    "dbsnap::frontend::answers",
    "dbsnap::frontend::browser_render",
    "dbsnap::frontend::accessibility",
    "dbsnap::frontend::console_errors",
]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The inner runs must not see the caller's DBSNAP_* or DATABASE_URL, and share one pristine-cluster cache."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))


def write_app(
    pytester: pytest.Pytester,
    dumps_dir: Path,
    *,
    checks: str = CHECKS,
    extra: str = "",
    browser: str = "off",
) -> None:
    """Only a pyproject.toml and the app's own files: no test module, no conftest.py."""
    pytester.makepyprojecttoml(PYPROJECT.format(dumps_dir=dumps_dir, extra=extra, checks=checks, browser=browser))
    for name, text in {"app.py": APP, "migrate.py": MIGRATE, "seed.py": SEED}.items():
        (pytester.path / name).write_text(text)


def run_smoke(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-m", "smoke", "-p", "no:cacheprovider", "-rfs", *args, timeout=180)


def failure_message(result: pytest.RunResult, nodeid: str) -> str:
    """The first line of a failed check's section: its message, with no traceback before it."""
    lines = result.stdout.lines
    header = next(i for i, line in enumerate(lines) if re.fullmatch(rf"_+ {re.escape(nodeid)} _+", line))
    return lines[header + 1]


def test_a_project_with_no_test_files_gets_a_whole_smoke_suite(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write_app(pytester, tmp_path_factory.mktemp("dumps"), browser="auto")
    junit = pytester.path / "junit.xml"

    result = run_smoke(pytester, "-v", f"--junitxml={junit}", "--html=report.html", "--self-contained-html")

    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    # The browser checks pass with a Chromium and are skipped with the reason without one.
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(BUILTIN_IDS) + 7
    assert outcomes.get("skipped", 0) in (0, 3)
    for nodeid in BUILTIN_IDS[:8]:
        result.stdout.fnmatch_lines([f"{nodeid} PASSED*"])
    for nodeid in ("data::items", "data::some_items", "backend::api_total", "backend::post_with_header"):
        result.stdout.fnmatch_lines([f"dbsnap::{nodeid} PASSED*"])
    for nodeid in ("frontend::admin_page", "environment::python_runs", "after_data::env_in_a_command"):
        result.stdout.fnmatch_lines([f"dbsnap::{nodeid} PASSED*"])
    # The phase table lists the five phases and the new one, in order.
    result.stdout.re_match_lines(
        [r"^ 1 environment passed", r"^ 2 database +passed", r"^ 3 backend +passed", r"^ 4 frontend +passed"]
    )
    result.stdout.re_match_lines([r"^ 5 data +passed +2 ", r"^ 6 after_data +passed +1 "])
    # JUnit: readable class names and the phase property of every check.
    cases = ET.parse(junit).getroot().iter("testcase")  # noqa: S314 - the file this test's run just wrote
    phases = {
        (case.get("classname"), case.get("name")): {
            prop.get("name"): prop.get("value") for prop in case.iter("property")
        }.get("phase")
        for case in cases
    }
    assert phases[("dbsnap.database", "row_counts")] == "database"
    assert phases[("dbsnap.data", "items")] == "data"
    assert phases[("dbsnap.after_data", "env_in_a_command")] == "after_data"
    report = (pytester.path / "report.html").read_text()
    assert "dbsnap::backend::health" in report
    assert "Smoke phases" in report


def test_placeholders_and_the_env_table_reach_the_services(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write_app(pytester, tmp_path_factory.mktemp("dumps"))
    pytester.makepyfile(
        test_03_backend="""
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(3)]

        def test_env(backend, frontend):
            env = {name: backend.client.get(f"/env/{name}").text
                   for name in ("SHARED", "LITERAL", "APP_PORT", "PORT", "DB_NAME", "DATABASE_URL")}
            assert env["SHARED"] == "from the backend's env"  # a service's own env wins over the table
            assert env["LITERAL"] == "{not a placeholder}"
            assert env["APP_PORT"] == env["PORT"] == backend.url.rsplit(":", 1)[1]
            assert env["DB_NAME"] == "app"
            assert env["DATABASE_URL"].endswith("/app")
            assert frontend.url == backend.url + "/admin/"
            assert frontend.client.get("").text.startswith("<!doctype html>")
        """
    )

    result = run_smoke(pytester, "-v")

    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["test_03_backend.py::test_env PASSED*"])
    # The user's module joined the backend phase: three built-in/declarative checks and the test.
    result.stdout.re_match_lines([r"^ 3 backend +passed +4 +0 +0 "])


def test_each_check_kind_failing_names_the_check_and_both_values(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    failing = """\
[[tool.dbsnap.checks]]
name = "items"
sql = "SELECT count(*) FROM items"
equals = 199

[[tool.dbsnap.checks]]
name = "many_items"
sql = "SELECT count(*) FROM items"
at_least = 1000

[[tool.dbsnap.checks]]
name = "first_name"
sql = "SELECT name FROM items ORDER BY id LIMIT 1"
equals = "item 2"

[[tool.dbsnap.checks]]
name = "missing_page"
phase = "data"
request = "GET /nowhere"

[[tool.dbsnap.checks]]
name = "api_total"
phase = "data"
request = "GET /api/items"
contains = '"total": 7'

[[tool.dbsnap.checks]]
name = "exit_code"
phase = "data"
command = ["python", "-c", "import sys; print('not ready'); sys.exit(3)"]

[[tool.dbsnap.checks]]
name = "later"
phase = "after"
order = 6
sql = "SELECT 1"
equals = 1
"""
    write_app(pytester, tmp_path_factory.mktemp("dumps"), checks=failing)

    result = run_smoke(pytester)

    result.assert_outcomes(passed=8, failed=6, skipped=4)
    assert failure_message(result, "dbsnap::data::items") == (
        "data check 'items' (SELECT count(*) FROM items): expected 199, got 200"
    )
    assert failure_message(result, "dbsnap::data::many_items") == (
        "data check 'many_items' (SELECT count(*) FROM items): expected at least 1000, got 200"
    )
    assert failure_message(result, "dbsnap::data::first_name") == (
        "data check 'first_name' (SELECT name FROM items ORDER BY id LIMIT 1): expected item 2, got item 1"
    )
    assert failure_message(result, "dbsnap::data::missing_page").startswith(
        "data check 'missing_page' (GET /nowhere): expected status 200, got 404: "
    )
    assert failure_message(result, "dbsnap::data::api_total") == (
        "data check 'api_total' (GET /api/items): expected the body to contain '\"total\": 7', got '{\"total\": 200}'"
    )
    assert failure_message(result, "dbsnap::data::exit_code").startswith(
        "data check 'exit_code' (python -c import sys; print('not ready'); sys.exit(3)): expected exit code 0, got 3"
    )
    assert "not ready" in result.stdout.str()
    result.stdout.re_match_lines([r"^SKIPPED \[1\] .*: the data phase failed \(dbsnap::data::items\), so this later"])


class _Deployed(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/health" else b"<h1>deployed</h1>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def deployed_backend() -> Iterator[str]:
    """A backend that runs already, in this process, on a real socket: the smoke run must find it, not start
    or stop it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Deployed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_only_services_are_health_checked_and_neither_started_nor_stopped(
    pytester: pytest.Pytester, deployed_backend: str
) -> None:
    pytester.makepyprojecttoml(
        f"""
        [tool.dbsnap]
        warm_cluster = false

        [tool.dbsnap.backend]
        url = "{deployed_backend}"
        health_url = "{{backend_url}}/health"

        [tool.dbsnap.frontend]
        url = "{{backend_url}}/ui/"
        browser = "off"

        [[tool.dbsnap.checks]]
        name = "page"
        request = "GET /"
        service = "frontend"
        contains = "deployed"
        """
    )

    result = run_smoke(pytester, "--skip-dump-restore", "-v")

    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["dbsnap::backend::health PASSED*", "dbsnap::frontend::answers PASSED*"])
    result.stdout.fnmatch_lines(["dbsnap::frontend::page PASSED*"])
    logs = pytester.path / "reports" / "logs"
    assert not (logs / "backend.log").exists(), "something was started for a url-only backend"
    assert not (logs / "frontend.log").exists(), "something was started for a url-only frontend"
    # Still running: the session did not stop what it did not start.
    import httpx

    assert httpx.get(f"{deployed_backend}/health", timeout=5).status_code == 200


def test_a_url_only_service_that_does_not_answer_fails_its_phase_with_the_url(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.dbsnap]
        warm_cluster = false
        builtin_checks = false

        [tool.dbsnap.backend]
        url = "http://127.0.0.1:9/app"
        start_timeout = 1

        [[tool.dbsnap.checks]]
        name = "up"
        request = "GET /"
        """
    )

    result = run_smoke(pytester, "--skip-dump-restore")

    result.assert_outcomes(failed=1)
    assert "backend log" not in result.stdout.str(), "a url-only service has no log to show"
    result.stdout.fnmatch_lines(
        [
            "*pytest-dbsnap: the backend did not start: The backend is given only by its url (no command, so "
            "nothing was started), and http://127.0.0.1:9/app did not answer 200 within 1 s:*"
        ]
    )


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", *args, timeout=60)
    return [line for line in result.stdout.lines if "::" in line]


def test_built_ins_join_only_runs_that_select_smoke_and_can_be_switched_off(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.dbsnap]
        skip_checks = ["frontend", "database.row_counts"]

        [tool.dbsnap.backend]
        command = "python -m http.server {port}"

        [[tool.dbsnap.checks]]
        sql = "SELECT 1"
        equals = 1
        """
    )
    pytester.makepyfile(test_unit="def test_unit():\n    assert True\n")

    assert collected(pytester) == ["test_unit.py::test_unit"], "a plain pytest must not bring the smoke checks"
    assert collected(pytester, "-m", "not smoke") == ["test_unit.py::test_unit"]
    ids = collected(pytester, "-m", "smoke")
    assert ids == [
        "dbsnap::environment::postgres_programs",
        "dbsnap::environment::required_programs",
        "dbsnap::database::server_answers",
        "dbsnap::database::dump_sha256",
        "dbsnap::database::schema_version",
        "dbsnap::backend::health",
        "dbsnap::data::check_1",
    ]
    assert collected(pytester, "-m", "smoke", "-o", "dbsnap_builtin_checks=false") == ["dbsnap::data::check_1"]
    # Without pytest-xdist, the xdist group the smoke items carry is still a known marker.
    strict = ("-p", "no:xdist", "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    assert collected(pytester, "-m", "smoke", *strict)[-1] == "dbsnap::data::check_1"
    # A run that names its test paths runs just those.
    pytester.makepyfile(test_02_database="import pytest\n\n@pytest.mark.smoke\ndef test_mine():\n    pass\n")
    assert collected(pytester, "-m", "smoke", "test_02_database.py") == ["test_02_database.py::test_mine"]


def test_without_a_dbsnap_table_a_smoke_run_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.other]\nx = 1\n")
    result = pytester.runpytest_subprocess("-m", "smoke", "-p", "no:cacheprovider", timeout=60)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ('sql = "SELECT 1"\nequals = 1\nrequest = "GET /"', r"number 1 .* has sql and request .* exactly one"),
        ('sql = "SELECT 1"\nequal = 1', r"number 1 .*: 'equal' is not a key a check takes; accepted keys: phase"),
        ('sql = "SELECT 1"\nat_least = "many"', r"number 1 .*: 'at_least' has the value 'many'; expected a number"),
        ('request = "FETCH /x"', r"number 1 .*: 'request' has the value 'FETCH /x'; expected \"METHOD /path"),
        (
            'command = "true"\nphase = "extra"',
            r"number 1 .*: 'phase' names the new phase 'extra', which needs",
        ),
        ('command = "tool {databse}"', r"'checks\[1\]\.command' uses the placeholder \{databse\}"),
    ],
    ids=["two-kinds", "unknown-key", "wrong-type", "bad-request", "new-phase-without-order", "bad-placeholder"],
)
def test_a_malformed_check_stops_the_run_at_start_naming_its_number_and_key(
    pytester: pytest.Pytester, check: str, expected: str
) -> None:
    pytester.makepyprojecttoml(f"[tool.dbsnap]\n\n[[tool.dbsnap.checks]]\n{check}\n")

    result = pytester.runpytest_subprocess("-m", "smoke", "-p", "no:cacheprovider", timeout=60)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert re.search(expected, error), error
    assert "Traceback" not in error


@pytest.fixture
def deployed_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that is not the run's own (started here, as a deployed one would run already), with a database
    `shop` holding three users: the DSN of that database."""
    from pytest_dbsnap.postgres.base import find_pg_tools
    from pytest_dbsnap.postgres.local import LocalCluster

    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as cluster:
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE shop")
        with cluster.connect("shop") as conn:
            conn.execute("CREATE TABLE users (id int); INSERT INTO users VALUES (1), (2), (3)")
        yield cluster.dsn("shop")


def test_the_deployed_environment_recipe_checks_without_starting_or_restoring_anything(
    pytester: pytest.Pytester, deployed_backend: str, deployed_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's recipe: an external server, --skip-dump-restore and url-only services."""
    pytester.makepyprojecttoml(
        f"""
        [tool.dbsnap]
        provider = "external"
        database = "shop"
        skip_dump_restore = true
        skip_checks = ["database"]

        [tool.dbsnap.backend]
        url = "{deployed_backend}"

        [tool.dbsnap.frontend]
        url = "{{backend_url}}/admin/"
        browser = "off"

        [[tool.dbsnap.checks]]
        name = "users"
        sql = "SELECT count(*) FROM users"
        at_least = 3
        """
    )
    monkeypatch.setenv("DBSNAP_DSN", deployed_database)

    result = run_smoke(pytester, "-v")

    assert result.ret == 0, result.stdout.str()
    for nodeid in ("backend::health", "frontend::answers", "data::users"):
        result.stdout.fnmatch_lines([f"dbsnap::{nodeid} PASSED*"])
    result.stdout.fnmatch_lines(["dbsnap::environment::postgres_programs SKIPPED*"])
    result.stdout.fnmatch_lines(["*database 'shop' kept as it was*"])
    assert not (pytester.path / "reports" / "logs" / "backend.log").exists()
    import httpx

    assert httpx.get(f"{deployed_backend}/health", timeout=5).status_code == 200


def test_under_xdist_the_checks_run_in_one_worker_in_phase_order(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write_app(pytester, tmp_path_factory.mktemp("dumps"))

    result = run_smoke(pytester, "-n", "2", "-v")

    assert result.ret == 0, result.stdout.str()
    line_of_a_check = re.compile(r"^\[(?P<worker>gw\d)\] \[ *\d+%\] (PASSED|SKIPPED) (?P<id>dbsnap::[^@\s]+)\S*\s*$")
    ran = [(match["worker"], match["id"]) for line in result.stdout.lines if (match := line_of_a_check.match(line))]
    assert len(ran) == len(BUILTIN_IDS) + 7
    assert len({worker for worker, _ in ran}) == 1, "the smoke checks were spread over workers"
    phases = [nodeid.split("::")[1] for _, nodeid in ran]
    order = ["environment", "database", "backend", "frontend", "data", "after_data"]
    assert phases == sorted(phases, key=order.index)


def test_an_imported_dump_is_not_held_to_this_trees_schema_version(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A dump made elsewhere (imported, or captured from a live database) may be behind this tree's migrations,
    which migrate_command applies: the schema version check says so and is skipped, instead of failing every
    pull request that adds a migration."""
    dumps = tmp_path_factory.mktemp("dumps")
    write_app(pytester, dumps, checks="")
    made = pytester.run(sys.executable, "-m", "pytest_dbsnap.cli", "generate", "--env", "dev", timeout=180)
    assert made.ret == 0, made.stderr.str()
    (dump,) = (dumps / "dev").glob("*.dump")
    imported = pytester.run(sys.executable, "-m", "pytest_dbsnap.cli", "import", str(dump), "--env", "staging")
    assert imported.ret == 0, imported.stderr.str()
    # The tree's next migration: the database ends at schema version 4 once migrate_command ran.
    (pytester.path / "migrate.py").write_text(MIGRATE.replace("VALUES ('3')", "VALUES ('4')"))

    result = run_smoke(pytester, "--dump-env=staging")

    assert result.ret == 0, result.stdout.str()
    result.stdout.re_match_lines(
        [r"SKIPPED .*was imported \(no recorded schema version\); after migrate_command the database is at 4",
         r"SKIPPED .*was imported and records no row counts"]
    )  # fmt: skip
    generated = run_smoke(pytester, "-v")  # the tree's own dump (made again: migrate.py changed) is held to it
    assert generated.ret == 0, generated.stdout.str()
    generated.stdout.fnmatch_lines(["*dbsnap::database::schema_version PASSED*"], consecutive=False)

"""Smoke phases seen from a user's run (pytester, real processes): their order and marker, fail-fast skipping,
the skip flags, and what reaches the terminal summary, the HTML report and the JUnit XML."""

from __future__ import annotations

import html
import json
import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

SEED = """\
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 60"
schema_version_query = "SELECT version_num FROM alembic_version"
"""

SERVICES = """\
[tool.dbsnap.backend]
command = "python service.py backend"
health_url = "http://127.0.0.1:{port}/health"
start_timeout = 30

[tool.dbsnap.frontend]
command = "python service.py frontend"
health_url = "http://127.0.0.1:{port}/health"
start_timeout = 30
"""

# A stand-in app service: records its pid at start (so a test can tell whether it ran at all and whether it is
# gone), logs a URL with a password (which reports must redact), and answers with what it was given.
SERVICE = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

name = sys.argv[1]
Path(f"{name}.pid").write_text(str(os.getpid()))
print(f"{name} starting on port {os.environ['PORT']}", flush=True)
print("connecting to postgresql://app:s3cr3t@db.internal/app", flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        database = urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/")
        body = json.dumps({"service": name, "database": database, "port": os.environ["PORT"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# A phase module whose tests write their names to ran.log, so the order they ran in is on record.
PHASE = """\
from pathlib import Path

import pytest

pytestmark = [{marker}, pytest.mark.order({order})]


def record(name):
    with Path("ran.log").open("a") as log:
        log.write(name + "\\n")


def test_{name}_first():
    record("{name}_first")


def test_{name}_second():
    record("{name}_second")
"""

SKIP_LINE = r"^SKIPPED \[{count}\] .*: the {phase} phase failed \({test}\), so this later phase was not run$"


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
def shared_dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dump store shared by the runs that do not look at generation, so the seed runs once for all of them."""
    return tmp_path_factory.getbasetemp() / "shared-dumps"


def write_project(pytester: pytest.Pytester, dumps_dir: Path | None = None, *, services: bool = False) -> None:
    """pyproject.toml with [tool.dbsnap] (a fresh cluster per run); with a dump store, the refapp's commands."""
    # These tests follow the user's own phase modules; the built-in checks have their own (test_anyapp.py).
    lines = ["[tool.dbsnap]", "warm_cluster = false", "builtin_checks = false"]
    if dumps_dir is not None:
        lines += [f'dumps_dir = "{dumps_dir}"', SEED]
    if services:
        lines.append(SERVICES)
        pytester.makepyfile(service=SERVICE)
    pytester.makepyprojecttoml("\n".join(lines))


def write_phase(
    pytester: pytest.Pytester, module: str, order: int, name: str, marker: str = "pytest.mark.smoke"
) -> None:
    pytester.makepyfile(**{module: PHASE.format(marker=marker, order=order, name=name)})


def ran(pytester: pytest.Pytester) -> list[str]:
    log = pytester.path / "ran.log"
    return log.read_text().splitlines() if log.exists() else []


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited; this container's PID 1 does not reap orphans, so a
    finished process can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def phase_rows(*rows: tuple[int, str, str, int, int, int]) -> list[str]:
    """Regexes for the lines of the dbsnap summary's phase table."""
    return [
        rf"^ *{n} {name} +{status} +{passed} +{failed} +{skipped} +\d+\.\d\d$"
        for n, name, status, passed, failed, skipped in rows
    ]


# --- order and marker ---------------------------------------------------------------------------------------


def test_phases_run_in_phase_order_and_minus_m_smoke_selects_only_them(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    for order, name in enumerate("abc", start=1):
        write_phase(pytester, f"test_0{order}_{name}", order, name)
    pytester.makepyfile(test_unmarked="def test_not_smoke():\n    open('ran.log', 'a').write('unmarked\\n')\n")

    # The files are given in reverse, so collection order is the opposite of phase order.
    result = pytester.runpytest_subprocess(
        "-m",
        "smoke",
        "-v",
        "-p",
        "no:cacheprovider",
        "test_03_c.py",
        "test_02_b.py",
        "test_01_a.py",
        "test_unmarked.py",
    )

    result.assert_outcomes(passed=6, deselected=1)
    assert ran(pytester) == ["a_first", "a_second", "b_first", "b_second", "c_first", "c_second"]
    result.stdout.fnmatch_lines(
        [
            f"test_0{n}_{x}.py::test_{x}_{which} PASSED*"
            for n, x in enumerate("abc", start=1)
            for which in ("first", "second")
        ]
    )
    result.stdout.re_match_lines(
        [
            r"^=+ dbsnap =+$",
            r"^phase +status +passed +failed +skipped +seconds$",
            *phase_rows((1, "a", "passed", 2, 0, 0), (2, "b", "passed", 2, 0, 0), (3, "c", "passed", 2, 0, 0)),
        ]
    )
    assert "test_not_smoke" not in result.stdout.str()


def test_phase_named_by_the_marker_runs_in_order_of_its_order_marker(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    # Alphabetically test_alpha_checks.py comes first, but its phase is the second.
    write_phase(pytester, "test_zulu_setup", 1, "setup", marker='pytest.mark.smoke(phase="setup")')
    write_phase(pytester, "test_alpha_checks", 2, "checks", marker='pytest.mark.smoke(phase="checks")')

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=4)
    assert ran(pytester) == ["setup_first", "setup_second", "checks_first", "checks_second"]
    result.stdout.re_match_lines(phase_rows((1, "setup", "passed", 2, 0, 0), (2, "checks", "passed", 2, 0, 0)))


# --- fail-fast ----------------------------------------------------------------------------------------------


def test_failed_phase_skips_the_later_phases_with_a_reason_and_finishes_its_own(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    write_phase(pytester, "test_01_a", 1, "a")
    pytester.makepyfile(
        test_02_b="""
        from pathlib import Path
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]

        def test_b_breaks():
            assert False, "phase b broke"

        def test_b_still_runs():
            with Path("ran.log").open("a") as log:
                log.write("b_still_runs\\n")
    """
    )
    write_phase(pytester, "test_03_c", 3, "c")
    write_phase(pytester, "test_04_d", 4, "d")

    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=3, failed=1, skipped=4)
    assert ran(pytester) == ["a_first", "a_second", "b_still_runs"]
    result.stdout.re_match_lines([SKIP_LINE.format(count=4, phase="b", test=re.escape("test_02_b.py::test_b_breaks"))])
    result.stdout.re_match_lines(
        phase_rows(
            (1, "a", "passed", 2, 0, 0),
            (2, "b", "failed", 1, 1, 0),
            (3, "c", "skipped", 0, 0, 2),
            (4, "d", "skipped", 0, 0, 2),
        )
    )
    assert "ERROR" not in result.stdout.str()


def test_setup_error_in_a_phase_fails_the_phase(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def message_queue():
            raise RuntimeError("the message queue is down")
    """)
    write_phase(pytester, "test_01_a", 1, "a")
    pytester.makepyfile(
        test_02_b="""
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]

        def test_needs_the_queue(message_queue):
            pass
    """
    )
    write_phase(pytester, "test_03_c", 3, "c")

    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, errors=1, skipped=2)
    assert ran(pytester) == ["a_first", "a_second"]
    result.stdout.re_match_lines(
        [SKIP_LINE.format(count=2, phase="b", test=re.escape("test_02_b.py::test_needs_the_queue"))]
    )
    result.stdout.re_match_lines(phase_rows((2, "b", "failed", 0, 1, 0), (3, "c", "skipped", 0, 0, 2)))


# --- skip flags ---------------------------------------------------------------------------------------------


def test_skip_frontend_skips_its_tests_and_never_starts_it(pytester: pytest.Pytester, shared_dumps: Path) -> None:
    write_project(pytester, shared_dumps, services=True)
    pytester.makepyfile(
        test_01_backend="""
            import pytest

            pytestmark = [pytest.mark.smoke, pytest.mark.order(1)]

            def test_backend_answers(backend):
                assert backend.client.get("/health").json()["service"] == "backend"
        """,
        test_02_frontend="""
            import pytest

            pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]

            def test_frontend_answers(frontend):
                assert frontend.client.get("/health").status_code == 200
        """,
    )

    result = pytester.runpytest_subprocess("--skip-frontend", "-rs", "-p", "no:cacheprovider", timeout=120)

    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.re_match_lines([r"^SKIPPED \[1\] .*: --skip-frontend was given, so the frontend was not started$"])
    assert (pytester.path / "backend.pid").exists()
    assert not (pytester.path / "frontend.pid").exists(), "the frontend process was started"
    assert not is_running(int((pytester.path / "backend.pid").read_text()))


def test_skip_dump_restore_keeps_the_database_creating_and_migrating_it_when_missing(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    dumps_dir = tmp_path / "dumps"
    write_project(pytester, dumps_dir)
    pytester.makepyfile(
        test_kept="""
        def test_database_is_migrated_and_empty(dbsnap_db, dbsnap_database):
            assert dbsnap_database.method == "kept as it was"
            assert dbsnap_db.execute("SELECT to_regclass('public.reality_nodes') IS NOT NULL").fetchone() == (True,)
            assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone() == (0,)
            assert dbsnap_db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    """
    )

    result = pytester.runpytest_subprocess("--skip-dump-restore", "-p", "no:cacheprovider", timeout=120)

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["database: database 'app' kept as it was (no dump)"])
    assert not list(dumps_dir.glob("*/*.dump")), "--skip-dump-restore generated a dump"


def test_regenerate_dump_generates_even_when_the_dump_is_current(pytester: pytest.Pytester, tmp_path: Path) -> None:
    dumps_dir = tmp_path / "dumps"
    write_project(pytester, dumps_dir)
    pytester.makepyfile(test_dump="def test_restored(dbsnap_dump):\n    assert dbsnap_dump is not None\n")
    summary = r"^database: dev/\S+ -> 'app': generated in \d+\.\d s \({reason}\), then "

    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    first.assert_outcomes(passed=1)
    first.stdout.re_match_lines([summary.format(reason="no dump yet")])
    [first_dump] = dumps_dir.glob("dev/*.dump")

    again = pytester.runpytest_subprocess("--regenerate-dump", "-p", "no:cacheprovider", timeout=120)
    again.assert_outcomes(passed=1)
    again.stdout.re_match_lines([summary.format(reason="--regenerate-dump")])
    dumps = sorted(dumps_dir.glob("dev/*.dump"))
    assert len(dumps) == 2
    assert first_dump in dumps


# --- reports ------------------------------------------------------------------------------------------------

REPORTED_PHASES = {
    "test_01_database": """
        import json
        from pathlib import Path
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(1)]

        def test_dump_restored(dbsnap_dump, dbsnap_database, pg_server):
            facts = {"name": dbsnap_dump.name, "sha256": dbsnap_dump.sha256, "method": dbsnap_database.method,
                     "version": pg_server.version}
            Path("facts.json").write_text(json.dumps(facts))
    """,
    "test_02_backend": """
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]

        def test_backend_healthy(backend):
            assert backend.client.get("/health").status_code == 200

        def test_backend_is_the_frontend(backend):
            assert backend.client.get("/health").json()["service"] == "frontend"
    """,
    "test_03_after": """
        import pytest

        pytestmark = [pytest.mark.smoke, pytest.mark.order(3)]

        def test_later():
            pass
    """,
}
PASSWORD_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s\"',]+:[^@\s\"',/*]+@")


def html_report_data(path: Path) -> tuple[str, dict[str, Any]]:
    """The report's text (entities resolved) and the JSON pytest-html keeps its tables in."""
    text = path.read_text()
    blob = re.search(r'data-jsonblob="([^"]*)"', text)
    assert blob is not None, "no data blob in the HTML report"
    return html.unescape(text), json.loads(html.unescape(blob.group(1)))


def test_html_and_junit_reports_carry_dump_facts_phases_and_log_tails(
    pytester: pytest.Pytester, shared_dumps: Path
) -> None:
    write_project(pytester, shared_dumps, services=True)
    pytester.makepyfile(**REPORTED_PHASES)

    result = pytester.runpytest_subprocess(
        "--html=report.html",
        "--self-contained-html",
        "--junitxml=junit.xml",
        "-rs",
        "-p",
        "no:cacheprovider",
        timeout=120,
    )

    result.assert_outcomes(passed=2, failed=1, skipped=1)
    facts = json.loads((pytester.path / "facts.json").read_text())
    text, data = html_report_data(pytester.path / "report.html")
    environment = data["environment"]
    assert environment["dbsnap provider"] == "local"
    assert environment["PostgreSQL"].startswith(f"{facts['version']} (local PostgreSQL")
    assert environment["dbsnap environment"] == "dev"
    assert environment["dbsnap dump"] == facts["name"]
    assert environment["dbsnap sha256"] == facts["sha256"]
    assert re.fullmatch(rf"{facts['method']} in \d+\.\d\d s", environment["dbsnap restore"])
    assert "<h2>Smoke phases</h2><table id='dbsnap-phases'>" in text
    for phase, status in (("database", "passed"), ("backend", "failed"), ("after", "skipped")):
        assert f"<td>{phase}</td><td class='{status}'>{status}</td>" in text
    # Where each phase's time went: the steps its set-up ran, under it, with their durations.
    step_row = "<tr class='dbsnap-step'><td></td><td colspan='5'>{}</td><td>{}"
    for label in ("starting PostgreSQL (local)", "preparing 'app' from dev", "starting the backend"):
        assert re.search(re.escape(step_row.format(label, "")) + r"\d+\.\d s</td>", text), label
    assert re.search(r"<tr><td>starting the backend</td><td>backend</td><td>\d+\.\d s</td></tr>", text)
    table = result.stdout.lines[
        result.stdout.lines.index(next(x for x in result.stdout.lines if x.startswith("phase "))) :
    ]
    under: dict[str, list[str]] = {}
    for line in table[1:]:
        if row := re.match(r"^ *\d+ (\w+) ", line):
            under[row[1]] = []
        elif line.startswith("     ") and under:
            under[list(under)[-1]].append(re.sub(r" +\d+\.\d\d$", "", line.strip()))
    # (a part of a step, such as unpacking a cluster snapshot when one exists, is listed under its step)
    parts = [step for step in under["database"] if step.startswith("unpacking the cluster snapshot ")]
    assert [s for s in under["database"] if s not in parts][:2] == [
        "starting PostgreSQL (local)",
        "preparing 'app' from dev",
    ], table
    assert under["database"][1 : 1 + len(parts)] == parts, table
    # The database phase's test here does not read the app database, so it is made (deferred) for the backend.
    assert under["backend"] == ["making the app database 'app'", "starting the backend"], table
    assert under["after"] == []
    [failed] = data["tests"]["test_02_backend.py::test_backend_is_the_frontend"]
    assert "backend log, last lines" in failed["log"]
    assert "backend starting on port" in failed["log"]
    # Never a password: the service logged a URL with one, and the report shows it redacted.
    assert "postgresql://app:***@db.internal/app" in failed["log"]
    assert "s3cr3t" not in text
    assert "password" not in text.lower()
    assert not PASSWORD_URL.search(text), PASSWORD_URL.search(text)

    # The same log tail in the terminal's failure output.
    result.stdout.fnmatch_lines(
        [
            "*_ test_backend_is_the_frontend _*",
            "*- backend log, last lines (*backend.log) -*",
            "*backend starting on port*",
            "*postgresql://app:***@db.internal/app*",
        ]
    )
    assert "s3cr3t" not in result.stdout.str()

    root = ElementTree.parse(pytester.path / "junit.xml").getroot()  # noqa: S314 - the file this test just made
    cases = {str(case.get("name")): case for case in root.iter("testcase")}
    assert set(cases) == {"test_dump_restored", "test_backend_healthy", "test_backend_is_the_frontend", "test_later"}
    expected_phase = {
        "test_dump_restored": "database",
        "test_backend_healthy": "backend",
        "test_backend_is_the_frontend": "backend",
        "test_later": "after",
    }
    for name, case in cases.items():
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        phase_and_dump = {k: v for k, v in properties.items() if not str(k).startswith("postgres ")}
        assert phase_and_dump == {"phase": expected_phase[name], "dump": f"dev/{facts['name']}"}, name
        if name != "test_later":  # skipped before its set-up: no server, so no server facts
            # The server's version and where its programs came from, on every test that used the server.
            assert re.fullmatch(r"\d+\.\d+", str(properties["postgres server"])), properties
            programs = str(properties["postgres programs"])
            assert re.fullmatch(
                rf"PostgreSQL {properties['postgres server']} \((wheel|system|pg_bindir) .+\)", programs
            )

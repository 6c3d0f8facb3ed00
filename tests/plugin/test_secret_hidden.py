"""The local cluster's secret reaches the app and nowhere else: not the terminal, the reports, the logs pytest-dbsnap
writes, the dump metadata or the CLI's output, even when the app and a failing test print it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROJECT = """\
[tool.dbsnap]
warm_cluster = true
dumps_dir = "dumps"
logs_dir = "logs"
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 40"
schema_version_query = "SELECT version_num FROM alembic_version"

[tool.dbsnap.backend]
command = "python service.py"
prepare = ["python service.py --prepare"]
health_url = "http://127.0.0.1:{port}/"
start_timeout = 30
"""

# An app that prints its settings, as many do: the DATABASE_URL and the bare password.
SERVICE = """\
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

url = os.environ["DATABASE_URL"]
print("DATABASE_URL =", url, flush=True)
print("db password:", unquote(urlsplit(url).password or ""), flush=True)
if "--prepare" in sys.argv:
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(url.encode())


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

TESTS = """\
from pathlib import Path
from urllib.parse import unquote, urlsplit


def test_the_app_gets_the_secret(db_dsn, backend, dbsnap_db):
    Path("secret.txt").write_text(unquote(urlsplit(db_dsn).password))
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()[0] > 0
    print("captured output with", db_dsn)
    assert backend.client.get("/").text == db_dsn


def test_a_failure_that_shows_the_dsn(db_dsn):
    assert db_dsn == "something else"
"""


def test_the_cluster_secret_appears_in_no_output_report_log_or_metadata(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    pytester.makepyprojecttoml(PROJECT)
    pytester.makepyfile(service=SERVICE, test_app=TESTS)

    result = pytester.runpytest_subprocess(
        "-v", "-rA", "--showlocals", "--html=report.html", "--self-contained-html", "--junitxml=junit.xml",
        "-p", "no:cacheprovider", timeout=180,
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)

    secret = (pytester.path / "secret.txt").read_text()
    assert len(secret) >= 24
    shown = {
        "terminal": result.stdout.str() + result.stderr.str(),
        "HTML report": (pytester.path / "report.html").read_text(),
        "JUnit XML": (pytester.path / "junit.xml").read_text(),
    }
    for log in (pytester.path / "logs").glob("*"):
        shown[f"log {log.name}"] = log.read_text()
    for meta in (pytester.path / "dumps").rglob("*.json"):
        shown[f"metadata {meta.name}"] = meta.read_text()
    # The same warm cluster (and so the same secret) serves the CLI.
    for args in (["list"], ["show"], ["generate", "--env", "dev"]):
        cli = subprocess.run(
            [sys.executable, "-m", "pytest_dbsnap.cli", *args], cwd=pytester.path, capture_output=True, text=True,
            timeout=180, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        shown[f"dbsnap {args[0]}"] = cli.stdout + cli.stderr
    assert {"log backend.log", "log backend-prepare.log", "dbsnap show"} <= set(shown)
    assert "DATABASE_URL = postgresql://postgres:***@127.0.0.1" in shown["log backend.log"]
    assert "db password: ***" in shown["log backend-prepare.log"]
    assert "postgresql://postgres:***@127.0.0.1" in shown["terminal"]  # the failing assertion, redacted
    for where, text in shown.items():
        assert secret not in text, f"the cluster's secret is shown in the {where}"

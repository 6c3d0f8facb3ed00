"""The reference app end to end: real PostgreSQL, real processes, real HTTP, no mocks.

pytest-dbsnap's own tests lean on this app, so these tests pin down what they rely on: the
migrate and seed commands, the seed's determinism, the API's answers (including 503 when the
database is gone), and the frontend's config and accessible markup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import httpx
import psycopg
import pytest
from psycopg import sql

from refapp.migrate import head_revision

SEED_SCALE = 200
STARTUP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
KNOWN_KINDS = {
    "universe",
    "galaxy",
    "nebula",
    "star_system",
    "star",
    "planet",
    "moon",
    "continent",
    "city",
    "outpost",
}


class PgServer(Protocol):
    """The part of the project's ``pg_server`` fixture these tests use."""

    def dsn(self, database: str = ...) -> str: ...

    def connect(self, database: str = ...) -> psycopg.Connection[Any]: ...


@dataclass
class Service:
    """A started app process, its base URL and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# --- helpers -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(**values: str) -> dict[str, str]:
    """The test's environment without any app setting it did not choose, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PORT", "BACKEND_URL"}}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(module: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def run_ok(module: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = run_command(module, *args, env=env, cwd=cwd)
    assert result.returncode == 0, f"{module} failed ({result.returncode}):\n{result.stderr}"
    return result


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM the process group, SIGKILL it if it lingers; returns the leader's exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # Anything the leader left behind in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@contextlib.contextmanager
def started(module: str, env: dict[str, str], log: Path, health_path: str = "/health") -> Iterator[Service]:
    """Start ``python -m module`` in its own session and wait until it answers HTTP at all."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            service = Service(proc, url, log)
            wait_until_answering(service, health_path)
            yield service
        finally:
            stop(proc)


def wait_until_answering(service: Service, path: str, timeout: float = STARTUP_TIMEOUT) -> httpx.Response:
    """Poll until the server gives any HTTP answer; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    last_error = ""
    with httpx.Client(timeout=10.0) as client:
        while True:
            if service.proc.poll() is not None:
                pytest.fail(
                    f"{service.proc.args!r} exited with {service.proc.returncode} before answering:\n"
                    f"{tail(service.log)}"
                )
            try:
                return client.get(service.url + path)
            except httpx.TransportError as exc:
                last_error = repr(exc)
            if time.monotonic() > deadline:
                pytest.fail(f"{service.url}{path} did not answer within {timeout}s ({last_error})")
            time.sleep(0.05)  # poll interval only: readiness is the HTTP answer above


def poll_status(client: httpx.Client, url: str, status: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@contextlib.contextmanager
def fresh_database(pg_server: PgServer, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with pg_server.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        drop_database(pg_server, name)


def drop_database(pg_server: PgServer, name: str) -> None:
    with pg_server.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fetch_all(pg_server: PgServer, database: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with pg_server.connect(database) as conn:
        return conn.execute(query, params or None).fetchall()


def migrate_and_seed(pg_server: PgServer, database: str, cwd: Path) -> None:
    env = app_env(DATABASE_URL=pg_server.dsn(database))
    run_ok("refapp.migrate", env=env, cwd=cwd)
    run_ok("refapp.seed", "--scale", str(SEED_SCALE), env=env, cwd=cwd)


class Outline(HTMLParser):
    """Just enough of an HTML page's structure to check its accessibility basics."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.title = ""
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {key: value or "" for key, value in attrs}))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1] == "title":
            self.title += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Commands run from here, not the repository, to show they do not depend on the working directory."""
    return tmp_path_factory.mktemp("refapp")


@pytest.fixture(scope="module")
def seeded_db(pg_server: PgServer, workdir: Path) -> Iterator[str]:
    with fresh_database(pg_server, "refapp") as name:
        migrate_and_seed(pg_server, name, workdir)
        yield name


@pytest.fixture(scope="module")
def backend(pg_server: PgServer, seeded_db: str, workdir: Path) -> Iterator[Service]:
    env = app_env(DATABASE_URL=pg_server.dsn(seeded_db))
    with started("refapp.backend", env, workdir / "backend.log") as service:
        response = wait_until_answering(service, "/health")
        assert response.status_code == 200, response.text
        yield service


@pytest.fixture(scope="module")
def frontend(backend: Service, workdir: Path) -> Iterator[Service]:
    env = app_env(BACKEND_URL=backend.url)
    with started("refapp.frontend", env, workdir / "frontend.log", health_path="/") as service:
        yield service


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as http:
        yield http


# --- migrate and seed ----------------------------------------------------------------------------------


def test_migrate_records_the_head_revision(pg_server: PgServer, seeded_db: str) -> None:
    assert head_revision() == "0002"
    assert fetch_all(pg_server, seeded_db, "SELECT version_num FROM alembic_version") == [("0002",)]


def test_migrate_again_changes_nothing(pg_server: PgServer, seeded_db: str, workdir: Path) -> None:
    before = fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_nodes")
    run_ok("refapp.migrate", env=app_env(DATABASE_URL=pg_server.dsn(seeded_db)), cwd=workdir)
    assert fetch_all(pg_server, seeded_db, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_nodes") == before


def test_seed_builds_a_tree_of_the_requested_scale(pg_server: PgServer, seeded_db: str) -> None:
    assert fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_nodes") == [(SEED_SCALE,)]
    assert fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_edges") == [(SEED_SCALE // 2,)]
    kinds = {row[0] for row in fetch_all(pg_server, seeded_db, "SELECT DISTINCT kind FROM reality_nodes")}
    assert kinds <= KNOWN_KINDS
    assert {"universe", "galaxy"} <= kinds
    # Parents are always created before their children.
    assert fetch_all(
        pg_server,
        seeded_db,
        "SELECT count(*) FROM reality_nodes WHERE parent_id IS NOT NULL AND parent_id >= id",
    ) == [(0,)]
    assert fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_nodes WHERE attributes = '{}'") == [(0,)]


def test_seed_is_deterministic(pg_server: PgServer, seeded_db: str, workdir: Path) -> None:
    queries = (
        "SELECT id, parent_id, kind, name, attributes, created_at FROM reality_nodes ORDER BY id",
        "SELECT id, source_id, target_id, relation FROM reality_edges ORDER BY id",
    )
    with fresh_database(pg_server, "refapp_again") as again:
        migrate_and_seed(pg_server, again, workdir)
        for query in queries:
            assert fetch_all(pg_server, again, query) == fetch_all(pg_server, seeded_db, query)


def test_seed_refuses_an_already_seeded_database(pg_server: PgServer, seeded_db: str, workdir: Path) -> None:
    result = run_command("refapp.seed", "--scale", "5", env=app_env(DATABASE_URL=pg_server.dsn(seeded_db)), cwd=workdir)
    assert result.returncode == 2
    assert "already holds" in result.stderr
    assert fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_nodes") == [(SEED_SCALE,)]


def test_seed_refuses_an_unmigrated_database(pg_server: PgServer, workdir: Path) -> None:
    with fresh_database(pg_server, "refapp_empty") as empty:
        result = run_command("refapp.seed", "--scale", "5", env=app_env(DATABASE_URL=pg_server.dsn(empty)), cwd=workdir)
    assert result.returncode == 2
    assert "schema not migrated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("module", ["refapp.migrate", "refapp.seed", "refapp.backend"])
def test_commands_need_database_url(module: str, workdir: Path) -> None:
    result = run_command(module, env=app_env(PORT=str(free_port())), cwd=workdir)
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("port", ["", "http", "0", "70000"])
def test_backend_needs_a_valid_port(port: str, workdir: Path) -> None:
    env = app_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", PORT=port)
    result = run_command("refapp.backend", env=env, cwd=workdir)
    assert result.returncode == 2
    assert "PORT" in result.stderr


@pytest.mark.parametrize("backend_url", ["", "ftp://example.test", "not a url"])
def test_frontend_needs_a_backend_url(backend_url: str, workdir: Path) -> None:
    result = run_command("refapp.frontend", env=app_env(PORT=str(free_port()), BACKEND_URL=backend_url), cwd=workdir)
    assert result.returncode == 2
    assert "BACKEND_URL" in result.stderr


# --- backend -------------------------------------------------------------------------------------------


def test_health_reports_ok(backend: Service, client: httpx.Client) -> None:
    response = client.get(f"{backend.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_list_defaults_to_the_first_50_by_id(
    backend: Service, client: httpx.Client, pg_server: PgServer, seeded_db: str
) -> None:
    body = client.get(f"{backend.url}/api/reality-nodes").json()
    expected_ids = [row[0] for row in fetch_all(pg_server, seeded_db, "SELECT id FROM reality_nodes ORDER BY id")]
    assert (body["total"], body["limit"], body["offset"]) == (SEED_SCALE, 50, 0)
    assert [item["id"] for item in body["items"]] == expected_ids[:50]
    assert set(body["items"][0]) == {"id", "parent_id", "kind", "name", "attributes", "created_at"}


def test_pages_cover_every_node_once(
    backend: Service, client: httpx.Client, pg_server: PgServer, seeded_db: str
) -> None:
    seen: list[int] = []
    offset = 0
    while True:
        body = client.get(f"{backend.url}/api/reality-nodes", params={"limit": 64, "offset": offset}).json()
        assert body["limit"] == 64
        assert body["offset"] == offset
        if not body["items"]:
            break
        seen.extend(item["id"] for item in body["items"])
        offset += 64
    assert seen == [row[0] for row in fetch_all(pg_server, seeded_db, "SELECT id FROM reality_nodes ORDER BY id")]


def test_kind_filter_matches_sql(backend: Service, client: httpx.Client, pg_server: PgServer, seeded_db: str) -> None:
    for (kind,) in fetch_all(pg_server, seeded_db, "SELECT DISTINCT kind FROM reality_nodes"):
        query = "SELECT id FROM reality_nodes WHERE kind = %s ORDER BY id"
        ids = [row[0] for row in fetch_all(pg_server, seeded_db, query, kind)]
        body = client.get(f"{backend.url}/api/reality-nodes", params={"kind": kind, "limit": 500}).json()
        assert body["total"] == len(ids), kind
        assert [item["id"] for item in body["items"]] == ids
        assert {item["kind"] for item in body["items"]} == {kind}


def test_unknown_kind_is_an_empty_page(backend: Service, client: httpx.Client) -> None:
    body = client.get(f"{backend.url}/api/reality-nodes", params={"kind": "teapot"}).json()
    assert body == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_node_detail_matches_sql(backend: Service, client: httpx.Client, pg_server: PgServer, seeded_db: str) -> None:
    node_id, parent_id, kind, name, attributes, created_at = fetch_all(
        pg_server,
        seeded_db,
        "SELECT id, parent_id, kind, name, attributes, created_at FROM reality_nodes"
        " WHERE parent_id IS NOT NULL ORDER BY id DESC LIMIT 1",
    )[0]
    response = client.get(f"{backend.url}/api/reality-nodes/{node_id}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["parent_id"], body["kind"], body["name"]) == (node_id, parent_id, kind, name)
    assert body["attributes"] == attributes
    assert datetime.fromisoformat(body["created_at"]) == created_at


def test_missing_node_is_404(backend: Service, client: httpx.Client) -> None:
    response = client.get(f"{backend.url}/api/reality-nodes/{SEED_SCALE * 1000}")
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/reality-nodes?limit=0",
        "/api/reality-nodes?limit=501",
        "/api/reality-nodes?limit=ten",
        "/api/reality-nodes?limit=1.5",
        "/api/reality-nodes?limit=-5",
        "/api/reality-nodes?offset=-1",
        "/api/reality-nodes?offset=x",
        "/api/reality-nodes?offset=99999999999999999999999",
        "/api/reality-nodes?kind=%00",
        "/api/reality-nodes/abc",
        "/api/reality-nodes/-3",
        "/api/reality-nodes/1e3",
        "/api/reality-nodes/99999999999999999999999",
    ],
)
def test_bad_values_are_422_json(path: str, backend: Service, client: httpx.Client) -> None:
    response = client.get(backend.url + path)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]


def test_stats_match_sql(backend: Service, client: httpx.Client, pg_server: PgServer, seeded_db: str) -> None:
    kinds = dict(fetch_all(pg_server, seeded_db, "SELECT kind, count(*) FROM reality_nodes GROUP BY kind"))
    [(edges,)] = fetch_all(pg_server, seeded_db, "SELECT count(*) FROM reality_edges")
    assert client.get(f"{backend.url}/api/stats").json() == {
        "nodes": SEED_SCALE,
        "edges": edges,
        "kinds": kinds,
    }


def test_unknown_route_is_a_json_404(backend: Service, client: httpx.Client) -> None:
    response = client.get(f"{backend.url}/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


def test_cors_allows_get_from_any_origin(backend: Service, client: httpx.Client) -> None:
    origin = "http://127.0.0.1:1"
    response = client.get(f"{backend.url}/api/stats", headers={"Origin": origin})
    assert response.headers["access-control-allow-origin"] == "*"
    preflight = client.options(
        f"{backend.url}/api/reality-nodes",
        headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert "GET" in preflight.headers["access-control-allow-methods"]


def test_backend_logs_one_line_per_request(backend: Service, client: httpx.Client) -> None:
    marker = uuid.uuid4().hex
    client.get(f"{backend.url}/api/reality-nodes", params={"kind": marker})
    deadline = time.monotonic() + 10
    while marker not in backend.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in backend.log_text().splitlines() if marker in line]
    assert len(lines) == 1
    assert "GET /api/reality-nodes" in lines[0]
    assert " 200" in lines[0]


# --- backend without a database ------------------------------------------------------------------------


def test_backend_answers_503_when_the_database_does_not_exist(pg_server: PgServer, tmp_path: Path) -> None:
    env = app_env(DATABASE_URL=pg_server.dsn(f"refapp_missing_{uuid.uuid4().hex[:8]}"))
    with (
        started("refapp.backend", env, tmp_path / "backend.log") as service,
        httpx.Client(timeout=15) as http,
    ):
        health = http.get(f"{service.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error"
        assert "does not exist" in health.json()["database"]
        stats = http.get(f"{service.url}/api/stats")
        assert stats.status_code == 503
        assert "database unavailable" in stats.json()["error"]
        assert service.proc.poll() is None, "the backend must keep running without its database"
        assert stop(service.proc) == 0, tail(service.log)


def test_backend_answers_503_after_its_database_is_dropped(pg_server: PgServer, workdir: Path, tmp_path: Path) -> None:
    with fresh_database(pg_server, "refapp_doomed") as name:
        run_ok("refapp.migrate", env=app_env(DATABASE_URL=pg_server.dsn(name)), cwd=workdir)
        env = app_env(DATABASE_URL=pg_server.dsn(name))
        with (
            started("refapp.backend", env, tmp_path / "backend.log") as service,
            httpx.Client(timeout=15) as http,
        ):
            assert http.get(f"{service.url}/health").status_code == 200
            assert http.get(f"{service.url}/api/stats").json()["nodes"] == 0
            drop_database(pg_server, name)
            health = poll_status(http, f"{service.url}/health", 503)
            assert health.status_code == 503, health.text
            assert health.json()["status"] == "error"
            assert http.get(f"{service.url}/api/reality-nodes/1").status_code == 503
            assert service.proc.poll() is None, "the backend must survive losing its database"
            assert stop(service.proc) == 0, tail(service.log)


# --- frontend ------------------------------------------------------------------------------------------


def test_index_page_has_accessible_structure(frontend: Service, client: httpx.Client) -> None:
    response = client.get(f"{frontend.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = Outline()
    page.feed(response.text)
    assert page.find("html", lang="en")
    assert page.title.strip()
    assert len(page.find("h1")) == 1
    assert len(page.find("main")) == 1
    assert page.find("div", id="error", role="alert")
    assert page.find("ul", id="node-list")
    # Every form control has a label pointing at it.
    for control in page.find("select") + page.find("input"):
        assert page.find("label", **{"for": control["id"]}), control
    scripts = [tag["src"] for tag in page.find("script")]
    assert scripts == ["/config.js", "/app.js"]
    assert page.find("link", rel="stylesheet", href="/app.css")


def test_config_js_points_at_the_backend(frontend: Service, backend: Service, client: httpx.Client) -> None:
    response = client.get(f"{frontend.url}/config.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    prefix, suffix = "window.REFAPP_CONFIG = ", ";"
    text = response.text.strip()
    assert text.startswith(prefix)
    assert text.endswith(suffix)
    assert json.loads(text[len(prefix) : -len(suffix)]) == {"backendUrl": backend.url}


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/app.js", "text/javascript", "/api/reality-nodes"),
        ("/app.css", "text/css", "color"),
    ],
)
def test_assets_are_served(path: str, content_type: str, needle: str, frontend: Service, client: httpx.Client) -> None:
    response = client.get(frontend.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert needle in response.text


def test_frontend_unknown_path_is_404(frontend: Service, client: httpx.Client) -> None:
    assert client.get(f"{frontend.url}/../pyproject.toml").status_code == 404
    assert client.get(f"{frontend.url}/static/app.js").status_code == 404


def test_frontend_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = app_env(BACKEND_URL="http://127.0.0.1:1")
    with started("refapp.frontend", env, tmp_path / "frontend.log", health_path="/") as service:
        assert stop(service.proc) == 0, tail(service.log)

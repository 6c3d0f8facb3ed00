"""`dbsnap init` on generated projects: what it detects, that it never replaces a block, --dry-run, and that the
block it writes for an Alembic project (made by `alembic init`) runs `pytest -m smoke` unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pytest_dbsnap.cli import main
from pytest_dbsnap.cli.init import init_project

MIGRATION = """\
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE items (id serial PRIMARY KEY, name text)")


def downgrade() -> None:
    op.execute("DROP TABLE items")
"""


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The inner runs must not see the caller's DBSNAP_* or DATABASE_URL, and share one pristine-cluster cache;
    their clusters are not parked (warm_cluster), as init's block does not say."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    monkeypatch.setenv("DBSNAP_WARM_CLUSTER", "false")


def test_an_alembic_project_made_by_alembic_init_runs_unchanged(pytester: pytest.Pytester, isolated: None) -> None:
    alembic = shutil.which("alembic", path=str(Path(sys.executable).parent))
    assert alembic is not None
    subprocess.run([alembic, "init", "migrations"], cwd=pytester.path, check=True, capture_output=True)
    (pytester.path / "migrations" / "versions" / "0001_items.py").write_text(MIGRATION)

    assert main(["init", "--path", str(pytester.path)]) == 0

    written = tomllib.loads((pytester.path / "pyproject.toml").read_text())["tool"]["dbsnap"]
    assert written["schema_version_query"] == "SELECT version_num FROM alembic_version"
    assert written["fingerprint_inputs"] == ["migrations/versions"]
    result = pytester.runpytest_subprocess("-m", "smoke", "-v", "-p", "no:cacheprovider", timeout=180)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["dbsnap::database::schema_version PASSED*", "dbsnap::database::row_counts PASSED*"])


# A Django-like manage.py: `migrate` reads DATABASE_URL and is idempotent, `runserver HOST:PORT --noreload`
# serves the admin login page, as a project set up with dj-database-url does.
MANAGE_PY = """\
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import psycopg

if sys.argv[1] == "migrate":
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS django_migrations (id serial PRIMARY KEY, app text, name text)")
        conn.execute("INSERT INTO django_migrations (app, name) SELECT 'auth', '0001_initial' "
                     "WHERE NOT EXISTS (SELECT 1 FROM django_migrations)")
    sys.exit(0)
assert sys.argv[1] == "runserver" and sys.argv[3] == "--noreload", sys.argv
host, port = sys.argv[2].rsplit(":", 1)
PAGE = (b'<!doctype html><html lang="en"><head><title>Log in</title></head>'
        b'<body><main><h1>Site administration</h1></main></body></html>')


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path == "/admin/login/"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)


ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
"""


def test_a_django_like_project_runs_unchanged(pytester: pytest.Pytester, isolated: None) -> None:
    (pytester.path / "manage.py").write_text(MANAGE_PY)

    assert main(["init", "--path", str(pytester.path)]) == 0

    result = pytester.runpytest_subprocess("-m", "smoke", "-v", "-p", "no:cacheprovider", timeout=180)
    assert result.ret == 0, result.stdout.str()
    for nodeid in ("database::schema_version", "database::row_counts", "backend::health", "frontend::answers"):
        result.stdout.fnmatch_lines([f"dbsnap::{nodeid} PASSED*"])


def test_it_never_replaces_a_block_and_dry_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "shop"\n')

    assert main(["init", "--dry-run", "--path", str(tmp_path)]) == 0
    assert "[tool.dbsnap]" in capsys.readouterr().out
    assert pyproject.read_text() == '[project]\nname = "shop"\n'

    assert main(["init", "--path", str(tmp_path)]) == 0
    written = pyproject.read_text()
    assert written.startswith('[project]\nname = "shop"\n\n# pytest-dbsnap')
    assert "set migrate_command" in capsys.readouterr().out  # nothing detected: says what is left to fill

    assert main(["init", "--path", str(tmp_path)]) == 2
    assert "has a [tool.dbsnap] block already, and dbsnap init never replaces one" in capsys.readouterr().err
    assert pyproject.read_text() == written


def test_a_git_project_gets_reports_and_snapshots_ignored_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("node_modules/")  # no final newline: the new lines still start a line

    assert main(["init", "--path", str(tmp_path)]) == 0
    assert "added to" in capsys.readouterr().out
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "node_modules/"
    assert "reports/" in lines
    assert "seeds/dumps/**/*.pgdata-*" in lines

    (tmp_path / "pyproject.toml").unlink()
    assert main(["init", "--path", str(tmp_path)]) == 0
    assert (tmp_path / ".gitignore").read_text().splitlines() == lines  # nothing twice


def test_a_node_project_without_migrations_is_asked_for_its_migrate_command(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"directus": "11"}}))
    block, todo, _path = init_project(tmp_path, dry_run=True)
    assert "Node (package.json)" in block
    assert any("migrate_command" in item for item in todo)


def test_a_folder_outside_git_gets_no_gitignore(tmp_path: Path) -> None:
    assert main(["init", "--path", str(tmp_path)]) == 0
    assert not (tmp_path / ".gitignore").exists()


def test_a_missing_pyproject_is_created(tmp_path: Path) -> None:
    init_project(tmp_path, dry_run=False)
    assert "dbsnap" in tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"prisma/schema.prisma": "", "package.json": {"scripts": {"start": "node server.js"}}},
            ['migrate_command = "npx prisma migrate deploy"', 'seed_command = "npx prisma db seed"', "npm run start"],
        ),
        (
            {"knexfile.js": "", "package.json": {"scripts": {"dev": "node ."}}},
            ['migrate_command = "npx knex migrate:latest"', 'seed_command = "npx knex seed:run"', "npm run dev"],
        ),
        ({"drizzle.config.ts": "", "package.json": {}}, ['migrate_command = "npx drizzle-kit migrate"']),
        (
            {".sequelizerc": "", "package.json": {"devDependencies": {"sequelize-cli": "6"}}},
            ['migrate_command = "npx sequelize-cli db:migrate --url {database_url}"'],
        ),
        (
            {"package.json": {"scripts": {"db:migrate": "x", "db:seed": "y"}}},
            ['migrate_command = "npm run db:migrate"', 'seed_command = "npm run db:seed"'],
        ),
        (
            {"manage.py": "", "requirements.txt": "Django>=5.2,<6\n# a comment\n-r base.txt\nwagtail[search]==8.0\n"},
            [
                'migrate_command = "python manage.py migrate --noinput"',
                'fingerprint_packages = ["django", "wagtail"]',
                'command = "python manage.py runserver 127.0.0.1:{port} --noreload"',
                'url = "{backend_url}/admin/login/"',
            ],
        ),
        (
            {"compose.yaml": "services:\n  web:\n    image: nginx\n  db:\n    image: postgres:16\n"},
            ['compose_file = "compose.yaml"', 'compose_service = "db"'],
        ),
    ],
    ids=["prisma", "knex", "drizzle", "sequelize", "npm-scripts", "django", "compose"],
)
def test_detects_what_the_project_uses(tmp_path: Path, files: dict[str, object], expected: list[str]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))

    block, _todo, _path = init_project(tmp_path, dry_run=True)

    for line in expected:
        assert line in block, block
    tomllib.loads(block)  # the block is valid TOML as written

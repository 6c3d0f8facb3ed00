"""A project made by `django-admin startproject` and configured by `dbsnap init`, neither file edited: migrate,
the seed, runserver and the smoke suite run on the session's PostgreSQL (through pytest_dbsnap.django_settings),
with pytest-django and without it, and no db.sqlite3 appears. A real cluster, real Django, real HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from pytest_dbsnap.cli import main

pytest.importorskip("django")

# The seed is given by the environment (DBSNAP_SEED_COMMAND), so that the block init wrote stays as it is.
SEED = "python manage.py createsuperuser --noinput --username seeded --email seeded@example.com"
PASSWORD = "a-seeded-password"  # noqa: S105 - a throwaway test user; createsuperuser reads DJANGO_SUPERUSER_PASSWORD

SMOKE_TESTS = f"""
import re

import httpx
import pytest

pytestmark = pytest.mark.smoke


def test_migrate_and_the_seed_wrote_to_the_sessions_postgresql(dbsnap_db):
    assert dbsnap_db.execute("SELECT count(*) FROM django_migrations WHERE app = 'auth'").fetchone()[0] > 0
    assert dbsnap_db.execute("SELECT username, is_superuser FROM auth_user").fetchall() == [("seeded", True)]


def test_runserver_logs_in_the_seeded_user_from_the_sessions_postgresql(backend, dbsnap_db):
    with httpx.Client(base_url=backend.url, timeout=10) as client:
        page = client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
        answer = client.post(
            "/admin/login/?next=/admin/",
            data={{"csrfmiddlewaretoken": token, "username": "seeded", "password": "{PASSWORD}"}},
        )
    assert answer.status_code == 302, answer.text[:500]
    assert answer.headers["location"] == "/admin/"
    # Django keeps the login's session in the database the server uses: this one.
    assert dbsnap_db.execute("SELECT count(*) FROM django_session").fetchone() == (1,)
"""

# With pytest-django: Django's own tests, in this process, see the seeded user too.
DJANGO_DB_TEST = """
import pytest
from django.contrib.auth.models import User
from django.db import connection


@pytest.mark.smoke
@pytest.mark.django_db
def test_pytest_django_sees_the_seeded_user(dbsnap_database):
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["NAME"] == dbsnap_database.database
    assert list(User.objects.values_list("username", flat=True)) == ["seeded"]
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("pytest_django", [True, False], ids=["with-pytest-django", "without-pytest-django"])
def test_a_startproject_project_runs_on_the_sessions_postgresql(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    pytest_django: bool,
) -> None:
    if pytest_django:
        pytest.importorskip("pytest_django")
    for name in list(os.environ):
        if name.startswith(("DBSNAP_", "DJANGO_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    monkeypatch.setenv("DBSNAP_WARM_CLUSTER", "false")  # nothing parked for a one-off project
    monkeypatch.setenv("DBSNAP_SEED_COMMAND", SEED)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    root = pytester.path
    django_admin = shutil.which("django-admin", path=str(Path(sys.executable).parent))
    assert django_admin is not None
    assert pytester.run(django_admin, "startproject", "shop", ".").ret == 0
    settings_py = root / "shop" / "settings.py"
    before = _digest(settings_py)
    assert "sqlite3" in settings_py.read_text()  # as generated: Django's default database is a SQLite file

    assert main(["init", "--path", str(root)]) == 0
    block = (root / "pyproject.toml").read_text()

    args = ["-m", "smoke", "-v", "-p", "no:cacheprovider", "-p", "no:xdist"]
    if pytest_django:
        with (root / "pyproject.toml").open("a") as pyproject:  # the user's pytest-django setting, not our block
            pyproject.write('\n[tool.pytest.ini_options]\nDJANGO_SETTINGS_MODULE = "shop.settings"\n')
        pytester.makepyfile(test_06_django=DJANGO_DB_TEST)
    else:
        args += ["-p", "no:django"]
    pytester.makepyfile(test_05_data=SMOKE_TESTS)

    result = pytester.runpytest_subprocess(*args, timeout=300)

    assert result.ret == 0, result.stdout.str()
    for phase in ("environment", "database", "backend", "frontend", "data"):
        result.stdout.fnmatch_lines([f" *{phase} *passed *"])
    result.stdout.fnmatch_lines(["*test_runserver_logs_in_the_seeded_user_from_the_sessions_postgresql PASSED*"])
    if pytest_django:
        result.stdout.fnmatch_lines(["*test_pytest_django_sees_the_seeded_user PASSED*"])
    assert not (root / "db.sqlite3").exists(), "something ran on SQLite"
    assert _digest(settings_py) == before
    assert (root / "pyproject.toml").read_text().startswith(block)  # init's block, as written
    # runserver checks for unapplied migrations as it starts, on the database it was given: this one had none.
    assert "unapplied migration" not in (root / "reports" / "logs" / "backend.log").read_text()

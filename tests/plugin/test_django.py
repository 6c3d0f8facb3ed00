"""A generated Django project (django-admin startproject, one app with a model and its migration made by
makemigrations, a seed management command) run with pytest-django: Django's tests run on the restored database,
see the seeded rows, are rolled back, and a transactional test does not empty the database for later tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

pytest.importorskip("django")
pytest.importorskip("pytest_django")

# What dj-database-url does, written out so that the test needs no more packages: DATABASE_URL (set by
# pytest-dbsnap for migrate and seed) names the database; without it Django uses SQLite, as a new project does.
SETTINGS_TAIL = """
INSTALLED_APPS += ["shop"]

import os as _os
from urllib.parse import parse_qs as _parse_qs, unquote as _unquote, urlsplit as _urlsplit

if _os.environ.get("DATABASE_URL"):
    _url = _urlsplit(_os.environ["DATABASE_URL"])
    _query = {key: values[-1] for key, values in _parse_qs(_url.query).items()}
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _unquote(_url.path.lstrip("/")),
            "USER": _unquote(_url.username or ""),
            "PASSWORD": _unquote(_url.password or ""),
            "HOST": _url.hostname or _query.get("host", ""),
            "PORT": str(_url.port or _query.get("port", "")),
        }
    }
"""

MODELS = """
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100, unique=True)
"""

SEED = """
from django.core.management.base import BaseCommand

from shop.models import Item


class Command(BaseCommand):
    help = "seed three items"

    def handle(self, *args, **options):
        for name in ("apple", "pear", "plum"):
            Item.objects.create(name=name)
"""

PYPROJECT = """
[tool.dbsnap]
database = "app"
env = "dev"
dumps_dir = "dumps"
migrate_command = "python manage.py migrate --noinput"
seed_command = "python manage.py seed"
fingerprint_inputs = ["shop"]
fingerprint_packages = ["django"]
schema_version_query = "SELECT app, name FROM django_migrations ORDER BY app, name"

[tool.pytest.ini_options]
DJANGO_SETTINGS_MODULE = "proj.settings"
"""

DJANGO_TESTS = """
import os

import pytest
from django.db import connection

from shop.models import Item


@pytest.mark.django_db
def test_seeded_rows_are_visible_and_a_write_stays_in_the_test(dbsnap_database):
    assert connection.settings_dict["NAME"] == dbsnap_database.database  # app, or app_gw0 under xdist
    assert sorted(Item.objects.values_list("name", flat=True)) == ["apple", "pear", "plum"]
    Item.objects.create(name="quince")
    assert Item.objects.count() == 4


@pytest.mark.django_db
def test_the_write_was_rolled_back():
    assert Item.objects.count() == 3
    assert not Item.objects.filter(name="quince").exists()


@pytest.mark.django_db(transaction=True)
def test_a_transactional_test_gets_a_private_clone():
    assert connection.settings_dict["NAME"].startswith("dbsnap_test_")
    assert Item.objects.count() == 3
    Item.objects.create(name="committed")


def test_the_shared_database_kept_its_rows_and_the_plugin_fixtures_work(dbsnap_db, dbsnap_database):
    # pytest-django runs plain tests after transactional ones, so this one comes after the flush above.
    assert dbsnap_db.execute("SELECT name FROM shop_item ORDER BY name").fetchall() == [
        ("apple",), ("pear",), ("plum",)
    ]
    assert dbsnap_database.meta.schema_version.startswith("sha256:")  # the applied migrations, hashed
    # This process's clones (their names carry its pid): under xdist the other worker's may exist right now.
    clones = dbsnap_db.execute(
        "SELECT count(*) FROM pg_database WHERE datname LIKE %s", (f"dbsnap_test_{os.getpid()}_%",)
    ).fetchone()
    assert clones == (0,)
"""


def _django(project: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def django_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith(("DBSNAP_", "DJANGO_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    root = pytester.path
    _django(root, "-m", "django", "startproject", "proj", ".")
    with (root / "proj" / "settings.py").open("a") as settings:
        settings.write(SETTINGS_TAIL)
    (root / "shop" / "migrations").mkdir(parents=True)
    (root / "shop" / "management" / "commands").mkdir(parents=True)
    for init in ("shop", "shop/migrations", "shop/management", "shop/management/commands"):
        (root / init / "__init__.py").write_text("")
    (root / "shop" / "models.py").write_text(MODELS)
    (root / "shop" / "management" / "commands" / "seed.py").write_text(SEED)
    _django(root, "manage.py", "makemigrations", "shop")  # on SQLite: DATABASE_URL is not set here
    assert (root / "shop" / "migrations" / "0001_initial.py").is_file()
    (root / "db.sqlite3").unlink(missing_ok=True)
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_shop=DJANGO_TESTS)
    yield root
    settings_ = load_settings(project_root=root.resolve(), pyproject=root / "pyproject.toml", environ={})
    if settings_.warm_key is not None:
        slot = LocalCluster(find_pg_tools(None), cache_dir=cache, warm_key=settings_.warm_key).warm_slot
        if slot is not None:
            shutil.rmtree(slot, ignore_errors=True)


def test_django_tests_run_on_the_restored_database(pytester: pytest.Pytester, django_project: Path) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=300)
    result.assert_outcomes(passed=4)
    assert any(line.startswith("database: dev/") and "-> 'app'" in line for line in result.stdout.lines)
    assert not (django_project / "db.sqlite3").exists(), "a test ran on SQLite"
    assert "Creating test database" not in result.stdout.str() + result.stderr.str()


def test_two_xdist_workers_each_run_django_tests_on_their_own_database(
    pytester: pytest.Pytester, django_project: Path
) -> None:
    pytest.importorskip("xdist")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=300)
    result.assert_outcomes(passed=4)


def test_turned_off_pytest_django_makes_its_own_test_database(pytester: pytest.Pytester, django_project: Path) -> None:
    """With django = false the plugin leaves Django alone: its tests run on pytest-django's SQLite test
    database, which has no seeded rows."""
    pytester.makepyfile(
        test_shop="""
import pytest
from django.db import connection

from shop.models import Item


@pytest.mark.django_db
def test_pytest_djangos_own_database():
    assert connection.vendor == "sqlite"
    assert Item.objects.count() == 0
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--no-dbsnap-django")
    result.assert_outcomes(passed=1)

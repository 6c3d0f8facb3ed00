"""pytest_dbsnap.django_settings, imported as Django would in an app process: the project's settings with the
default database taken from DATABASE_URL, what else the project said kept, and nothing but the standard library
loaded; and django_env, which decides when an app process gets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_dbsnap.config.django_env import PROJECT_SETTINGS_VARIABLE, SHIM_MODULE, django_settings_env

PROBE = """
import json, sys
import pytest_dbsnap.django_settings as settings
print(json.dumps({
    "settings": {name: getattr(settings, name) for name in dir(settings) if name.isupper()},
    "loaded": sorted(m for m in ("pytest", "psycopg", "django", "httpx") if m in sys.modules),
}))
"""


def _load(tmp_path: Path, project_settings: str, database_url: str | None) -> dict[str, object]:
    (tmp_path / "site_settings.py").write_text(project_settings)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({PROJECT_SETTINGS_VARIABLE: "site_settings", "PYTHONPATH": str(tmp_path)})
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    finished = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr
    answer: dict[str, object] = json.loads(finished.stdout)
    return answer


SQLITE_PROJECT = """
SECRET_KEY = "x"
DEBUG = True
lower_case_is_not_a_setting = 1
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3", "OPTIONS": {"timeout": 20},
                "ATOMIC_REQUESTS": True},
    "legacy": {"ENGINE": "django.db.backends.sqlite3", "NAME": "legacy.sqlite3"},
}
"""


def test_a_sqlite_default_becomes_the_session_database_and_the_rest_stays(tmp_path: Path) -> None:
    url = "postgresql://app%40user:p%2Fss%3Aw@127.0.0.1:5433/app_gw0?sslmode=disable"
    answer = _load(tmp_path, SQLITE_PROJECT, url)
    settings = answer["settings"]
    assert isinstance(settings, dict)
    assert settings["DATABASES"]["default"] == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app_gw0",
        "USER": "app@user",
        "PASSWORD": "p/ss:w",
        "HOST": "127.0.0.1",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "disable"},  # SQLite's timeout is gone: psycopg would refuse it
        "ATOMIC_REQUESTS": True,
    }
    assert settings["DATABASES"]["legacy"]["NAME"] == "legacy.sqlite3"
    assert settings["SECRET_KEY"] == "x"  # noqa: S105 - the test project's own
    assert settings["DEBUG"] is True
    assert set(settings) == {"SECRET_KEY", "DEBUG", "DATABASES"}  # only the project's settings, none of ours
    assert answer["loaded"] == []  # the standard library only: no pytest, psycopg or Django of ours


def test_a_socket_folder_and_a_postgis_engine(tmp_path: Path) -> None:
    project = """
DATABASES = {"default": {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "mine",
                         "OPTIONS": {"application_name": "shop"}, "CONN_MAX_AGE": 60}}
"""
    answer = _load(tmp_path, project, "postgresql://postgres@/app?host=%2Ftmp%2Fdbsnap+sock&port=6543")
    settings = answer["settings"]
    assert isinstance(settings, dict)
    assert settings["DATABASES"]["default"] == {
        "ENGINE": "django.contrib.gis.db.backends.postgis",  # a PostGIS project stays one
        "NAME": "app",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": "/tmp/dbsnap sock",
        "PORT": "6543",
        "OPTIONS": {"application_name": "shop"},
        "CONN_MAX_AGE": 60,
    }


def test_without_database_url_the_projects_databases_are_kept(tmp_path: Path) -> None:
    answer = _load(tmp_path, SQLITE_PROJECT, None)
    settings = answer["settings"]
    assert isinstance(settings, dict)
    assert settings["DATABASES"]["default"]["NAME"] == "db.sqlite3"


def test_a_missing_project_module_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != PROJECT_SETTINGS_VARIABLE}
    finished = subprocess.run(
        [sys.executable, "-c", "import pytest_dbsnap.django_settings"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert finished.returncode != 0
    assert f"{PROJECT_SETTINGS_VARIABLE} does not name one" in finished.stderr


MANAGE_PY = """#!/usr/bin/env python
import os
import sys

def main():
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')
"""


@pytest.mark.parametrize(
    ("manage_py", "environ", "expected"),
    [
        (MANAGE_PY, {}, "shop.settings"),  # what startproject wrote
        (MANAGE_PY, {"DJANGO_SETTINGS_MODULE": "shop.settings_ci"}, "shop.settings_ci"),  # the user's choice wins
        (None, {"DJANGO_SETTINGS_MODULE": "shop.settings_ci"}, "shop.settings_ci"),
        (MANAGE_PY, {"DJANGO_SETTINGS_MODULE": SHIM_MODULE, PROJECT_SETTINGS_VARIABLE: "a.b"}, "a.b"),  # nested
        ("import sys\n", {}, None),  # a manage.py that names no settings: not wrapped
        (None, {}, None),  # not a Django project
    ],
)
def test_which_processes_get_the_wrapped_settings(
    tmp_path: Path, manage_py: str | None, environ: dict[str, str], expected: str | None
) -> None:
    if manage_py is not None:
        (tmp_path / "manage.py").write_text(manage_py)
    added = django_settings_env(tmp_path, environ)
    if expected is None:
        assert added == {}
    else:
        assert added == {"DJANGO_SETTINGS_MODULE": SHIM_MODULE, PROJECT_SETTINGS_VARIABLE: expected}

"""Which Django settings the app's processes (migrate, the seed, services, command checks) get: the project's
own, wrapped by pytest_dbsnap.django_settings so that DATABASES["default"] is the database named by
DATABASE_URL and settings.py needs no change. Standard library only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

SHIM_MODULE = "pytest_dbsnap.django_settings"
PROJECT_SETTINGS_VARIABLE = "DBSNAP_DJANGO_PROJECT_SETTINGS"  # read by the shim module
# What `django-admin startproject` writes into manage.py: os.environ.setdefault("DJANGO_SETTINGS_MODULE", "x.y")
_MANAGE_PY_DEFAULT = re.compile(r"""environ\.setdefault\(\s*["']DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)["']""")


def project_settings_module(project_root: Path, environ: Mapping[str, str]) -> str | None:
    """The project's settings module: DJANGO_SETTINGS_MODULE where the app's environment names one (the user's
    shell, [tool.dbsnap.env], pytest-django's setting), else the default manage.py sets; None for a project
    that is not Django (or whose manage.py names none)."""
    named = environ.get("DJANGO_SETTINGS_MODULE")
    if named == SHIM_MODULE:  # a session inside a session's app: the wrapped module is named already
        return environ.get(PROJECT_SETTINGS_VARIABLE) or None
    if named:
        return named
    try:
        text = (project_root / "manage.py").read_text(errors="replace")
    except OSError:
        return None
    match = _MANAGE_PY_DEFAULT.search(text)
    return match[1] if match else None


def django_settings_env(project_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to an app process's environment `environ` (empty when the project is not Django)."""
    module = project_settings_module(project_root, environ)
    if module is None:
        return {}
    return {"DJANGO_SETTINGS_MODULE": SHIM_MODULE, PROJECT_SETTINGS_VARIABLE: module}

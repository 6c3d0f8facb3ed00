"""pytest-dbsnap: a seeded PostgreSQL database and a running stack in seconds.

What a project's own smoke phase modules need is importable from here, typed (the fixtures hand out these
types): `from pytest_dbsnap import RunningService, DatabaseOutcome, Settings`. The names are loaded on first use,
so `import pytest_dbsnap` stays cheap and pulls in neither pytest nor a browser.

    Settings, ServiceSettings   what `dbsnap_settings` gives: the resolved configuration
    Server, PgTools             what `pg_server` gives, and `find_pg_tools` (where the Postgres programs are)
    DatabaseOutcome, DumpMeta   what `dbsnap_database` / `dbsnap_dump` give; `verify_restored_dump` checks its sha256
    RunningService              what `backend` / `frontend` give: url, client, log_path
    RenderedPage, describe_violations   what `frontend_page` gives, and its axe-core violations as text
    count_rows                  exact row counts of every table of a connection, as dump metadata records them
    DbsnapError and its family  the errors a user can cause (see pytest_dbsnap.errors)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_dbsnap.errors import (
    ConfigError,
    DbsnapError,
    DumpCorrupt,
    DumpError,
    DumpNotFound,
    RenderError,
    ServerError,
    ServiceError,
    ToolError,
)

if TYPE_CHECKING:
    from pytest_dbsnap.config.settings import ServiceSettings, Settings
    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.dumps.restore import count_rows
    from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools
    from pytest_dbsnap.stack.browser import RenderedPage, describe_violations
    from pytest_dbsnap.stack.services import RunningService
    from pytest_dbsnap.stack.session import DatabaseOutcome, verify_restored_dump

from pytest_dbsnap._version import __version__


def _imported_as_plain_modules() -> None:
    """pytest passes every module of a plugin's distribution through its assertion rewriter, which compiles each
    one again instead of using the bytecode pip wrote: wherever pytest cannot cache its own (the first run on a
    fresh CI runner, a read-only venv, PYTHONDONTWRITEBYTECODE) that is 0.2-0.3 s per session for the modules a
    session imports. Ours assert nothing a test reads, so the rest of the package is imported as plain modules.
    (This reads private attributes of pytest's import hook; without them nothing changes.)"""
    import sys

    for finder in sys.meta_path:
        marked = getattr(finder, "_must_rewrite", None)
        cache = getattr(finder, "_marked_for_rewrite_cache", None)
        if type(finder).__name__ == "AssertionRewritingHook" and isinstance(marked, set) and isinstance(cache, dict):
            marked.discard(__name__)
            for name in [name for name in cache if name.split(".", 1)[0] == __name__]:
                del cache[name]


_imported_as_plain_modules()

_LAZY = {
    "RenderedPage": "pytest_dbsnap.stack.browser",
    "describe_violations": "pytest_dbsnap.stack.browser",
    "DumpMeta": "pytest_dbsnap.dumps.meta",
    "count_rows": "pytest_dbsnap.dumps.restore",
    "RunningService": "pytest_dbsnap.stack.services",
    "PgTools": "pytest_dbsnap.postgres.base",
    "Server": "pytest_dbsnap.postgres.base",
    "find_pg_tools": "pytest_dbsnap.postgres.base",
    "DatabaseOutcome": "pytest_dbsnap.stack.session",
    "verify_restored_dump": "pytest_dbsnap.stack.session",
    "ServiceSettings": "pytest_dbsnap.config.settings",
    "Settings": "pytest_dbsnap.config.settings",
}

__all__ = [
    "ConfigError",
    "DatabaseOutcome",
    "DbsnapError",
    "DumpCorrupt",
    "DumpError",
    "DumpMeta",
    "DumpNotFound",
    "PgTools",
    "RenderError",
    "RenderedPage",
    "RunningService",
    "Server",
    "ServerError",
    "ServiceError",
    "ServiceSettings",
    "Settings",
    "ToolError",
    "__version__",
    "count_rows",
    "describe_violations",
    "find_pg_tools",
    "verify_restored_dump",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dbsnap' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""The summary line of a deferred app database: made when a test first read it, never read, or read and not made
(its making failed or the run was stopped meanwhile), which must not read as "no test used it"."""

from __future__ import annotations

import pytest

from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.errors import DumpError
from pytest_dbsnap.stack.session import DatabaseOutcome

META = DumpMeta(
    name="20261204T010203Z-c1176cd-0a1b2c3d",
    environment="dev",
    database="app",
    created_at="2026-12-04T01:02:03Z",
    sha256="0" * 64,
    size_bytes=4,
    pg_dump_version="15.4",
    server_version="15.4",
)


def deferred(make: object) -> DatabaseOutcome:
    outcome = DatabaseOutcome("app", "template clone", 0.25, META)
    outcome.deferred, outcome._make = True, make  # type: ignore[assignment]
    return outcome


def test_a_deferred_app_database_made_on_first_read_says_how_long_it_took() -> None:
    made: list[str] = []
    outcome = deferred(lambda: made.append("app"))

    assert outcome.database == "app"
    assert outcome.database == "app"

    assert made == ["app"], "made once, on the first read"
    assert ", made when first used (" in outcome.describe()


def test_a_deferred_app_database_nobody_read_says_so() -> None:
    outcome = deferred(lambda: None)

    assert outcome.describe().endswith("'app' not made: no test used it (fresh_db copies come from the template)")


def test_a_deferred_app_database_whose_making_failed_does_not_claim_nobody_used_it() -> None:
    def make() -> None:
        raise DumpError("the template is gone")

    outcome = deferred(make)

    for _ in range(2):  # the next reader gets the same error
        with pytest.raises(DumpError, match="the template is gone"):
            _ = outcome.database

    line = outcome.describe()
    assert line.endswith("'app' not made: its making failed or was stopped"), line
    assert "no test used it" not in line

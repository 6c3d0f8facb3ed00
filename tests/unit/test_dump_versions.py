"""check_readable: which dumps the pg_restore at hand can read (its own major and older), and the one paragraph
that refuses the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.dumps.restore import check_readable
from pytest_dbsnap.errors import DumpError, DumpTooNew
from pytest_dbsnap.postgres.base import PgTools

PG15 = PgTools(Path("/usr/lib/postgresql/15/bin"), "15.18")


@pytest.mark.parametrize("written_by", ["15.18", "15.0", "14.9", "9.6.24", "13"])
def test_the_same_or_an_older_major_is_readable(written_by: str) -> None:
    check_readable(written_by, PG15, dump="dev/a (x.dump)")


@pytest.mark.parametrize("written_by", ["16.0", "18.6", "18.1 (Debian 18.1-1)", "19beta1"])
def test_a_newer_major_is_refused_with_the_fix(written_by: str) -> None:
    with pytest.raises(DumpTooNew) as caught:
        check_readable(written_by, PG15, dump="dev/20260101T000000Z-abc (/store/dev/20260101T000000Z-abc.dump)")

    error = caught.value
    major = int(written_by.split(".")[0].removesuffix("beta1"))
    assert isinstance(error, DumpError)  # the plugin and the CLI show DumpErrors as one paragraph
    assert (error.dump_major, error.restore_major) == (major, 15)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(
        "The dump dev/20260101T000000Z-abc (/store/dev/20260101T000000Z-abc.dump) was written by pg_dump "
        f"{written_by}, and the pg_restore that would read it here is PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)"
    )
    assert "Nothing was changed" in message
    assert "pip install 'pytest-dbsnap[server]'" in message
    assert f"at a PostgreSQL >= {major} installation" in message


def test_a_version_without_a_number_is_left_to_pg_restore() -> None:
    check_readable("unknown", PG15, dump="dev/a (x.dump)")


def test_the_compose_error_leads_with_the_init_scripts_refusal() -> None:
    """The container's log lines as compose prints them: the refusal of init-db.sh is picked out of them."""
    from pytest_dbsnap.postgres.compose import init_refusal

    logs = (
        "dumps-1     | init-db: staged dump 20260101T000000Z-abc of environment dev (chosen by /dumps/dev/latest)\n"
        "postgres-1  | init-db: refusing to restore: the dump dev/20260101T000000Z-abc (/dumps/dev/x.dump) was "
        "written by pg_dump 18.6, and the pg_restore of this image is PostgreSQL 15.18, ... start again.\n"
        "postgres-1  | \n"
    )
    assert init_refusal(logs) == (
        "the dump dev/20260101T000000Z-abc (/dumps/dev/x.dump) was written by pg_dump 18.6, and the pg_restore "
        "of this image is PostgreSQL 15.18, ... start again."
    )
    assert init_refusal("postgres-1  | database system is ready to accept connections\n") is None

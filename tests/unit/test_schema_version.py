"""schema_version_query: one value is the version as it is; several rows (Django's applied migrations) are
hashed, so adding a migration changes the version."""

from __future__ import annotations

from pytest_dbsnap.dumps.generate import schema_version_of

MIGRATIONS = [("auth", "0001_initial"), ("shop", "0001_initial")]


def test_one_value_is_kept_as_it_is() -> None:
    assert schema_version_of([("0002",)]) == "0002"
    assert schema_version_of([(None,)]) is None
    assert schema_version_of([]) is None


def test_several_rows_are_hashed_and_a_new_migration_changes_the_version() -> None:
    version = schema_version_of(MIGRATIONS)
    assert version is not None
    assert version.startswith("sha256:")
    assert version.endswith(" (2 rows)")
    assert schema_version_of(list(MIGRATIONS)) == version
    assert schema_version_of([*MIGRATIONS, ("shop", "0002_price")]) != version
    assert schema_version_of([("auth", "0001_initial"), ("shop", "0001_other")]) != version

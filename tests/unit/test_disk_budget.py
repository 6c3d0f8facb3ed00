"""The disk_budget and fresh_db_pool settings: what they accept, what they refuse, and what a factor means."""

from __future__ import annotations

import pytest

from pytest_dbsnap.config.parsers import DiskBudget, parse_count, parse_disk_budget


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20GB", DiskBudget(size_bytes=20 * 10**9)),
        ("500 MiB", DiskBudget(size_bytes=500 * 2**20)),
        ("1.5gb", DiskBudget(size_bytes=1_500_000_000)),
        ("1000000", DiskBudget(size_bytes=1_000_000)),
        (1000000, DiskBudget(size_bytes=1_000_000)),
        ("2x", DiskBudget(factor=2.0)),
        ("2.5X", DiskBudget(factor=2.5)),
    ],
)
def test_sizes_and_factors(raw: object, expected: DiskBudget) -> None:
    assert parse_disk_budget(raw) == expected


@pytest.mark.parametrize("raw", ["", "lots", "0.5x", "-1GB", "0", "20 parsecs", True])
def test_anything_else_is_refused_with_the_forms_it_takes(raw: object) -> None:
    with pytest.raises(ValueError, match="20GB") if raw != "0.5x" else pytest.raises(ValueError, match="1x or more"):
        parse_disk_budget(raw)


def test_a_factor_is_of_the_databases_size_and_a_size_is_itself() -> None:
    assert DiskBudget(factor=2.0).limit(300_000_000) == 600_000_000
    assert DiskBudget(size_bytes=10**9).limit(300_000_000) == 10**9
    assert str(DiskBudget(factor=2.0)) == "2x the database"
    assert str(DiskBudget(size_bytes=20 * 10**9)) == "20 GB"


def test_the_pool_size_takes_zero_to_turn_it_off() -> None:
    assert parse_count("0") == 0
    assert parse_count(2) == 2
    for raw in ("-1", "two", True, 1.5):
        with pytest.raises(ValueError, match="0 or more"):
            parse_count(raw)

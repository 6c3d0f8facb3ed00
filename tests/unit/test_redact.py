"""Redaction: whatever is shown passes through redact(), so every password form must come out as ***."""

from __future__ import annotations

import pytest

from pytest_dbsnap.core.redact import add_secret, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:s3cr3t@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgres://app:s3:cr/3t@db/app", "postgres://app:***@db/app"),
        ("postgresql+psycopg://:s3cr3t@localhost/app", "postgresql+psycopg://:***@localhost/app"),
        (
            "cannot reach postgresql://a:s3cr3t@h1/x nor postgresql://b:0ther@h2/y",
            "cannot reach postgresql://a:***@h1/x nor postgresql://b:***@h2/y",
        ),
    ],
    ids=["url", "url-with-colon-and-slash", "url-without-user", "two-urls"],
)
def test_url_passwords_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db password=s3cr3t user=app", "host=db password=*** user=app"),
        ("host=db password = s3cr3t", "host=db password = ***"),
        ("host=db password='s3 cr3t' user=app", "host=db password=*** user=app"),
        (r"host=db password='it\'s s3cr3t' user=app", "host=db password=*** user=app"),
        ("host=db PASSWORD=s3cr3t", "host=db PASSWORD=***"),
    ],
    ids=["plain", "spaced", "quoted", "quoted-with-escaped-quote", "upper-case"],
)
def test_keyword_passwords_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PGPASSWORD=s3cr3t pg_dump -Fc app", "PGPASSWORD=*** pg_dump -Fc app"),
        ("env: POSTGRES_PASSWORD=s3cr3t", "env: POSTGRES_PASSWORD=***"),
    ],
)
def test_password_environment_variables_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app@db:5432/app",
        "host=127.0.0.1 port=5432 user=postgres dbname=app",
        "pg_restore -d app /dumps/dev.dump",
        "http://127.0.0.1:8000/health",
    ],
)
def test_text_without_passwords_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_known_secret_is_hidden_wherever_it_appears() -> None:
    secret = "Zq9-known_Secret/x"  # noqa: S105 - made up, to find where it must not be
    assert redact(f"app settings: db_pass {secret}") == f"app settings: db_pass {secret}"
    add_secret(secret)
    assert redact(f"app settings: db_pass {secret}") == "app settings: db_pass ***"
    # URL-quoted, as it stands in a DATABASE_URL built from it.
    assert redact("user:Zq9-known_Secret%2Fx@h") == "user:***@h"
    assert redact("--password Zq9-known_Secret%2Fx") == "--password ***"


def test_development_defaults_and_short_values_are_not_treated_as_secrets() -> None:
    for value in ("postgres", "abc", ""):
        add_secret(value)
    assert redact("local postgres at abc") == "local postgres at abc"

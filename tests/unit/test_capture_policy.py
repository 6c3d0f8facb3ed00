"""The capture policy and maskers as pure logic: parsing, the fail-closed coverage check against a catalog, and
the maskers' determinism, shapes and limits."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from pytest_dbsnap.dumps.capture.catalog import Catalog, Column, ForeignKey, Table
from pytest_dbsnap.dumps.capture.copytext import ChunkMasker, decode_field, encode_field, to_copy, whole_rows
from pytest_dbsnap.dumps.capture.draft import suggest
from pytest_dbsnap.dumps.capture.maskers import EMAIL, LOREM, NAMED, PHONE, _Keyed, build_masker, key_fingerprint
from pytest_dbsnap.dumps.capture.pipeline import Source, capture_notes
from pytest_dbsnap.dumps.capture.policy import SubsetRoot, parse_policy, plan_capture
from pytest_dbsnap.dumps.capture.subset import Edge, roles_of
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.errors import ConfigError, DumpCorrupt, DumpError

KEY = b"unit-test-key"


def text(name: str, *, not_null: bool = False, limit: int | None = None) -> Column:
    kind = f"character varying({limit})" if limit else "text"
    return Column(name, kind, "S", "varchar" if limit else "text", not_null, limit, False)


def integer(name: str) -> Column:
    return Column(name, "integer", "N", "int4", True, None, False)


def catalog() -> Catalog:
    """users(id, email unique, name, bio), orders(id, user_id -> users, note), events partitioned with a partition."""
    users = Table(1, "public.users", "public", "users", False, (), [integer("id"), text("email"), text("name")])
    users.primary_key, users.unique_keys = ("id",), [("email",)]
    orders = Table(2, "public.orders", "public", "orders", False, (), [integer("id"), integer("user_id"), text("note")])
    orders.primary_key = ("id",)
    events = Table(3, "public.events", "public", "events", True, (), [integer("id"), text("payload")])
    part = Table(4, "public.events_2025", "public", "events_2025", False, ("public.events",), list(events.columns))
    fks = [ForeignKey("orders_user_id_fkey", "public.orders", ("user_id",), "public.users", ("id",))]
    tables = {t.name: t for t in (users, orders, events, part)}
    return Catalog(tables, fks, [])


FULL: dict[str, Any] = {
    "keep": ["public.orders.note", "public.events.id"],
    "mask": {"public.users.email": "email", "public.users.name": "full_name", "public.events.payload": "text"},
}


def test_a_covering_policy_plans_every_masked_column_and_partitions_follow_their_table() -> None:
    plan = plan_capture(parse_policy(FULL), catalog(), KEY)
    assert "public.events_2025.payload" in plan.masked_columns()  # the rule on the partitioned table covers it
    assert "public.users.email" in plan.masked_columns()


def test_uncovered_columns_are_listed_with_their_types_in_one_paragraph() -> None:
    raw = {**FULL, "keep": [], "mask": {"public.users.email": "email"}}
    with pytest.raises(ConfigError) as refused:
        plan_capture(parse_policy(raw), catalog(), KEY)
    message = str(refused.value)
    for column in ("public.users.name (text)", "public.orders.note (text)", "public.events_2025.payload (text)"):
        assert column in message
    assert "public.users.id" not in message  # key columns are kept unless masked
    assert "public.orders.user_id" not in message
    assert "\n" not in message


def test_a_partition_takes_its_partitioned_tables_keys() -> None:
    """A primary or unique key declared on a partitioned table is each partition's too (the catalog reads only the
    declared constraints): its columns are kept unless masked, and a masker there must keep values distinct."""
    cat = catalog()
    events = cat.tables["public.events"]
    events.primary_key, events.unique_keys = ("id",), [("payload",)]
    assert cat.key_columns("public.events_2025") == {"id"}
    assert cat.unique_columns("public.events_2025") == {"id", "payload"}
    unique = {**FULL["mask"], "public.events.payload": "hash"}
    raw = {**FULL, "keep": ["public.orders.note"], "mask": unique}  # events.id kept as a key, not by a rule
    assert "public.events_2025.payload" in plan_capture(parse_policy(raw), cat, KEY).masked_columns()
    with pytest.raises(ConfigError, match=r"public\.events_2025\.payload is unique and text"):
        plan_capture(parse_policy({**raw, "mask": FULL["mask"]}), cat, KEY)


def test_a_unique_column_another_table_references_is_not_kept_as_a_key() -> None:
    """subscriptions.email references users.email: the foreign key column is kept unless masked, the email it
    points at is personal data like any other column and needs a rule."""
    cat = catalog()
    subscriptions = Table(5, "public.subscriptions", "public", "subscriptions", False, (), [text("email")])
    subscriptions.primary_key = ("email",)
    cat.tables[subscriptions.name] = subscriptions
    cat.foreign_keys.append(ForeignKey("subs_email", "public.subscriptions", ("email",), "public.users", ("email",)))
    raw = {**FULL, "mask": {k: v for k, v in FULL["mask"].items() if k != "public.users.email"}}
    with pytest.raises(ConfigError, match=r"does not cover 1 column\(s\).*public\.users\.email \(text\)"):
        plan_capture(parse_policy(raw), cat, KEY)


def test_an_excluded_table_needs_no_rules_but_a_reference_into_it_does() -> None:
    raw = {"keep": ["public.orders.note", "public.events"], "exclude": ["public.users"]}
    with pytest.raises(ConfigError, match=r"public\.orders\.user_id references the excluded table public\.users"):
        plan_capture(parse_policy(raw), catalog(), KEY)


@pytest.mark.parametrize(
    ("rule", "column", "message"),
    [
        ("null", text("name", not_null=True), "NOT NULL"),
        ("full_name", text("name", limit=8), "at most 8 characters"),
        ("email", integer("name"), "writes text"),
        ({"json": {"email": "email"}}, text("name"), "json or jsonb"),
    ],
)
def test_a_rule_that_breaks_a_constraint_is_refused_before_reading(rule: Any, column: Column, message: str) -> None:
    source = catalog()
    source.tables["public.users"].columns[2] = column
    raw = {**FULL, "mask": {**FULL["mask"], "public.users.name": rule}}
    with pytest.raises(ConfigError, match=message):
        plan_capture(parse_policy(raw), source, KEY)


def test_a_unique_column_needs_a_masker_that_keeps_it_unique() -> None:
    raw = {**FULL, "mask": {**FULL["mask"], "public.users.email": "first_name"}}
    with pytest.raises(ConfigError, match=r"public\.users\.email is unique"):
        plan_capture(parse_policy(raw), catalog(), KEY)


def test_a_masked_key_must_be_masked_alike_where_it_is_referenced() -> None:
    raw = {**FULL, "mask": {**FULL["mask"], "public.users.id": {"value": 1}}}
    with pytest.raises(ConfigError, match=r"public\.orders\.user_id references public\.users\.id"):
        plan_capture(parse_policy(raw), catalog(), KEY)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"keep": ["users"]}, "schema is required"),
        ({"mask": {"public.users.email": "scramble"}}, "'scramble' is not a masker"),
        ({"mask": {"public.users.email": {"json": {"a": "nope"}}}}, "maps keys to named maskers"),
        ({"subset": [{"table": "public.users"}]}, "needs exactly table"),
        ({"colour": "red"}, "unknown key"),
        ({"key_env": "not a name"}, "environment variable"),
    ],
)
def test_malformed_policies_are_one_paragraph_config_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(raw)


def test_the_policy_hash_changes_with_the_policy_and_only_maskers_that_use_it_need_the_key() -> None:
    assert parse_policy(FULL).sha256 != parse_policy({**FULL, "keep": []}).sha256
    assert parse_policy(FULL).needs_key
    assert not parse_policy({"mask": {"public.users.name": "null", "public.users.bio": {"value": "x"}}}).needs_key


@pytest.mark.parametrize("name", [n for n in NAMED if n != "null"])
def test_named_maskers_are_deterministic_and_keyed(name: str) -> None:
    masker, again, other = build_masker(name, KEY), build_masker(name, KEY), build_masker(name, b"other key")
    originals = [f"Original Value {i} with words" for i in range(50)]
    outputs = [masker.mask(v) for v in originals]
    assert outputs == [again.mask(v) for v in originals]
    assert outputs != [other.mask(v) for v in originals]
    assert not set(outputs) & set(originals)
    if masker.max_length is not None:
        assert all(len(o or "") <= masker.max_length for o in outputs)
    if masker.unique:
        assert len(set(outputs)) == len(originals)


def test_email_phone_text_hash_null_value_and_json_shapes() -> None:
    assert EMAIL.match(build_masker("email", KEY).mask("ann@corp.com") or "")
    assert PHONE.match(build_masker("phone", KEY).mask("+49 30 1234") or "")
    assert re.fullmatch(r"[0-9a-f]{64}", build_masker("hash", KEY).mask("secret") or "")
    assert build_masker("null", KEY).mask("x") is None
    assert build_masker({"value": 0}, KEY).mask("42") == "0"
    bio = "Alice likes lorem ipsum and dolor"
    fake = build_masker("text", KEY).mask(bio) or ""
    assert len(fake) == len(bio)
    assert not {w.lower() for w in re.findall(r"\w+", bio)} & set(fake.split())
    assert all(word in LOREM for word in fake.split()[:-1])  # the last word is cut to the length
    document = json.dumps({"email": "ann@corp.com", "nested": [{"phone": "+49 1"}], "theme": "dark", "n": None})
    masked = json.loads(build_masker({"json": {"email": "email", "phone": "phone"}}, KEY).mask(document) or "")
    assert EMAIL.match(masked["email"])
    assert PHONE.match(masked["nested"][0]["phone"])
    assert (masked["theme"], masked["n"]) == ("dark", None)
    # The same value masked by the email masker alone and inside JSON agrees, so it still joins.
    assert masked["email"] == build_masker("email", KEY).mask("ann@corp.com")


def test_the_key_fingerprint_tells_keys_apart_without_being_the_key() -> None:
    assert key_fingerprint(KEY) != key_fingerprint(b"other")
    assert KEY.hex() not in key_fingerprint(KEY)


def test_a_remote_source_needs_allow_remote_and_the_metadata_source_has_no_password() -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        Source.parse("postgresql://reader:pw@db.example.com/app", allow_remote=False)
    source = Source.parse("postgresql://reader:pw@db.example.com:6543/app", allow_remote=True)
    assert source.described == "db.example.com:6543/app"
    with pytest.raises(ConfigError, match="names no database"):
        Source.parse("postgresql://reader@127.0.0.1/", allow_remote=False)


def test_subset_roles_roots_referencers_upward_followers_and_whole() -> None:
    edges = [
        Edge("orders", ("user_id",), "users", ("id",)),
        Edge("users", ("manager_id",), "users", ("id",)),
        Edge("users", ("team_id",), "teams", ("id",)),
        Edge("teams", ("captain_id",), "players", ("id",)),
        Edge("players", ("team_id",), "teams", ("id",)),
        Edge("items", ("order_id",), "orders", ("id",)),
        Edge("items", ("product_id",), "products", ("id",)),
    ]
    tables = ["orders", "users", "teams", "players", "items", "products", "events"]
    roots = [SubsetRoot("users", "true")]
    roles = roles_of(tables, roots, edges)
    assert roles == {
        "users": "root",
        "orders": "subset",
        "teams": "subset",
        "players": "subset",
        "items": "follower",
        "products": "whole",
        "events": "whole",
    }


def test_a_whole_table_is_a_root_whose_referencers_are_not_pulled_in() -> None:
    edges = [
        Edge("orders", ("user_id",), "users", ("id",)),
        Edge("items", ("order_id",), "orders", ("id",)),
        Edge("items", ("product_id",), "products", ("id",)),
        Edge("products", ("maker_id",), "makers", ("id",)),
    ]
    tables = ["orders", "users", "items", "products", "makers"]
    as_root = roles_of(tables, [SubsetRoot("users", "true"), SubsetRoot("products", "true")], edges)
    whole = roles_of(tables, [SubsetRoot("users", "true"), SubsetRoot("products", "true", whole=True)], edges)
    assert as_root["items"] == "subset"  # a root's direct referencers are pulled in
    assert whole["items"] == "follower"  # a whole table's are not: an item needs its order kept too
    assert whole["products"] == "root"
    assert whole["makers"] == "subset"  # what a whole table references is kept


def test_whole_tables_are_roots_only_beside_a_subset() -> None:
    policy = parse_policy({**FULL, "whole": ["public.countries"]})
    assert policy.subset_roots == ()  # no subset: every table is copied whole anyway
    subset = parse_policy({**FULL, "whole": ["public.countries"], "subset": [{"table": "public.users", "where": "x"}]})
    assert [(r.table, r.where, r.whole) for r in subset.subset_roots] == [
        ("public.users", "x", False),
        ("public.countries", "true", True),
    ]


@pytest.mark.parametrize(
    ("whole", "subset", "message"),
    [
        ("public.events_2025", "public.users", "whole names public.events_2025, a partition: name public.events"),
        ("public.nothing", "public.users", "public.nothing names no table"),
        ("public.users", "public.users", "whole names public.users, which is a subset root"),
    ],
)
def test_a_whole_table_must_be_a_top_table_and_not_a_root(whole: str, subset: str, message: str) -> None:
    raw = {**FULL, "whole": [whole], "subset": [{"table": subset, "where": "true"}]}
    with pytest.raises(ConfigError, match=message):
        plan_capture(parse_policy(raw), catalog(), KEY)


@pytest.mark.parametrize("key", [b"short", b"k" * 64, b"a much longer key than one sha256 block " * 3])
def test_the_keyed_hash_is_keyed_blake2b_of_the_masker_name_and_the_value(key: bytes) -> None:
    secret = key if len(key) <= 64 else hashlib.sha256(key).digest()
    expected = hashlib.blake2b(b"email\0ann@corp.com", key=secret, digest_size=32, person=b"dbsnap-capture")
    assert _Keyed(key, "email").digest("ann@corp.com") == expected.digest()
    assert _Keyed(key + b"!", "email").digest("ann@corp.com") != expected.digest()  # every byte of the key counts
    assert _Keyed(key, "hash").digest("ann@corp.com") != expected.digest()  # maskers do not agree


def test_copy_text_rows_are_masked_field_by_field_with_escapes_and_nulls_kept() -> None:
    originals = ["a\tb\\c\nd", "plain", None]
    lines = [f"{i}\t{encode_field(v).decode()}\tkept \\\\ as is\n".encode() for i, v in enumerate(originals)]
    stream = b"".join(lines)
    seen: list[str] = []

    def take(value: str) -> bool:
        seen.append(value)
        return len(seen) < 1  # wants one sample only

    masker = ChunkMasker([(1, to_copy(lambda v: v.upper() + "\n"), None, take, {}, None)])
    # Chunks of 8 bytes or more, each ending at a row's end: rows cut between COPY blocks are joined first.
    chunks = [masker(data) for data in whole_rows([stream[:7], stream[7:20], stream[20:]], 8)]
    rows = b"".join(chunks).split(b"\n")[:-1]
    assert [r.split(b"\t")[2] for r in rows] == [b"kept \\\\ as is"] * 3  # untouched bytes
    masked = [r.split(b"\t")[1] for r in rows]
    assert [None if m == b"\\N" else decode_field(m) for m in masked] == ["A\tB\\C\nD\n", "PLAIN\n", None]
    assert seen == ["a\tb\\c\nd"]  # the sampler stopped once it had enough
    with pytest.raises(ValueError, match="inside a row"):
        list(whole_rows([b"1\tunfinished"], 8))


def test_a_table_the_role_may_not_read_is_named_before_anything_is_read() -> None:
    source = catalog()
    source.tables["public.orders"].readable = False
    with pytest.raises(ConfigError, match=r"may not read 1 table\(s\) of the source: public\.orders\. Grant"):
        plan_capture(parse_policy(FULL), source, KEY)
    # Excluding it does not help: pg_dump still locks it to copy its schema, which takes SELECT.
    with pytest.raises(ConfigError, match=r"public\.orders\. Grant it SELECT on every table, excluded ones too"):
        plan_capture(parse_policy({**FULL, "exclude": ["public.orders"]}), source, KEY)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("public.events_2025", "is a partition: name public.events instead"),
        ("public.nothing", "public.nothing names no table"),
    ],
)
def test_a_subset_root_must_be_a_whole_table_of_the_source(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_capture(parse_policy({**FULL, "subset": [{"table": table, "where": "true"}]}), catalog(), KEY)


def test_capture_metadata_round_trips_and_a_malformed_capture_field_is_refused() -> None:
    meta = DumpMeta(
        name="20261203T000000Z-capture-abcdef12",
        environment="prod",
        database="app",
        created_at="2026-12-03T00:00:00Z",
        sha256="a" * 64,
        size_bytes=1,
        pg_dump_version="15.4",
        server_version="15.4",
        source="captured",
        captured=True,
        capture={"source": "db:5432/app", "masked_columns": ["public.users.email"]},
    )
    again = DumpMeta.from_dict(json.loads(meta.to_json()), where="test")
    assert again == meta
    assert again.fingerprint is None  # never stale by the working tree
    with pytest.raises(DumpCorrupt, match="capture an object"):
        DumpMeta.from_dict({**json.loads(meta.to_json()), "capture": "db"}, where="test")


def test_a_long_text_keeps_its_length_and_none_of_its_words() -> None:
    original = " ".join(f"secret{i} lorem ipsum" for i in range(20_000))  # longer than the lorem corpus
    fake = build_masker("text", KEY).mask(original) or ""
    assert len(fake) == len(original)
    assert not {"lorem", "ipsum"} & set(re.findall(r"\w+", fake))
    assert all(word in LOREM or set(word) == {"x"} for word in fake.split()[:-1])


FAST_PATH_VALUES = [
    "ann@corp.com", "", "a", "Zoë Ünal", "日本語のテキスト", "emoji 🎉 here", "a\tb\\c\nd", "back\\slash",
    "lorem ipsum dolor", "in et ad sit", "dolo", "Ada", "12345", "Confidential biography number 7 about hobbies",
    "x" * 9000, "word " * 4000, "\udce9t\udcc3",  # the last: bytes that are not UTF-8 (surrogateescape)
]  # fmt: skip


@pytest.mark.parametrize("spec", [*NAMED, {"value": "a\tb\\c"}, {"value": 7}, {"json": {"email": "email"}}])
def test_the_bytes_fast_path_gives_the_str_paths_outputs(spec: Any) -> None:
    """A field without a backslash is masked from its bytes; the outputs are byte for byte those of decoding,
    masking the str and encoding (so captures stay comparable), for every masker and any value."""
    masker = build_masker(spec, KEY)
    slow = to_copy(masker.mask, masker.plain)
    values = FAST_PATH_VALUES
    if "json" in spec:
        values = [json.dumps({"email": v, "list": [v]}, ensure_ascii=False) for v in FAST_PATH_VALUES]
    for value in values:
        raw = encode_field(value)
        if masker.fast is not None and b"\\" not in raw:
            assert masker.fast(raw) == slow(decode_field(raw)), value
    # Whole rows through ChunkMasker: with the fast path (escaped fields still take the str path) and without.
    stream = b"".join(b"%d\t%s\tkept\n" % (i, encode_field(v)) for i, v in enumerate([*values, None]))
    fast = ChunkMasker([(1, slow, masker.fast, None, {}, None)])(stream)
    assert fast == ChunkMasker([(1, slow, None, None, {}, None)])(stream)
    assert fast.count(b"\n") == len(values) + 1


@pytest.mark.parametrize(
    ("name", "column", "unique", "expected"),
    [
        ("email", Column("email", "text", "S", "text", True, None, False), True, "email"),
        ("contact_email", Column("contact_email", "text", "S", "text", False, None, False), False, "email"),
        ("phone_number", Column("phone_number", "text", "S", "text", False, None, False), False, "phone"),
        ("phone", Column("phone", "character varying(8)", "S", "varchar", False, 8, False), False, "?"),  # too short
        ("first_name", integer("first_name"), False, "?"),  # no masker writes an integer
        ("password", Column("password", "character varying(40)", "S", "varchar", True, 40, False), False, "?"),
        ("username", Column("username", "text", "S", "text", True, None, False), True, "hash"),  # stays unique
        ("first_name", Column("first_name", "text", "S", "text", True, None, False), True, "?"),  # may repeat
        ("birth_date", Column("birth_date", "date", "D", "date", False, None, False), False, "?"),
        ("title", Column("title", "text", "S", "text", True, None, False), False, None),
        ("notes", Column("notes", "text", "S", "text", False, None, False), False, "text"),
        ("body", Column("body", "text", "S", "text", False, None, False), False, "text"),
        ("born", Column("born", "date", "D", "date", False, None, False), False, "?"),
        ("avatar", Column("avatar", "bytea", "U", "bytea", False, None, False), False, "?"),
        ("avatar_id", integer("avatar_id"), False, None),  # a key to an image row, not the image
    ],
)
def test_the_draft_suggests_a_masker_by_name_only_where_it_passes_the_checks(
    name: str, column: Column, unique: bool, expected: str | None
) -> None:
    assert suggest(name, column, unique) == expected


def test_capture_notes_name_the_sequences_and_the_grant_only_when_there_are_any() -> None:
    assert capture_notes({"sequences_from_rows": [], "sequences_not_set": []}) == []
    assert capture_notes({}) == []  # a dump captured before these were recorded
    notes = capture_notes({"sequences_from_rows": ["public.orders_id_seq"], "sequences_not_set": ["public.t"]})
    assert len(notes) == 2
    assert "public.orders_id_seq" in notes[0]
    assert "largest value" in notes[0]
    assert "public.t" in notes[1]
    assert "GRANT SELECT" in notes[1]
    assert all("\n" not in note for note in notes)


def test_a_named_masker_on_an_array_column_masks_each_element_as_its_own_column_would() -> None:
    """emails in a text[]: each element masked as the email column masks it (so they still match), NULL elements
    stay NULL, quoting survives; the plan wraps the rule, the draft suggests it, and a value that is not a plain
    one-dimensional array is refused without showing it."""
    cat = catalog()
    cat.tables["public.users"].columns.append(Column("cc", "text[]", "A", "_text", False, None, False, "S"))
    plan = plan_capture(parse_policy({**FULL, "mask": {**FULL["mask"], "public.users.cc": "email"}}), cat, KEY)
    masker = plan.maskers["public.users"]["cc"]
    assert plan.rules["public.users"]["cc"] == {"array": "email"}
    email = build_masker("email", KEY).mask
    masked = masker.mask('{a@real.org,"Some One, \\"Home\\" <b@real.org>",NULL,""}')
    home = 'Some One, "Home" <b@real.org>'
    assert masked == f'{{"{email("a@real.org")}","{email(home)}",NULL,"{email("")}"}}'
    assert masker.mask("{}") == "{}"
    assert masker.hidden("{a@real.org,NULL}") == ["a@real.org"]
    with pytest.raises(DumpError) as refused:
        masker.mask("{{a@real.org},{b@real.org}}")
    assert "real.org" not in str(refused.value)  # an original never reaches a message
    numbers = Column("ids", "integer[]", "A", "_int4", False, None, False, "N")
    assert suggest("cc_emails", cat.tables["public.users"].columns[-1], False) == "email"
    assert suggest("emails", numbers, False) == "?"  # no masker writes integers

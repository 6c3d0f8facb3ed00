"""Dump metadata, names, fingerprints and the store's files, without a server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.files import write_atomic
from pytest_dbsnap.dumps.fingerprint import compute_fingerprint, file_sha256
from pytest_dbsnap.dumps.generate import dump_name
from pytest_dbsnap.dumps.meta import FORMAT_VERSION, DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import ConfigError, DumpCorrupt, DumpError, DumpNotFound

SHA = "ab" * 32


def make_meta(name: str = "20261125T090102Z-c1176cd-f5fd3890", **changes: Any) -> DumpMeta:
    meta = DumpMeta(
        name=name,
        environment="dev",
        database="app",
        created_at="2026-11-25T09:01:02Z",
        sha256=SHA,
        size_bytes=4,
        pg_dump_version="15.4",
        server_version="15.4",
        git_commit="c1176cd",
        git_dirty=True,
        fingerprint="f5fd3890" + "0" * 56,
        fingerprint_inputs={"refapp/seed.py": "1" * 64},
        schema_version="0002",
        row_counts={"public.reality_nodes": 200},
        tool_version="0.1.0",
        duration_seconds=1.5,
    )
    return dataclasses.replace(meta, **changes)


def as_dict(meta: DumpMeta) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(meta.to_json())
    return document


# --- DumpMeta -------------------------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_field() -> None:
    meta = make_meta()
    text = meta.to_json()
    document = json.loads(text)
    assert document["format_version"] == FORMAT_VERSION == 1
    assert list(document) == sorted(document), "keys are sorted so that diffs of two dumps read well"
    assert set(document) == {f.name for f in dataclasses.fields(DumpMeta)}
    assert text.endswith("}\n")
    assert DumpMeta.from_dict(document, where="test") == meta


def test_imported_meta_round_trips_without_fingerprint() -> None:
    meta = make_meta(fingerprint=None, git_commit=None, git_dirty=False, source="imported", row_counts={})
    assert DumpMeta.from_dict(as_dict(meta), where="test") == meta


def test_unknown_keys_of_a_newer_writer_are_ignored() -> None:
    document = {**as_dict(make_meta()), "compression": "zstd"}
    assert DumpMeta.from_dict(document, where="test") == make_meta()


def test_template_key_and_major_version() -> None:
    meta = make_meta(pg_dump_version="16.2")
    assert meta.template_key == SHA[:20]
    assert meta.pg_dump_major == 16


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sha256": "AB" * 32}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": "ab" * 31}, "sha256 must be 64 lowercase hex digits"),
        ({"size_bytes": -1}, "size_bytes must be a whole number"),
        ({"size_bytes": "4"}, "size_bytes must be a whole number"),
        ({"row_counts": {"public.t": "many"}}, "row_counts must map table names to whole numbers"),
        ({"row_counts": [1]}, "row_counts must map table names to whole numbers"),
        ({"environment": ""}, "environment must be a non-empty string"),
        ({"pg_dump_version": "fifteen"}, "pg_dump_version must be a version number such as 15.4"),
        ({"fingerprint": 12}, "fingerprint must be a string or null"),
        ({"fingerprint_inputs": ["seed.py"]}, "fingerprint_inputs must map inputs to their sha256"),
    ],
    ids=[
        "upper-sha",
        "short-sha",
        "negative-size",
        "text-size",
        "text-count",
        "list-counts",
        "empty-env",
        "version",
        "fingerprint",
        "fingerprint-inputs",
    ],
)
def test_malformed_fields_are_named(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(DumpCorrupt) as caught:
        DumpMeta.from_dict({**as_dict(make_meta()), **change}, where="/dumps/dev/x.json")
    message = str(caught.value)
    assert message.startswith("The dump metadata /dumps/dev/x.json is malformed: ")
    assert problem in message
    assert message.endswith("Regenerate the dump (dbsnap generate) or re-import it (dbsnap import).")


def test_missing_fields_are_all_listed() -> None:
    document = as_dict(make_meta())
    for key in ("name", "sha256", "size_bytes"):
        del document[key]
    with pytest.raises(DumpCorrupt) as caught:
        DumpMeta.from_dict(document, where="x.json")
    assert "name must be a non-empty string; sha256 must be a non-empty string; size_bytes must be a whole number" in (
        str(caught.value)
    )


@pytest.mark.parametrize("version", [2, None, "1"], ids=["newer", "missing", "text"])
def test_other_format_versions_are_refused(version: object) -> None:
    document = as_dict(make_meta())
    document["format_version"] = version
    if version is None:
        del document["format_version"]
    with pytest.raises(DumpCorrupt) as caught:
        DumpMeta.from_dict(document, where="x.json")
    assert f"has format_version {version!r}; this pytest-dbsnap reads version 1" in str(caught.value)
    assert "Upgrade pytest-dbsnap or regenerate the dump" in str(caught.value)


def test_a_json_list_is_not_metadata() -> None:
    with pytest.raises(DumpCorrupt, match=r"x\.json is not a JSON object"):
        DumpMeta.from_dict([1, 2], where="x.json")


def test_read_says_when_the_file_is_missing_or_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(DumpCorrupt, match="is missing: a dump without its metadata cannot be verified"):
        DumpMeta.read(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(DumpCorrupt, match="is not readable JSON"):
        DumpMeta.read(path)
    path.write_text(make_meta().to_json())
    assert DumpMeta.read(path) == make_meta()


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("commit", "dirty", "expected"),
    [
        ("c1176cd", False, "20261125T090102Z-c1176cd-f5fd3890"),
        ("c1176cd", True, "20261125T090102Z-c1176cd-dirty-f5fd3890"),
        (None, False, "20261125T090102Z-nogit-f5fd3890"),
    ],
    ids=["clean", "dirty", "nogit"],
)
def test_dump_name_is_time_commit_and_fingerprint(commit: str | None, dirty: bool, expected: str) -> None:
    created = dt.datetime(2026, 11, 25, 9, 1, 2, tzinfo=dt.UTC)
    assert dump_name(created, commit, dirty, "f5fd3890" + "e" * 56) == expected


def test_dump_names_sort_by_time() -> None:
    fingerprint = "0" * 64
    early = dump_name(dt.datetime(2026, 1, 2, 23, 59, 59, tzinfo=dt.UTC), "zzzzzzz", False, fingerprint)
    late = dump_name(dt.datetime(2026, 1, 3, 0, 0, 0, tzinfo=dt.UTC), "aaaaaaa", False, fingerprint)
    assert sorted([late, early]) == [early, late]


# --- fingerprints ---------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "migrations" / "__pycache__").mkdir(parents=True)
    (tmp_path / "migrations" / "0001.py").write_text("create nodes\n")
    (tmp_path / "migrations" / "__pycache__" / "0001.cpython-311.pyc").write_bytes(b"\x00compiled")
    (tmp_path / "seed.py").write_text("seed 200\n")
    return tmp_path


def fingerprint_settings(root: Path, **changes: Any) -> Settings:
    settings = Settings(
        project_root=root,
        fingerprint_inputs=("migrations", "seed.py", "fixtures/*.sql"),
        migrate_command=("python", "-m", "app.migrate"),
        seed_command=("python", "-m", "app.seed"),
        schema_version_query="SELECT 1",
    )
    return dataclasses.replace(settings, **changes)


def test_fingerprint_is_stable_and_records_each_input(project: Path) -> None:
    first, inputs = compute_fingerprint(fingerprint_settings(project))
    second, _ = compute_fingerprint(fingerprint_settings(project))
    reordered, _ = compute_fingerprint(
        fingerprint_settings(project, fingerprint_inputs=("fixtures/*.sql", "seed.py", "migrations"))
    )
    assert first == second == reordered
    assert len(first) == 64
    assert set(inputs) == {"migrations/0001.py", "seed.py", "missing:fixtures/*.sql", "setting:commands"}
    assert inputs["seed.py"] == file_sha256(project / "seed.py")
    assert inputs["missing:fixtures/*.sql"] == "0" * 64


@pytest.mark.parametrize(
    "change",
    ["edit-migration", "add-migration", "first-glob-match", "seed-command", "schema-query"],
)
def test_fingerprint_changes_with_any_input(project: Path, change: str) -> None:
    settings = fingerprint_settings(project)
    before, _ = compute_fingerprint(settings)
    if change == "edit-migration":
        (project / "migrations" / "0001.py").write_text("create nodes and edges\n")
    elif change == "add-migration":
        (project / "migrations" / "0002.py").write_text("create edges\n")
    elif change == "first-glob-match":
        (project / "fixtures").mkdir()
        (project / "fixtures" / "extra.sql").write_text("insert\n")
    elif change == "seed-command":
        settings = dataclasses.replace(settings, seed_command=("python", "-m", "app.seed", "--scale", "10"))
    else:
        settings = dataclasses.replace(settings, schema_version_query="SELECT 2")
    after, _ = compute_fingerprint(settings)
    assert after != before


def test_fingerprint_ignores_compiled_files(project: Path) -> None:
    before, _ = compute_fingerprint(fingerprint_settings(project))
    (project / "migrations" / "__pycache__" / "0002.cpython-311.pyc").write_bytes(b"\x01")
    (project / "migrations" / "0001.pyc").write_bytes(b"\x02")
    assert compute_fingerprint(fingerprint_settings(project))[0] == before


# --- the store's files ----------------------------------------------------------------------------------------


def test_write_atomic_replaces_content_with_mode_0600_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "latest"
    path.write_text("old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_write_atomic_that_fails_keeps_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "latest"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def put_dump(store: DumpStore, name: str, *, with_meta: bool = True) -> DumpMeta:
    temporary = store.new_temporary("dev")
    temporary.write_bytes(b"PGDM")
    meta = make_meta(name)
    if with_meta:
        return store.install(temporary, meta)
    os.replace(temporary, store.dump_path("dev", name))
    return meta


def test_names_list_only_dumps_with_metadata(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    put_dump(store, "20260102T000000Z-nogit-00000002")
    put_dump(store, "20260101T000000Z-nogit-00000001")
    put_dump(store, "20260103T000000Z-nogit-00000003", with_meta=False)
    (store.env_dir("dev") / ".hidden.json").write_text("{}")
    (store.env_dir("dev") / ".incoming-0123.dump.tmp").write_bytes(b"half")

    assert store.names("dev") == ["20260101T000000Z-nogit-00000001", "20260102T000000Z-nogit-00000002"]
    assert [meta.name for meta in store.list("dev")] == store.names("dev")
    assert store.names("other") == []
    assert store.environments() == ["dev"]


def test_install_sets_latest_and_refuses_to_overwrite(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    meta = put_dump(store, "20260101T000000Z-nogit-00000001")
    dump, json_file = store.dump_path("dev", meta.name), store.meta_path("dev", meta.name)
    assert (store.env_dir("dev") / "latest").read_text() == f"{meta.name}\n"
    assert store.get("dev") == meta
    assert stat.S_IMODE(dump.stat().st_mode) == stat.S_IMODE(json_file.stat().st_mode) == 0o600

    temporary = store.new_temporary("dev")
    with pytest.raises(DumpError, match="already exists"):
        store.install(temporary, meta)
    assert dump.read_bytes() == b"PGDM"


def test_latest_without_a_pointer_is_the_newest_name(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    put_dump(store, "20260101T000000Z-nogit-00000001")
    put_dump(store, "20260102T000000Z-nogit-00000002")
    store.set_latest("dev", "20260101T000000Z-nogit-00000001")
    assert store.latest_name("dev") == "20260101T000000Z-nogit-00000001"
    (store.env_dir("dev") / "latest").unlink()
    assert store.latest_name("dev") == "20260102T000000Z-nogit-00000002"


def test_get_explains_what_exists(tmp_path: Path) -> None:
    store = DumpStore(tmp_path / "dumps")
    with pytest.raises(DumpNotFound, match=r"there is no environment 'dev' in .* \(environments: none yet\)"):
        store.get("dev")
    put_dump(store, "20260101T000000Z-nogit-00000001")
    with pytest.raises(DumpNotFound) as caught:
        store.get("dev", "20990101T000000Z-nogit-00000009")
    message = str(caught.value)
    assert "There is no dump named '20990101T000000Z-nogit-00000009'" in message
    assert "environment 'dev' has: 20260101T000000Z-nogit-00000001" in message
    assert "`dbsnap generate --env dev`" in message
    assert "`dbsnap import FILE --env dev`" in message


@pytest.mark.parametrize("env", ["a b", "../up", ".hidden", ""])
def test_environment_names_that_would_escape_the_store_are_refused(tmp_path: Path, env: str) -> None:
    with pytest.raises(ConfigError, match="is not accepted"):
        DumpStore(tmp_path).env_dir(env)


def test_prune_keeps_the_newest_and_the_latest_and_cleans_leftovers(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    names = [f"2026010{i}T000000Z-nogit-0000000{i}" for i in range(1, 6)]
    for name in names:
        put_dump(store, name)
    store.set_latest("dev", names[1])
    (store.env_dir("dev") / ".incoming-0123.dump.tmp").write_bytes(b"half")

    assert store.prune("dev", 2) == [names[0], names[2]]
    assert store.names("dev") == [names[1], names[3], names[4]]
    assert not (store.env_dir("dev") / ".incoming-0123.dump.tmp").exists()
    assert not store.dump_path("dev", names[0]).exists()
    with pytest.raises(ConfigError, match="prune never removes every dump"):
        store.prune("dev", 0)

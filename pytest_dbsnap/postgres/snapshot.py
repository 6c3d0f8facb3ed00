"""A physical snapshot of a stopped local cluster, kept beside its dump: a fresh machine unpacks it and skips
initdb and pg_restore (rebuilding every index is what makes a cold restore slow).

The archive `<env>/<dump>.pgdata-<key>.tar.zst` is a tar of the data folder through the zstd program, with
`<dump>.pgdata-<key>.json` beside it (its sha256 and size, and what the key is made of). It holds no secret:
`dbsnap.secret` and the ident map are left out and the superuser has no password in it (each cluster started
from it gets a new secret). WAL that the last checkpoint no longer needs is left out too.

The key is what must match exactly for PostgreSQL to read the files and for them to mean the same dump. The
parts known before unpacking (PostgreSQL major version, where the programs came from and their exact version,
the binaries' block size, CPU architecture, libc, the locale and collation provider, the dump's sha256, this
format's version) name the file; the parts only a data
folder knows (catalog version, WAL segment size, data checksums) are recorded in the metadata and compared
with pg_controldata of the unpacked folder, and the server itself refuses files of another catalog version at
start. Anything that does not match exactly is not used: the session restores the dump instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Protocol

from filelock import FileLock, Timeout

from pytest_dbsnap._version import __version__
from pytest_dbsnap.core.files import FILE_MODE, fsync_dir, write_atomic
from pytest_dbsnap.core.proc import run, tail
from pytest_dbsnap.core.progress import meter
from pytest_dbsnap.errors import SnapshotUnusable, ToolError
from pytest_dbsnap.postgres.base import PgTools

SNAPSHOT_FORMAT = 2  # 2: the key names the programs' build (origin and exact version)
ARCHIVE_SUFFIX = ".tar.zst"
META_SUFFIX = ".json"
# LocalCluster always runs initdb with --locale=C -E UTF8: the C collation of libc, which sorts by bytes.
LOCALE = "C, UTF8, libc provider"
ZSTD_LEVEL = 1  # level 1 packs a data folder about 4:1 at several hundred MB/s; higher levels cost more than they save
# Top-level files never carried: the server's lock files, the cluster's secret, the ident map (it names the OS
# users of the machine that wrote it; every start writes its own).
LEFT_OUT = frozenset({"postmaster.pid", "postmaster.opts", "dbsnap.secret", "pg_ident.conf"})
EMPTIED = ("pg_stat_tmp", "pg_wal/archive_status")  # folders kept, their contents not
_CHUNK = 1 << 20
# A dump's cluster snapshots sit beside it as <name>.pgdata-<key>.tar.zst and .json.
SNAPSHOT_MARK = ".pgdata-"
_WAL_NAME = re.compile(r"^[0-9A-F]{24}$")


class DumpFacts(Protocol):
    """What a snapshot needs to know of its dump (the dump layer's DumpMeta has it): no import upward."""

    @property
    def name(self) -> str: ...
    @property
    def environment(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def template_key(self) -> str: ...


@dataclass(frozen=True)
class DumpRef:
    """The dump a local cluster may start from, or snapshot when it stops: its metadata and its file."""

    meta: DumpFacts
    dump_path: Path
    # Set when the dump (and this machine's snapshot, if the remote had one) was pulled from the remote store
    # just before the cluster started: the session reports the pull, and a remote snapshot it could not use.
    pull_seconds: float | None = None
    pull_warning: str | None = None


@dataclass(frozen=True)
class SnapshotKey:
    """What must be equal, known on a fresh machine before anything is unpacked."""

    format: int
    pg_major: int
    binaries: str  # where the programs came from and their exact version: PgTools.build
    block_size: int
    arch: str
    libc: str
    locale: str
    dump_sha256: str

    @property
    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: SnapshotKey) -> list[str]:
        return [
            f"{f.name} {getattr(other, f.name)!r} here, {getattr(self, f.name)!r} in the snapshot"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass(frozen=True)
class ClusterFacts:
    """What pg_controldata says about a stopped data folder."""

    state: str
    catalog_version: str
    pg_control_version: str
    block_size: int
    wal_segment_size: int
    data_checksums: bool
    timeline: int
    checkpoint_lsn: int
    redo_wal_file: str


@dataclass(frozen=True)
class SnapshotMeta:
    """The metadata JSON beside an archive."""

    key: SnapshotKey
    environment: str
    dump_name: str
    archive: str
    sha256: str
    size_bytes: int
    data_bytes: int
    catalog_version: str
    pg_control_version: str
    wal_segment_size: int
    data_checksums: bool
    server_version: str
    created_at: str
    write_seconds: float
    tool_version: str = __version__
    compressor: str = f"zstd -{ZSTD_LEVEL}"
    format: int = SNAPSHOT_FORMAT

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "key_digest": self.key.digest}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> SnapshotMeta:
        try:
            return cls.parse(path.read_text(), path.name)
        except FileNotFoundError as exc:
            raise SnapshotUnusable(f"its metadata {path.name} is missing") from exc
        except OSError as exc:
            raise SnapshotUnusable(f"its metadata {path.name} is not readable ({exc})") from exc

    @classmethod
    def parse(cls, text: str, where: str) -> SnapshotMeta:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SnapshotUnusable(f"its metadata {where} is not readable JSON ({exc})") from exc
        path = Path(where)
        try:
            if data.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotUnusable(
                    f"its metadata has format {data.get('format')!r}; this pytest-dbsnap reads {SNAPSHOT_FORMAT}"
                )
            key = SnapshotKey(**{f.name: data["key"][f.name] for f in fields(SnapshotKey)})
            known = {f.name for f in fields(cls)} - {"key"}
            meta = cls(key=key, **{name: data[name] for name in known if name in data})
        except (KeyError, TypeError, AttributeError) as exc:
            raise SnapshotUnusable(f"its metadata {path.name} is malformed ({exc!r} is missing or wrong)") from exc
        checks = {
            "sha256": isinstance(meta.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", meta.sha256) is not None,
            "size_bytes": isinstance(meta.size_bytes, int) and meta.size_bytes > 0,
            "archive": isinstance(meta.archive, str) and "/" not in meta.archive,
            "wal_segment_size": isinstance(meta.wal_segment_size, int) and meta.wal_segment_size > 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise SnapshotUnusable(f"its metadata {path.name} has malformed {', '.join(wrong)}")
        return meta


@dataclass(frozen=True)
class Snapshot:
    """An archive and its metadata file, as found beside a dump."""

    archive: Path
    meta_path: Path

    @property
    def name(self) -> str:
        return self.archive.name

    def discard(self) -> None:
        """A broken snapshot only costs time: removed so the next cold restore writes a good one."""
        for path in (self.meta_path, self.archive):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


# --- the key ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def binaries_block_size(postgres: Path) -> int:
    """The block size the server was compiled with; `postgres -C` reads it without a cluster (and as root)."""
    with tempfile.TemporaryDirectory(prefix="dbsnap-blocksize-") as folder:
        (Path(folder) / "postgresql.conf").write_text("")
        output = run([postgres, "-C", "block_size", "-D", folder], what="postgres -C block_size", timeout=30)
    try:
        return int(output.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise ToolError(f"postgres -C block_size printed {output.stdout!r}, not a number.") from exc


def machine_key(tools: PgTools, dump_sha256: str) -> SnapshotKey:
    libc, libc_version = platform.libc_ver()
    return SnapshotKey(
        format=SNAPSHOT_FORMAT,
        pg_major=tools.major,
        binaries=tools.build,
        block_size=binaries_block_size(tools.path("postgres")),
        arch=platform.machine() or "unknown",
        libc=f"{libc} {libc_version}".strip() or "unknown",
        locale=LOCALE,
        dump_sha256=dump_sha256,
    )


def snapshot_for(dump_path: Path, key: SnapshotKey) -> Snapshot:
    stem = f"{dump_path.stem}{SNAPSHOT_MARK}{key.digest}"
    return Snapshot(dump_path.with_name(stem + ARCHIVE_SUFFIX), dump_path.with_name(stem + META_SUFFIX))


def snapshots_of(dump_path: Path) -> list[Snapshot]:
    """Every snapshot of one dump, for any machine (dbsnap list, show, verify, prune)."""
    stems = {
        path.name.removesuffix(ARCHIVE_SUFFIX).removesuffix(META_SUFFIX)
        for path in dump_path.parent.glob(f"{dump_path.stem}{SNAPSHOT_MARK}*")
        if path.name.endswith((ARCHIVE_SUFFIX, META_SUFFIX))
    }
    return [
        Snapshot(dump_path.with_name(stem + ARCHIVE_SUFFIX), dump_path.with_name(stem + META_SUFFIX))
        for stem in sorted(stems)
    ]


# --- pg_controldata -----------------------------------------------------------------------------------------


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    segment = lsn // segment_size
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def controldata(tools: PgTools, data_dir: Path) -> ClusterFacts:
    # The labels are translated in other locales.
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
    output = run([tools.path("pg_controldata"), str(data_dir)], what="pg_controldata", env=env, timeout=30).stdout
    values = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    values = {key.strip(): value.strip() for key, value in values.items()}
    try:
        return ClusterFacts(
            state=values["Database cluster state"],
            catalog_version=values["Catalog version number"],
            pg_control_version=values["pg_control version number"],
            block_size=int(values["Database block size"]),
            wal_segment_size=int(values["Bytes per WAL segment"]),
            data_checksums=values["Data page checksum version"] != "0",
            timeline=int(values["Latest checkpoint's TimeLineID"]),
            checkpoint_lsn=_lsn(values["Latest checkpoint location"]),
            redo_wal_file=values["Latest checkpoint's REDO WAL file"],
        )
    except (KeyError, ValueError) as exc:
        raise ToolError(f"pg_controldata of {data_dir} did not print what was expected ({exc!r}).") from exc


# --- writing ------------------------------------------------------------------------------------------------


def _members(data_dir: Path, facts: ClusterFacts) -> list[str]:
    """The paths to archive, parents before children, without what a started cluster does not need."""
    # A shutdown checkpoint's record starts in the REDO segment and may end in the next one; later segments
    # are recycled ones (old WAL under future names) and earlier ones are no longer needed.
    first = facts.redo_wal_file[8:]
    last = wal_file_name(facts.timeline, facts.checkpoint_lsn + 8192, facts.wal_segment_size)[8:]
    members = ["."]
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        relative = os.path.relpath(root, data_dir)
        for name in dirs:
            members.append(os.path.normpath(os.path.join(relative, name)))
        if relative in EMPTIED:
            continue
        for name in sorted(files):
            if relative == "." and name in LEFT_OUT:
                continue
            if relative == "pg_wal" and _WAL_NAME.match(name) and not first <= name[8:] <= last:
                continue
            members.append(os.path.normpath(os.path.join(relative, name)))
    return members


@functools.cache
def _reading_options(tar: str) -> tuple[str, ...]:
    """GNU tar reads an archive in records of 10 kB and writes what it extracts in pieces of that size. Records of
    64 kB (`-b 128`) took the 474 MB snapshot's unpack and start from 0.69 s to 0.52 s here (medians of 25), the
    template's clone after it staying at 0.17 s; 1 MB records unpacked as fast but made that clone 0.55 s. Only
    GNU tar is given the option: bsdtar and BusyBox's tar read the same archive with their defaults."""
    try:
        done = subprocess.run([tar, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("-b", "128") if "GNU tar" in done.stdout else ()


def _widen_pipes(*pipes: IO[bytes]) -> None:
    """1 MB pipes between reader, zstd and tar instead of 64 kB ones: fewer switches between the three (Linux)."""
    size_option = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size_option is None:
        return
    for pipe in pipes:
        with contextlib.suppress(OSError):  # above the system's pipe-max-size: the default stays
            fcntl.fcntl(pipe.fileno(), size_option, _CHUNK)


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolError(
            f"the {name} program is not installed (Debian/Ubuntu: apt-get install {name}; macOS: brew install {name})"
        )
    return found


def require_programs() -> None:
    """Before anything is changed for a snapshot: the programs that pack and unpack it are there."""
    _program("tar")
    _program("zstd")


def write_snapshot(
    tools: PgTools,
    data_dir: Path,
    ref: DumpRef,
    facts: ClusterFacts,
    server_version: str,
    *,
    began: float | None = None,
) -> tuple[Snapshot, SnapshotMeta] | None:
    """Pack a stopped, prepared data folder beside the dump. None when it already exists or another process is
    writing it now (two sessions never write one snapshot twice). Atomic: a temporary name in the same folder,
    fsync, rename, then the metadata; a process killed meanwhile leaves only a hidden temporary file."""
    began = time.monotonic() if began is None else began
    if facts.state != "shut down":
        raise SnapshotUnusable(f"the cluster in {data_dir} was not shut down cleanly ({facts.state})")
    key = machine_key(tools, ref.meta.sha256)
    snapshot = snapshot_for(ref.dump_path, key)
    tar, zstd = _program("tar"), _program("zstd")
    lock = FileLock(str(snapshot.archive.with_name(f".{snapshot.archive.name}.lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None  # another session writes this very snapshot now
    try:
        if snapshot.archive.is_file() and snapshot.meta_path.is_file():
            return None
        # Leftovers of a writer killed mid-way (none can be writing now: we hold the lock).
        for leftover in snapshot.archive.parent.glob(f".{snapshot.archive.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        temporary = snapshot.archive.with_name(f".{snapshot.archive.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                sha256, size, data_bytes = _pack(tar, zstd, data_dir, facts, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, snapshot.archive)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_dir(snapshot.archive.parent)
        meta = SnapshotMeta(
            key=key,
            environment=ref.meta.environment,
            dump_name=ref.meta.name,
            archive=snapshot.archive.name,
            sha256=sha256,
            size_bytes=size,
            data_bytes=data_bytes,
            catalog_version=facts.catalog_version,
            pg_control_version=facts.pg_control_version,
            wal_segment_size=facts.wal_segment_size,
            data_checksums=facts.data_checksums,
            server_version=server_version,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            write_seconds=round(time.monotonic() - began, 3),
        )
        write_atomic(snapshot.meta_path, meta.to_json())
        return snapshot, meta
    finally:
        # The lock file stays (removed with the dump): unlinking it would let a third writer lock a new file of
        # the same name while a second still holds the old one.
        lock.release()


def _pack(tar: str, zstd: str, data_dir: Path, facts: ClusterFacts, out: IO[bytes]) -> tuple[str, int, int]:
    """tar | zstd into `out`, hashing the compressed bytes as they pass (never held in memory)."""
    members = _members(data_dir, facts)
    data_bytes = sum((data_dir / m).stat().st_size for m in members if (data_dir / m).is_file())
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryDirectory(prefix="dbsnap-pack-") as scratch:
        listing = Path(scratch) / "members"
        listing.write_bytes(b"\0".join(os.fsencode(m) for m in members) + b"\0")
        tar_errors = (Path(scratch) / "tar.err").open("w+")
        zstd_errors = (Path(scratch) / "zstd.err").open("w+")
        with tar_errors, zstd_errors:
            archiver = subprocess.Popen(
                [tar, "-C", str(data_dir), "--null", "--no-recursion", "-T", str(listing), "-cf", "-"],
                stdout=subprocess.PIPE,
                stderr=tar_errors,
            )
            assert archiver.stdout is not None
            compressor = subprocess.Popen(
                [zstd, f"-{ZSTD_LEVEL}", "-T0", "-q", "-c"],
                stdin=archiver.stdout,
                stdout=subprocess.PIPE,
                stderr=zstd_errors,
            )
            archiver.stdout.close()  # zstd holds it now; tar sees a closed pipe if zstd dies
            assert compressor.stdout is not None
            try:
                for chunk in iter(lambda: compressor.stdout.read(_CHUNK), b""):  # type: ignore[union-attr]
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            finally:
                compressor.stdout.close()
                compressor.wait()
                archiver.wait()
            for process, errors, what in ((archiver, tar_errors, "tar"), (compressor, zstd_errors, "zstd")):
                if process.returncode != 0:
                    errors.seek(0)
                    raise ToolError(f"{what} failed with exit code {process.returncode}:\n{tail(errors.read())}")
    return digest.hexdigest(), size, data_bytes


# --- reading ------------------------------------------------------------------------------------------------


def locate_snapshot(tools: PgTools, ref: DumpRef) -> tuple[Snapshot, SnapshotKey]:
    """Where this machine's snapshot of the dump would be, and the key it must have."""
    key = machine_key(tools, ref.meta.sha256)
    return snapshot_for(ref.dump_path, key), key


def check_snapshot(snapshot: Snapshot, key: SnapshotKey) -> SnapshotMeta | None:
    """The snapshot's metadata when it may be unpacked: None when there is none for this key (nothing to say),
    SnapshotUnusable naming the reason when there is one that cannot be used."""
    has_archive, has_meta = snapshot.archive.is_file(), snapshot.meta_path.is_file()
    if not has_archive and not has_meta:
        return None
    if not has_archive:
        raise SnapshotUnusable(f"its archive {snapshot.archive.name} is missing")
    meta = SnapshotMeta.read(snapshot.meta_path)
    differences = meta.key.differences(key)
    if differences:
        raise SnapshotUnusable(f"it was made for another machine or dump: {'; '.join(differences)}")
    if meta.archive != snapshot.archive.name:
        raise SnapshotUnusable(f"its metadata describes {meta.archive}, not {snapshot.archive.name}")
    size = snapshot.archive.stat().st_size
    if size != meta.size_bytes:
        raise SnapshotUnusable(f"the archive has {size} bytes but its metadata records {meta.size_bytes} (truncated)")
    return meta


def unpack(tools: PgTools, snapshot: Snapshot, meta: SnapshotMeta, dest: Path) -> None:
    """Unpack into `dest` (which must not exist), hashing the bytes on the way in; then compare what
    pg_controldata says with the metadata. On any failure `dest` may hold a partial folder: the caller removes
    it and nothing is started from it."""
    tar, zstd = _program("tar"), _program("zstd")
    dest.mkdir(mode=0o700)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="dbsnap-unpack-") as scratch:
        tar_errors = (Path(scratch) / "tar.err").open("w+")
        zstd_errors = (Path(scratch) / "zstd.err").open("w+")
        with tar_errors, zstd_errors:
            decompressor = subprocess.Popen(
                [zstd, "-d", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=zstd_errors
            )
            assert decompressor.stdout is not None
            assert decompressor.stdin is not None
            _widen_pipes(decompressor.stdin, decompressor.stdout)
            # --no-same-owner: as root the files become root's (then the server account's), never the uids
            # recorded on another machine. GNU tar and bsdtar refuse member names that climb out with "..".
            extractor = subprocess.Popen(
                [tar, "-C", str(dest), "--no-same-owner", *_reading_options(tar), "-xf", "-"],
                stdin=decompressor.stdout,
                stderr=tar_errors,
            )
            decompressor.stdout.close()
            count, done = meter(), 0  # the step's bar, by bytes of the archive unpacked
            try:
                with snapshot.archive.open("rb") as archive:
                    for chunk in iter(lambda: archive.read(_CHUNK), b""):
                        digest.update(chunk)
                        decompressor.stdin.write(chunk)
                        done += len(chunk)
                        count(done, meta.size_bytes)
            except BrokenPipeError:
                pass  # zstd or tar gave up; their exit codes say why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    decompressor.stdin.close()
                decompressor.wait()
                extractor.wait()
            if digest.hexdigest() != meta.sha256:
                raise SnapshotUnusable(
                    f"its sha256 does not match its metadata (expected {meta.sha256[:16]}..., got "
                    f"{digest.hexdigest()[:16]}...): the archive is damaged"
                )
            for process, errors, what in ((decompressor, zstd_errors, "zstd -d"), (extractor, tar_errors, "tar -x")):
                if process.returncode != 0:
                    errors.seek(0)
                    raise SnapshotUnusable(f"{what} failed ({tail(errors.read(), 3) or process.returncode})")
    dest.chmod(0o700)
    try:
        facts = controldata(tools, dest)
    except ToolError as exc:
        raise SnapshotUnusable(f"pg_controldata cannot read the unpacked folder ({exc})") from exc
    recorded = {
        "catalog version": (meta.catalog_version, facts.catalog_version),
        "pg_control version": (meta.pg_control_version, facts.pg_control_version),
        "block size": (meta.key.block_size, facts.block_size),
        "WAL segment size": (meta.wal_segment_size, facts.wal_segment_size),
        "data checksums": (meta.data_checksums, facts.data_checksums),
        "cluster state": ("shut down", facts.state),
    }
    wrong = [f"{what} {got!r}, recorded {want!r}" for what, (want, got) in recorded.items() if want != got]
    if wrong:
        raise SnapshotUnusable(f"the unpacked folder does not match its metadata: {'; '.join(wrong)}")


def verify_snapshot(snapshot: Snapshot) -> SnapshotMeta:
    """For `dbsnap verify`: the metadata reads, the archive has its recorded size and sha256, zstd agrees."""
    meta = SnapshotMeta.read(snapshot.meta_path)
    if not snapshot.archive.is_file():
        raise SnapshotUnusable(f"its archive {snapshot.archive.name} is missing")
    size = snapshot.archive.stat().st_size
    if size != meta.size_bytes:
        raise SnapshotUnusable(f"the archive has {size} bytes but its metadata records {meta.size_bytes} (truncated)")
    digest = hashlib.sha256()
    count, done = meter(), 0  # the step's bar, by bytes hashed
    with snapshot.archive.open("rb") as archive:
        for chunk in iter(lambda: archive.read(_CHUNK), b""):
            digest.update(chunk)
            done += len(chunk)
            count(done, size)
    if digest.hexdigest() != meta.sha256:
        raise SnapshotUnusable("its sha256 does not match its metadata: the archive is damaged")
    return meta


def describe(meta: SnapshotMeta) -> str:
    key = meta.key
    return (
        f"{meta.size_bytes / 1e6:.1f} MB ({meta.data_bytes / 1e6:.0f} MB unpacked), {key.binaries}, "
        f"catalog {meta.catalog_version}, {key.arch} {key.libc}, written in {meta.write_seconds:.1f} s"
    )


def snapshot_meta_dict(meta: SnapshotMeta) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(meta.to_json())
    return result

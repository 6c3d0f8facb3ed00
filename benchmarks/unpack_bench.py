"""How fast can a fresh machine unpack a cluster snapshot on this machine's cores? (issue 28)

    .venv/bin/python benchmarks/unpack_bench.py [--mb 470] [--reps 5]

Makes one stopped data folder (a local cluster started by the project's own code, a table of ~2.4 M rows of
the reference app's shape filled in SQL up to --mb), packs it every candidate way, then unpacks each candidate
--reps times, interleaved (A B C ... A B C ...) so that a busy machine slows all of them alike, into a fresh
folder on the cluster's filesystem (TMPDIR). Prints the median, the spread (min-max) and each candidate's
paired ratio to the current way (per round, then the median of the ratios). Everything runs in a scratch
folder removed at the end.

Candidates:
  current       python reads + sha256 -> zstd -d | tar -x  (what postgres/snapshot.py does; packed zstd -1 -T0)
  zstd-T2       the same archive, zstd -d -T2 (zstd decodes one frame on one core whatever -T says)
  pzstd-p2      packed by pzstd -1 -p2 (independent frames), pzstd -d -p2 decodes two frames at a time
  lz4           packed lz4 -1, lz4 -d
  2x-zstd       the folder split into two archives of equal bytes, each unpacked by its own zstd -d | tar -x
  2x-lz4        the same with lz4
  nohash        the current archive without the python read and sha256 (what hashing costs)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import stop_postmaster
from pytest_dbsnap.postgres.snapshot import _members, controldata

_CHUNK = 1 << 20


def make_folder(scratch: Path, mb: int) -> Path:
    """A stopped data folder with a database of about `mb` MB, copied out of a local cluster."""
    cache = scratch / "cache"
    cluster = LocalCluster(find_pg_tools(None), cache_dir=cache).start()
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE bench")
        with cluster.connect("bench") as conn:
            conn.execute(
                "CREATE TABLE nodes (id bigserial PRIMARY KEY, kind text, name text, attributes jsonb,"
                " created_at timestamptz)"
            )
            rows = mb * 1_000_000 // 200  # about 200 bytes a row with its index entries
            conn.execute(
                "INSERT INTO nodes (kind, name, attributes, created_at) "
                "SELECT (ARRAY['universe','galaxy','star','planet','moon'])[1 + i %% 5], "
                "'node-' || i || '-' || substr(md5(i::text), 1, 12), "
                "jsonb_build_object('mass', i %% 977, 'tag', substr(md5((i %% 5000)::text), 1, 8), 'depth', i %% 7), "
                "timestamptz '2026-01-01' + (i %% 100000) * interval '1 minute' "
                "FROM generate_series(1, %s) AS i",
                (rows,),
            )
            conn.execute("CREATE INDEX ON nodes (name)")
            size = databases.size_of(conn, "bench")
            print(f"database bench: {size / 1e6:.0f} MB ({rows} rows)", flush=True)
        assert stop_postmaster(cluster.tools, cluster.data_dir, cluster.account)
        folder = scratch / "data"
        shutil.copytree(cluster.data_dir, folder, symlinks=True)
        for name in ("postmaster.pid", "postmaster.opts"):
            (folder / name).unlink(missing_ok=True)
    finally:
        cluster.stop()
    return folder


def members(folder: Path) -> list[str]:
    """The files a snapshot carries (snapshot._members: no recycled WAL, no lock files)."""
    facts = controldata(find_pg_tools(None), folder)
    return [m for m in _members(folder, facts) if (folder / m).is_file()]


def pack(folder: Path, files: list[str], out: Path, compressor: list[str]) -> None:
    listing = out.with_suffix(".list")
    listing.write_bytes(b"\0".join(os.fsencode(m) for m in files) + b"\0")
    with out.open("wb") as handle:
        tar = subprocess.Popen(
            ["tar", "-C", str(folder), "--null", "--no-recursion", "-T", str(listing), "-cf", "-"],
            stdout=subprocess.PIPE,
        )
        comp = subprocess.run(compressor, stdin=tar.stdout, stdout=handle, check=True)
        assert tar.wait() == 0
        assert comp.returncode == 0


def halves(folder: Path) -> tuple[list[str], list[str]]:
    """Two lists of files of about equal bytes (largest first into the lighter half)."""
    sized = sorted(((folder / m).stat().st_size, m) for m in members(folder))
    a: list[str] = []
    b: list[str] = []
    sa = sb = 0
    for size, name in reversed(sized):
        if sa <= sb:
            a.append(name)
            sa += size
        else:
            b.append(name)
            sb += size
    return a, b


def pipeline(archive: Path, dest: Path, decompressor: list[str], *, hash_in_python: bool) -> subprocess.Popen[bytes]:
    """Start decompressor | tar -x; with hash_in_python the caller feeds it (as snapshot.unpack does)."""
    if hash_in_python:
        dec = subprocess.Popen(decompressor, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    else:
        dec = subprocess.Popen([*decompressor, str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.Popen(["tar", "-C", str(dest), "--no-same-owner", "-xf", "-"], stdin=dec.stdout)
    assert dec.stdout is not None
    dec.stdout.close()
    tar.dec = dec  # type: ignore[attr-defined]
    return tar


def feed(archive: Path, tar: subprocess.Popen[bytes]) -> str:
    dec = tar.dec  # type: ignore[attr-defined]
    digest = hashlib.sha256()
    with archive.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            dec.stdin.write(chunk)
    dec.stdin.close()
    return digest.hexdigest()


def finish(tar: subprocess.Popen[bytes]) -> None:
    assert tar.dec.wait() == 0  # type: ignore[attr-defined]
    assert tar.wait() == 0


def unpack_one(archives: list[Path], dest: Path, decompressor: list[str], *, hash_in_python: bool = True) -> None:
    """Each archive through its own pipeline, all at once; the python side hashes them one after another in
    threads (hashlib releases the GIL)."""
    import threading

    dest.mkdir()
    tars = [pipeline(a, dest, decompressor, hash_in_python=hash_in_python) for a in archives]
    if hash_in_python:
        threads = [threading.Thread(target=feed, args=(a, t)) for a, t in zip(archives, tars, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for tar in tars:
        finish(tar)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=470)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="unpack-bench-"))
    try:
        folder = make_folder(scratch, args.mb)
        files = members(folder)
        data_mb = sum((folder / m).stat().st_size for m in files) / 1e6
        a, b = halves(folder)
        arch = scratch / "arch"
        arch.mkdir()
        packs: dict[str, tuple[list[str], list[str]]] = {
            "zstd": (["zstd", "-1", "-T0", "-q", "-c"], ["all"]),
            "pzstd": (["pzstd", "-1", "-p", "2", "-q", "-c"], ["all"]),
            "lz4": (["lz4", "-1", "-q", "-c"], ["all"]),
            "2zstd": (["zstd", "-1", "-T1", "-q", "-c"], ["a", "b"]),
            "2lz4": (["lz4", "-1", "-q", "-c"], ["a", "b"]),
        }
        lists = {"all": files, "a": a, "b": b}
        sizes: dict[str, float] = {}
        pack_seconds: dict[str, float] = {}
        for key, (compressor, parts) in packs.items():
            began = time.monotonic()
            for part in parts:
                pack(folder, lists[part], arch / f"{key}-{part}", compressor)
            pack_seconds[key] = time.monotonic() - began
            sizes[key] = sum((arch / f"{key}-{p}").stat().st_size for p in parts) / 1e6
        print(f"data folder {data_mb:.0f} MB, {len(files)} files", flush=True)
        candidates: dict[str, Callable[[Path], None]] = {
            "current": lambda d: unpack_one([arch / "zstd-all"], d, ["zstd", "-d", "-q", "-c"]),
            "zstd-T2": lambda d: unpack_one([arch / "zstd-all"], d, ["zstd", "-d", "-T2", "-q", "-c"]),
            "pzstd-p2": lambda d: unpack_one([arch / "pzstd-all"], d, ["pzstd", "-d", "-p", "2", "-q", "-c"]),
            "lz4": lambda d: unpack_one([arch / "lz4-all"], d, ["lz4", "-d", "-q", "-c"]),
            "2x-zstd": lambda d: unpack_one([arch / "2zstd-a", arch / "2zstd-b"], d, ["zstd", "-d", "-q", "-c"]),
            "2x-lz4": lambda d: unpack_one([arch / "2lz4-a", arch / "2lz4-b"], d, ["lz4", "-d", "-q", "-c"]),
            "nohash": lambda d: unpack_one([arch / "zstd-all"], d, ["zstd", "-d", "-q", "-c"], hash_in_python=False),
        }
        archive_of = {
            "current": "zstd",
            "zstd-T2": "zstd",
            "pzstd-p2": "pzstd",
            "lz4": "lz4",
            "2x-zstd": "2zstd",
            "2x-lz4": "2lz4",
            "nohash": "zstd",
        }
        times: dict[str, list[float]] = {k: [] for k in candidates}
        for rep in range(args.reps):
            order = list(candidates) if rep % 2 == 0 else list(reversed(candidates))
            for key in order:
                dest = scratch / f"out-{key}"
                subprocess.run(["sync"], check=True)
                began = time.monotonic()
                candidates[key](dest)
                times[key].append(time.monotonic() - began)
                shutil.rmtree(dest)
            print(f"round {rep + 1}: " + " ".join(f"{k}={times[k][-1]:.2f}" for k in candidates), flush=True)
        print()
        print(
            "| candidate | archive MB | pack s | unpack median s | spread s | paired ratio to current (median, range) |"
        )
        print("|---|---|---|---|---|---|")
        for key, values in times.items():
            ratios = [c / v for c, v in zip(times["current"], values, strict=True)]
            print(
                f"| {key} | {sizes[archive_of[key]]:.0f} | {pack_seconds[archive_of[key]]:.2f} | "
                f"{statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} | "
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )
        print(f"\nload average at the end: {os.getloadavg()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

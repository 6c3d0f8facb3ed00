"""A folder as tar streams through zstd, and back: the packing and the unpacking half of a cluster snapshot, one
stream per part, the parts unpacked at once (decompressing and writing files use both cores)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from pytest_dbsnap.core.proc import tail
from pytest_dbsnap.errors import SnapshotUnusable, ToolError

CHUNK = 1 << 20


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolError(
            f"the {name} program is not installed (Debian/Ubuntu: apt-get install {name}; macOS: brew install {name})"
        )
    return found


def split(data_dir: Path, members: list[str], count: int) -> list[list[str]]:
    """The members in `count` lists of about equal bytes: the folders first in the first (tar makes a file's
    missing folders itself, and keeps one that is there), each file, largest first, into the lightest list."""
    folders = [m for m in members if (data_dir / m).is_dir()]
    files = sorted(((data_dir / m).stat().st_size, m) for m in members if m not in set(folders))
    groups: list[list[str]] = [list(folders)] + [[] for _ in range(count - 1)]
    weights = [0] * count
    for size, name in reversed(files):
        lightest = weights.index(min(weights))
        groups[lightest].append(name)
        weights[lightest] += size
    return [g for g in groups if g]


def pack_part(
    tar: str, zstd: str, data_dir: Path, listing: Path, out: IO[bytes], whole: Any, *, level: int
) -> tuple[str, int]:
    """One tar of the members in `listing`, through zstd, appended to `out`; its sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    tar_errors = (listing.parent / f"{listing.name}.tar.err").open("w+")
    zstd_errors = (listing.parent / f"{listing.name}.zstd.err").open("w+")
    with tar_errors, zstd_errors:
        archiver = subprocess.Popen(
            [tar, "-C", str(data_dir), "--null", "--no-recursion", "-T", str(listing), "-cf", "-"],
            stdout=subprocess.PIPE,
            stderr=tar_errors,
        )
        assert archiver.stdout is not None
        compressor = subprocess.Popen(
            [zstd, f"-{level}", "-T0", "-q", "-c"],
            stdin=archiver.stdout,
            stdout=subprocess.PIPE,
            stderr=zstd_errors,
        )
        archiver.stdout.close()  # zstd holds it now; tar sees a closed pipe if zstd dies
        assert compressor.stdout is not None
        try:
            for chunk in iter(lambda: compressor.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                digest.update(chunk)
                whole.update(chunk)
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
    return digest.hexdigest(), size


class Unpacking:
    """One part of an archive on its way into the folder: `zstd -d | tar -x`, fed by a thread of ours that
    hashes the part's bytes (hashlib and the pipe writes let the other part's thread run meanwhile)."""

    def __init__(self, tar: str, zstd: str, archive: Path, dest: Path, offset: int, size: int, logs: Path) -> None:
        self.archive, self.offset, self.size = archive, offset, size
        self.digest = hashlib.sha256()
        self.done = 0
        self.error: OSError | None = None
        self.zstd_errors = logs.with_suffix(".zstd.err").open("w+")
        self.tar_errors = logs.with_suffix(".tar.err").open("w+")
        self.decompressor = subprocess.Popen(
            [zstd, "-d", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.zstd_errors
        )
        assert self.decompressor.stdout is not None
        # --no-same-owner: as root the files become root's (then the server account's), never the uids recorded
        # on another machine. GNU tar and bsdtar refuse member names that climb out with "..".
        self.extractor = subprocess.Popen(
            [tar, "-C", str(dest), "--no-same-owner", "-xf", "-"],
            stdin=self.decompressor.stdout,
            stderr=self.tar_errors,
        )
        self.decompressor.stdout.close()

    def feed(self) -> None:
        stdin = self.decompressor.stdin
        assert stdin is not None
        try:
            with self.archive.open("rb") as archive:
                archive.seek(self.offset)
                left = self.size
                while left > 0:
                    chunk = archive.read(min(CHUNK, left))
                    if not chunk:
                        break  # shorter than recorded: the sha256 says so
                    self.digest.update(chunk)
                    stdin.write(chunk)
                    self.done += len(chunk)
                    left -= len(chunk)
        except BrokenPipeError:
            pass  # zstd or tar gave up; their exit codes say why
        except OSError as exc:
            self.error = exc
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def finish(self) -> None:
        """Wait for both programs (after the feeder closed their input, or killing them when it did not)."""
        stdin = self.decompressor.stdin
        if stdin is not None and not stdin.closed:
            self.decompressor.kill()
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        self.decompressor.wait()
        self.extractor.wait()
        self.zstd_errors.close()
        self.tar_errors.close()

    def check(self) -> None:
        for process, path, what in (
            (self.decompressor, self.zstd_errors.name, "zstd -d"),
            (self.extractor, self.tar_errors.name, "tar -x"),
        ):
            if process.returncode != 0:
                raise SnapshotUnusable(f"{what} failed ({tail(Path(path).read_text(), 3) or process.returncode})")

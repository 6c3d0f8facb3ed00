"""Does a folder's filesystem have copy-on-write (reflinks)? Asked once per filesystem by cloning a small file there.

PostgreSQL 18 clones a database's files instead of copying them when `file_copy_method = clone` (CREATE DATABASE
... STRATEGY FILE_COPY): copy_file_range() on Linux, which XFS (made with reflink=1, the default since xfsprogs
5.1) and btrfs answer by sharing blocks, and copyfile() on macOS, which APFS answers by cloning. Elsewhere (ext4,
tmpfs, overlayfs) the same setting still makes a full copy, so the probe asks the filesystem itself: Linux's FICLONE
ioctl, and macOS's clonefile(), succeed only when blocks can be shared.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from pathlib import Path

FICLONE = 0x40049409  # _IOW(0x94, 9, int): make the destination share all of the source's blocks (Linux 4.5+)
_PROBE_BYTES = b"pytest-dbsnap copy-on-write probe\n" * 128  # 4.3 kB: more than one block on every filesystem
_known: dict[int, bool] = {}  # st_dev -> answer, for the life of the process
_lock = threading.Lock()


def has_copy_on_write(folder: Path) -> bool:
    """Whether files in `folder` can be cloned with shared blocks; asked once per filesystem in this process."""
    try:
        device = folder.stat().st_dev
    except OSError:
        return False
    with _lock:
        if device not in _known:
            _known[device] = _probe(folder)
        return _known[device]


def _probe(folder: Path) -> bool:
    """Write a small file in `folder`, clone it, and remove both: False on any refusal (no reflink, no right)."""
    try:
        with tempfile.TemporaryDirectory(prefix=".dbsnap-cow-", dir=folder) as scratch:
            source, clone = Path(scratch) / "source", Path(scratch) / "clone"
            source.write_bytes(_PROBE_BYTES)
            if sys.platform == "darwin":
                return _clonefile(source, clone)
            if sys.platform.startswith("linux"):
                return _ficlone(source, clone)
            return False
    except OSError:
        return False  # a folder we cannot write in: nothing to learn, and the old strategy always works


def _ficlone(source: Path, clone: Path) -> bool:
    """Linux: the FICLONE ioctl fails (EOPNOTSUPP, EINVAL, ENOTTY...) on a filesystem without reflink (ext4, tmpfs,
    overlayfs over them); the caller takes any OSError as no."""
    import fcntl

    with source.open("rb") as src, clone.open("wb") as dst:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    return clone.read_bytes() == _PROBE_BYTES


def _clonefile(source: Path, clone: Path) -> bool:
    """macOS: clonefile(2) fails with ENOTSUP on a volume without cloning (HFS+, network shares)."""
    with contextlib.suppress(AttributeError, OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.clonefile(os.fsencode(source), os.fsencode(clone), 0) == 0:
            return clone.read_bytes() == _PROBE_BYTES
    return False


def forget() -> None:
    """Drop the answers (tests that mount and unmount filesystems, whose device numbers may come back)."""
    with _lock:
        _known.clear()

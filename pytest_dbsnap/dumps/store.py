"""The dump store on disk: <dumps_dir>/<env>/<name>.dump + <name>.json, and a `latest` pointer per environment.

Writes are atomic (temporary name in the same folder, fsync, rename) and the metadata is renamed into place
after its dump, so a reader that lists dumps by their metadata never sees a half-written one. Generators of the
same environment serialise on a file lock.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.files import FILE_MODE, write_atomic
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.errors import ConfigError, DumpCorrupt, DumpError, DumpNotFound
from pytest_dbsnap.postgres.snapshot import SNAPSHOT_MARK

LATEST = "latest"
DUMP_SUFFIX = ".dump"
META_SUFFIX = ".json"
# Environment and dump names become file names: nothing that could climb out of the store folder.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DumpStore:
    """One folder of dumps, one sub-folder per environment."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def env_dir(self, env: str) -> Path:
        if not SAFE_NAME.match(env):
            raise ConfigError(f"The environment name {env!r} is not accepted: use letters, digits, '_', '-', '.'.")
        return self.root / env

    def dump_path(self, env: str, name: str) -> Path:
        return self.env_dir(env) / f"{name}{DUMP_SUFFIX}"

    def meta_path(self, env: str, name: str) -> Path:
        return self.env_dir(env) / f"{name}{META_SUFFIX}"

    def environments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    @contextlib.contextmanager
    def lock(self, env: str, timeout: float = 3600) -> Iterator[None]:
        """Serialise generators of one environment (two CI jobs, xdist workers)."""
        folder = self.env_dir(env)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".generate.lock"), timeout=timeout):
            yield

    # --- reading ------------------------------------------------------------------------------------------

    def names(self, env: str) -> list[str]:
        """Complete dumps (metadata present), oldest first; names sort by their UTC timestamp."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return sorted(
            p.name[: -len(META_SUFFIX)]
            for p in folder.glob(f"*{META_SUFFIX}")
            if not p.name.startswith(".") and SNAPSHOT_MARK not in p.name
        )

    def list(self, env: str) -> builtins.list[DumpMeta]:
        return [self.read_meta(env, name) for name in self.names(env)]

    def read_meta(self, env: str, name: str) -> DumpMeta:
        meta = DumpMeta.read(self.meta_path(env, name))
        if meta.name != name or meta.environment != env:
            raise DumpCorrupt(
                f"The metadata {self.meta_path(env, name)} describes dump {meta.name!r} of environment "
                f"{meta.environment!r}, not {name!r} of {env!r}: the files were renamed or moved by hand. "
                f"Put them back, or re-import the dump with dbsnap import."
            )
        return meta

    def latest_name(self, env: str) -> str | None:
        pointer = self.env_dir(env) / LATEST
        try:
            name = pointer.read_text().strip()
        except FileNotFoundError:
            names = self.names(env)
            return names[-1] if names else None
        return name or None

    def latest(self, env: str) -> DumpMeta | None:
        name = self.latest_name(env)
        return self.read_meta(env, name) if name else None

    def get(self, env: str, name: str = LATEST) -> DumpMeta:
        """A dump by name (or 'latest'), with a message listing what exists when it does not."""
        resolved = self.latest_name(env) if name == LATEST else name
        if resolved is None or not self.meta_path(env, resolved).exists():
            available = self.names(env)
            if not self.env_dir(env).is_dir():
                envs = self.environments()
                where = (
                    f"there is no environment {env!r} in {self.root} (environments: {', '.join(envs) or 'none yet'})"
                )
            elif available:
                where = f"environment {env!r} has: {', '.join(available[-5:])}"
            else:
                where = f"environment {env!r} in {self.root} has no dumps yet"
            asked = "no latest dump" if name == LATEST else f"no dump named {name!r}"
            raise DumpNotFound(
                f"There is {asked}: {where}. Make one with `dbsnap generate --env {env}` "
                f"or bring one with `dbsnap import FILE --env {env}`."
            )
        meta = self.read_meta(env, resolved)
        if not self.dump_path(env, resolved).is_file():
            raise DumpNotFound(
                f"The dump file {self.dump_path(env, resolved)} is missing although its metadata "
                f"exists. Regenerate it with `dbsnap generate --env {env}`."
            )
        return meta

    # --- writing ------------------------------------------------------------------------------------------

    def new_temporary(self, env: str) -> Path:
        """A hidden temporary file in the environment's folder, so the final rename is atomic."""
        folder = self.env_dir(env)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".incoming-{secrets.token_hex(6)}{DUMP_SUFFIX}.tmp"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        return path

    @contextlib.contextmanager
    def incoming(self, env: str) -> Iterator[Path]:
        """A temporary file for a dump on its way in: removed unless installed, also when this process is
        killed (by the session's reaper)."""
        path = self.new_temporary(env)
        with reaper.watched_path(path):
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)  # once installed it has been renamed away

    def install(self, temporary_dump: Path, meta: DumpMeta, *, make_latest: bool = True) -> DumpMeta:
        """Move a finished dump into place, then its metadata, then the latest pointer."""
        target = self.dump_path(meta.environment, meta.name)
        if target.exists() or self.meta_path(meta.environment, meta.name).exists():
            raise DumpError(f"A dump named {meta.name} already exists in {target.parent}; not overwriting it.")
        with open(temporary_dump, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary_dump, FILE_MODE)
        os.replace(temporary_dump, target)
        write_atomic(self.meta_path(meta.environment, meta.name), meta.to_json())
        if make_latest:
            self.set_latest(meta.environment, meta.name)
        return meta

    def set_latest(self, env: str, name: str) -> None:
        write_atomic(self.env_dir(env) / LATEST, name + "\n")

    def remove(self, env: str, name: str) -> None:
        """Metadata first: from then on readers no longer see the dump. Its cluster snapshots go with it."""
        self.meta_path(env, name).unlink(missing_ok=True)
        self.dump_path(env, name).unlink(missing_ok=True)
        folder = self.env_dir(env)
        for snapshot in [*folder.glob(f"{name}{SNAPSHOT_MARK}*"), *folder.glob(f".{name}{SNAPSHOT_MARK}*")]:
            snapshot.unlink(missing_ok=True)

    def prune(self, env: str, keep: int) -> builtins.list[str]:
        """Remove all but the newest `keep` dumps; the one `latest` points at is always kept."""
        if keep < 1:
            raise ConfigError(f"--keep must be 1 or more (got {keep}): prune never removes every dump.")
        with self.lock(env):
            names = self.names(env)
            latest = self.latest_name(env)
            kept = set(names[-keep:]) | ({latest} if latest else set())
            removed = [name for name in names if name not in kept]
            for name in removed:
                self.remove(env, name)
            self.remove_leftovers(env)
        return removed

    def remove_leftovers(self, env: str) -> builtins.list[Path]:
        """Temporary files of generators that were killed (only those no lock holder is writing now)."""
        folder = self.env_dir(env)
        patterns = (".incoming-*.tmp", ".*.json.*.tmp", f".{LATEST}.*.tmp")
        leftovers = [path for pattern in patterns for path in folder.glob(pattern)]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def all_sha256(self) -> set[str]:
        """Content hashes of every dump in the store (to tell which server templates are orphans)."""
        hashes: set[str] = set()
        for env in self.environments():
            for name in self.names(env):
                with contextlib.suppress(DumpError):
                    hashes.add(self.read_meta(env, name).sha256)
        return hashes

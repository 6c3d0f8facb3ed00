"""What makes a dump stale: a hash of the migration and seed inputs, and of the settings that shape the data."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shlex
from pathlib import Path
from typing import Protocol

from pytest_dbsnap.config.placeholders import Command

_SKIP_PARTS = {"__pycache__", ".git", "node_modules", ".venv"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(root: Path, pattern: str) -> list[Path]:
    matches = sorted(root.glob(pattern)) if any(c in pattern for c in "*?[") else [root / pattern]
    files: list[Path] = []
    for match in matches:
        candidates = sorted(match.rglob("*")) if match.is_dir() else [match]
        for path in candidates:
            # Skip caches by the part of the path inside the project: the project may itself live in a
            # folder whose absolute path contains such a name.
            inside = path.relative_to(root).parts if path.is_relative_to(root) else path.parts
            if path.is_file() and not (_SKIP_PARTS & set(inside)) and path.suffix not in _SKIP_SUFFIXES:
                files.append(path)
    return files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


NOT_INSTALLED = "not installed"


def _canonical(name: str) -> str:
    """PEP 503 form, so that `Wagtail` and `wagtail` are one input."""
    return re.sub(r"[-_.]+", "-", name).lower()


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed" (recorded, so installing it makes dumps
    stale rather than failing the run of a project that lists an optional package)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def package_sha256(name: str) -> str:
    """Name plus installed version: migrations shipped inside a package change when it is upgraded."""
    return hashlib.sha256(f"{_canonical(name)}\0{package_version(name)}".encode()).hexdigest()


class FingerprintInputs(Protocol):
    """What shapes a dump's data (Settings has it): the files and packages to hash, the commands and the query."""

    @property
    def project_root(self) -> Path: ...
    @property
    def fingerprint_inputs(self) -> tuple[str, ...]: ...
    @property
    def fingerprint_packages(self) -> tuple[str, ...]: ...
    @property
    def migrate_command(self) -> Command | None: ...
    @property
    def seed_command(self) -> Command | None: ...
    @property
    def schema_version_query(self) -> str | None: ...


def compute_fingerprint(settings: FingerprintInputs) -> tuple[str, dict[str, str]]:
    """(fingerprint, {input: sha256}) over the configured globs, the listed packages' versions and the
    seed-shaping settings."""
    root = settings.project_root
    inputs: dict[str, str] = {}
    for pattern in settings.fingerprint_inputs:
        matched = _files(root, pattern)
        if not matched:
            # A glob that matches nothing is recorded, so that adding its first file makes dumps stale.
            inputs[f"missing:{pattern}"] = "0" * 64
        for path in matched:
            try:
                key = path.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                key = str(path)
            inputs[key] = file_sha256(path)
    for name in settings.fingerprint_packages:
        inputs[f"package:{_canonical(name)}"] = package_sha256(name)
    shaping = {
        # Split as before commands were kept as written, so that existing dumps stay current.
        "migrate_command": _as_argv(settings.migrate_command),
        "seed_command": _as_argv(settings.seed_command),
        "schema_version_query": settings.schema_version_query,
    }
    inputs["setting:commands"] = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    for key in sorted(inputs):
        digest.update(f"{key}\0{inputs[key]}\n".encode())
    return digest.hexdigest(), inputs


def _as_argv(command: str | tuple[str, ...] | None) -> list[str] | tuple[str, ...] | None:
    return shlex.split(command) if isinstance(command, str) else command

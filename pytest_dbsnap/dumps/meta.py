"""DumpMeta: what we know about one dump, stored as versioned JSON beside it and validated on read."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pytest_dbsnap.errors import DumpCorrupt

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DumpMeta:
    """Everything recorded about a dump. `fingerprint` is None for imported dumps (never stale)."""

    name: str
    environment: str
    database: str
    created_at: str
    sha256: str
    size_bytes: int
    pg_dump_version: str
    server_version: str
    git_commit: str | None = None
    git_dirty: bool = False
    fingerprint: str | None = None
    fingerprint_inputs: dict[str, str] = field(default_factory=dict)
    schema_version: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    tool_version: str = ""
    duration_seconds: float = 0.0
    source: str = "generated"  # generated | imported
    format: str = "custom"
    format_version: int = FORMAT_VERSION

    @property
    def template_key(self) -> str:
        """Databases made from this dump are named by its content, so a re-written name cannot mislead."""
        return self.sha256[:20]

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> DumpMeta:
        if not isinstance(data, dict):
            raise DumpCorrupt(
                f"The dump metadata {where} is not a JSON object. Regenerate the dump "
                f"(dbsnap generate) or re-import it (dbsnap import)."
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DumpCorrupt(
                f"The dump metadata {where} has format_version {version!r}; this pytest-dbsnap reads "
                f"version {FORMAT_VERSION}. Upgrade pytest-dbsnap or regenerate the dump."
            )
        known = {f.name: f for f in fields(cls)}
        problems: list[str] = []
        for name in ("name", "environment", "database", "created_at", "sha256", "pg_dump_version", "server_version"):
            if not isinstance(data.get(name), str) or not data.get(name):
                problems.append(f"{name} must be a non-empty string")
        version_text = data.get("pg_dump_version")
        if isinstance(version_text, str) and version_text and not re.match(r"\d+(\.|$)", version_text):
            # pg_dump_major reads it; a word here would otherwise end in a ValueError with a traceback.
            problems.append("pg_dump_version must be a version number such as 15.4")
        if not isinstance(data.get("size_bytes"), int) or data["size_bytes"] < 0:
            problems.append("size_bytes must be a whole number")
        sha = data.get("sha256")
        if isinstance(sha, str) and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            problems.append("sha256 must be 64 lowercase hex digits")
        counts = data.get("row_counts", {})
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            problems.append("row_counts must map table names to whole numbers")
        if data.get("fingerprint") is not None and not isinstance(data.get("fingerprint"), str):
            problems.append("fingerprint must be a string or null")
        inputs = data.get("fingerprint_inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
            # staleness() compares them key by key; anything else would fail there with a traceback.
            problems.append("fingerprint_inputs must map inputs to their sha256")
        if problems:
            raise DumpCorrupt(
                f"The dump metadata {where} is malformed: {'; '.join(problems)}. Regenerate the dump "
                f"(dbsnap generate) or re-import it (dbsnap import)."
            )
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def read(cls, path: Path) -> DumpMeta:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DumpCorrupt(
                f"The dump metadata {path} is missing: a dump without its metadata cannot be "
                f"verified. Regenerate the dump, or wrap the file with dbsnap import."
            ) from exc
        except (OSError, ValueError) as exc:
            raise DumpCorrupt(
                f"The dump metadata {path} is not readable JSON ({exc}). Regenerate the dump "
                f"(dbsnap generate) or re-import it (dbsnap import)."
            ) from exc
        return cls.from_dict(data, where=str(path))

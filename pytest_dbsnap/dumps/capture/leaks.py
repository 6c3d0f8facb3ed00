"""The leak check: a bounded sample of salted hashes of original values of masked columns, kept in memory while
capturing, then looked for in every text column of the captured database. Finding one means a masker let an
original through, or a kept column holds what a masked column hid."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_dbsnap.dumps.capture.catalog import Catalog, escape_percent, quote_ident
from pytest_dbsnap.dumps.capture.maskers import Masker, itself

PER_COLUMN = 200  # originals sampled per masked column (the first distinct ones long enough to mean something)
SHORTEST = 4  # shorter originals ("NY", "0") match by chance far too often to be evidence
CHECKED_TYPES = ("text", "varchar", "bpchar", "citext", "name", "json", "jsonb")


@dataclass
class LeakSample:
    """Salted sha256 of sampled originals: the salt lives only in this process, and no original is stored."""

    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    hashes: dict[bytes, str] = field(default_factory=dict)  # hash -> the masked column it came from
    taken: dict[str, int] = field(default_factory=dict)
    fresh: list[bytes] = field(default_factory=list)  # taken since the last drain (a worker sends them home)

    def _hash(self, value: str) -> bytes:
        return hashlib.sha256(self.salt + value.encode("utf-8", "surrogateescape")).digest()

    def sampler(self, column: str, masker: Masker) -> Callable[[str], bool] | None:
        """What the copy calls with each original of one masked column, until it returns False (it has enough);
        None for a column with nothing to sample."""
        if masker.makes_null:
            return None

        may_output = masker.may_output

        def keep(original: str) -> None:
            if len(original) < SHORTEST or may_output(original):
                return  # an original the masker could itself write proves nothing (a first name is a name)
            digest = self._hash(original)
            if digest not in self.hashes:
                self.hashes[digest] = column
                self.fresh.append(digest)
                self.taken[column] = self.taken.get(column, 0) + 1

        def take(value: str) -> bool:
            for original in masker.hidden(value):
                keep(original)
            return self.taken.get(column, 0) < PER_COLUMN

        def take_value(value: str) -> bool:  # a masker whose value is its only original: no list per value
            keep(value)
            return self.taken.get(column, 0) < PER_COLUMN

        return take_value if masker.hidden is itself else take

    def drain(self) -> dict[bytes, str]:
        """The hashes taken since the last call, for the parent's sample (a masking worker's)."""
        fresh = {digest: self.hashes[digest] for digest in self.fresh}
        self.fresh.clear()
        return fresh

    def merge(self, hashes: dict[bytes, str]) -> None:
        """A worker's hashes (each worker samples at most PER_COLUMN of a column: the whole stays bounded)."""
        self.hashes.update(hashes)

    def find(self, conn: Any, catalog: Catalog, excluded: frozenset[str]) -> list[str]:
        """Where sampled originals turn up in the captured database (`conn`, the local verification copy); the
        salt and the hashes go to that local server only. One scan per table, every text column at once."""
        if not self.hashes:
            return []
        found: list[str] = []
        hashes = list(self.hashes)
        for table in catalog.tables.values():
            if table.partitioned or table.name in excluded:
                continue
            columns = [c.name for c in table.columns if c.base_type in CHECKED_TYPES]
            if not columns:
                continue
            # One hashed `= ANY` per column, OR-ed: cheaper than a LATERAL VALUES row per column (about 12 %);
            # the rare rows that match are named by their columns' hashes, read back for them only.
            hashed = [f"sha256(%s || convert_to({escape_percent(quote_ident(c))}::text, 'UTF8'))" for c in columns]
            rows = conn.execute(
                f"SELECT {', '.join(hashed)} FROM ONLY {escape_percent(table.quoted)} "
                f"WHERE {' OR '.join(f'{h} = ANY(%s)' for h in hashed)} LIMIT 20",
                [self.salt] * len(columns) + [self.salt, hashes] * len(columns),
            ).fetchall()
            for row in rows:
                for column, digest in zip(columns, row, strict=True):
                    origin = self.hashes.get(bytes(digest)) if digest is not None else None
                    if origin is not None:
                        found.append(f"{table.name}.{column} holds an original value of {origin}")
        return sorted(set(found))

"""The leak check: a bounded sample of salted hashes of original values of masked columns, kept in memory while
capturing, then looked for in every text column of the captured database. Finding one means a masker let an
original through, or a kept column holds what a masked column hid."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_dbsnap.dumps.capture.catalog import Catalog, escape_percent, quote_ident
from pytest_dbsnap.dumps.capture.maskers import Masker, itself

PER_COLUMN = 200  # originals sampled per masked column (the first distinct ones long enough to mean something)
SHORTEST = 4  # shorter originals ("NY", "0") match by chance far too often to be evidence
# Values looked at per masked column (per process) before its sampler gives up: a column whose originals are
# mostly ones its masker could write itself (five-digit postal codes) would otherwise be sampled, in Python, on
# every row, for a sample that proves little.
LOOKED_AT = 20_000
CHECKED_TYPES = ("text", "varchar", "bpchar", "citext", "name", "json", "jsonb")


@dataclass
class LeakSample:
    """Salted sha256 of sampled originals: the salt lives only in this process, and no original is stored.
    Each also has a salted md5 (hex), which the server computes about twice as fast: the scan looks for those,
    and only the few rows they match are confirmed by sha256 (where md5() is refused, a FIPS server, the scan
    uses sha256 alone)."""

    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    hashes: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # sha256 -> (masked column, md5 hex)
    taken: dict[str, int] = field(default_factory=dict)
    fresh: list[bytes] = field(default_factory=list)  # taken since the last drain (a worker sends them home)

    def _hash(self, value: str) -> bytes:
        return hashlib.sha256(self.salt + value.encode("utf-8", "surrogateescape")).digest()

    def _md5(self, value: str) -> str:
        text = self.salt.hex() + value  # md5(text) on the server: the UTF-8 bytes of the local cluster's text
        return hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()

    def sampler(self, column: str, masker: Masker) -> Callable[[str], bool] | None:
        """What the copy calls with each original of one masked column, until it returns False (it has enough);
        None for a column with nothing to sample."""
        if masker.makes_null:
            return None

        may_output = masker.may_output
        looked = [0]

        def keep(original: str) -> None:
            if len(original) < SHORTEST or may_output(original):
                return  # an original the masker could itself write proves nothing (a first name is a name)
            digest = self._hash(original)
            if digest not in self.hashes:
                self.hashes[digest] = (column, self._md5(original))
                self.fresh.append(digest)
                self.taken[column] = self.taken.get(column, 0) + 1

        def take(value: str) -> bool:
            for original in masker.hidden(value):
                keep(original)
            looked[0] += 1
            return self.taken.get(column, 0) < PER_COLUMN and looked[0] < LOOKED_AT

        def take_value(value: str) -> bool:  # a masker whose value is its only original: no list per value
            keep(value)
            looked[0] += 1
            return self.taken.get(column, 0) < PER_COLUMN and looked[0] < LOOKED_AT

        return take_value if masker.hidden is itself else take

    def drain(self) -> dict[bytes, tuple[str, str]]:
        """The hashes taken since the last call, for the parent's sample (a masking worker's)."""
        fresh = {digest: self.hashes[digest] for digest in self.fresh}
        self.fresh.clear()
        return fresh

    def merge(self, hashes: dict[bytes, tuple[str, str]]) -> None:
        """A worker's hashes (each worker samples at most PER_COLUMN of a column: the whole stays bounded)."""
        self.hashes.update(hashes)

    def find(self, conn: Any, catalog: Catalog, excluded: frozenset[str]) -> list[str]:
        """Where sampled originals turn up in the captured database (`conn`, the local verification copy); the
        salt and the hashes go to that local server only. One scan per table, every text column at once."""
        if not self.hashes:
            return []
        found: list[str] = []
        hashes, md5s = list(self.hashes), sorted({md5 for _column, md5 in self.hashes.values()})
        prefilter = True
        for table in catalog.tables.values():
            if table.partitioned or table.name in excluded:
                continue
            names = [c.name for c in table.columns if c.base_type in CHECKED_TYPES]
            if not names:
                continue
            columns = [escape_percent(quote_ident(name)) for name in names]
            # One hashed `= ANY` per column, OR-ed: cheaper than a LATERAL VALUES row per column (about 12 %);
            # the rare rows that match are named by their columns' sha256, read back for them only.
            hashed = [f"sha256(%s || convert_to({c}::text, 'UTF8'))" for c in columns]
            select = f"SELECT {', '.join(hashed)} FROM ONLY {escape_percent(table.quoted)} WHERE "
            rows = None
            if prefilter:
                try:
                    rows = conn.execute(
                        select + " OR ".join(f"md5(%s || {c}::text) = ANY(%s)" for c in columns) + " LIMIT 20",
                        [self.salt] * len(columns) + [self.salt.hex(), md5s] * len(columns),
                    ).fetchall()
                except psycopg.Error:  # md5() refused (a FIPS build): sha256 alone, for every table
                    conn.rollback()
                    prefilter = False
            if rows is None:
                rows = conn.execute(
                    select + " OR ".join(f"{h} = ANY(%s)" for h in hashed) + " LIMIT 20",
                    [self.salt] * len(columns) + [self.salt, hashes] * len(columns),
                ).fetchall()
            for row in rows:
                for name, digest in zip(names, row, strict=True):
                    origin = self.hashes.get(bytes(digest)) if digest is not None else None
                    if origin is not None:
                        found.append(f"{table.name}.{name} holds an original value of {origin[0]}")
        return sorted(set(found))

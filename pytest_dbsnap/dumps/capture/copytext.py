"""Masking rows in COPY's text format, as bytes: only the masked fields of a row are touched, every other field
passes through, so a wide table costs little more than its masked columns. A masked field without a backslash is
the value's own UTF-8 bytes, which a masker with a fast path hashes and answers as bytes; the others are decoded,
masked as str and re-encoded (the same outputs either way)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_dbsnap.dumps.capture._fastmask import Native

try:  # masking whole chunks in C (_fastmask.c, built where the install found a C compiler)
    from pytest_dbsnap.dumps.capture._fastmask import mask_chunk
except ImportError:
    mask_chunk = None  # type: ignore[assignment]

# COPY TO writes a backslash before \, and before a newline, carriage return, tab, backspace, form feed and
# vertical tab, which it writes as letters; NULL is \N. (Octal and hex escapes are read by COPY FROM, never
# written by COPY TO.)
_LETTERS = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f", b"v": b"\v"}
_CODES = {value: b"\\" + key for key, value in _LETTERS.items()} | {b"\\": b"\\\\"}
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_SPECIAL = re.compile(rb"[\\\n\r\t\b\f\v]")
NULL = b"\\N"
REMEMBERED = 1 << 14  # masked values remembered per rule, for inputs that repeat (an email in every order)
REMEMBERED_LONGEST = 128  # bytes: longer inputs (texts) rarely repeat and would make the memory grow


def decode_field(field: bytes) -> str:
    if 92 in field:  # a backslash (an int test: several times faster than b"\\" in field)
        field = _ESCAPED.sub(lambda m: _LETTERS.get(m[1], m[1]), field)
    return field.decode("utf-8", "surrogateescape")


def encode_field(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode("utf-8", "surrogateescape")
    # One memchr per byte COPY escapes: a third of the time of the regex's search.
    if 92 in data or 10 in data or 13 in data or 9 in data or 8 in data or 12 in data or 11 in data:
        return _SPECIAL.sub(lambda m: _CODES[m[0]], data)
    return data


Mask = Callable[[str], str | None]
Sampler = Callable[[str], bool]
# Masks a field COPY sent without a backslash: its bytes are the value's own (what the keyed hash reads), the
# result is the masked value's COPY bytes, the same as the str path's.
FastMask = Callable[[bytes], bytes]


# (column index, mask to COPY bytes, fast mask or None, sampler, memo, the fast mask in C or None): the sampler
# sees originals and says whether it wants more; the memo maps an input's COPY bytes to its masked COPY bytes,
# shared by the fields whose rule is the same.
FieldMask = tuple[int, Callable[[str], bytes], FastMask | None, Sampler | None, dict[bytes, bytes], "Native | None"]


def to_copy(mask: Mask, plain: bool = False) -> Callable[[str], bytes]:
    """`mask` writing COPY bytes; `plain`: its outputs never hold a character COPY escapes (no regex pass)."""
    if plain:
        return lambda value: mask(value).encode()  # type: ignore[union-attr]
    return lambda value: encode_field(mask(value))


class ChunkMasker:
    """Masks whole rows of one table, a chunk at a time, a column at a time; the samplers stop once they have
    enough. Inputs of up to REMEMBERED_LONGEST bytes are remembered, REMEMBERED per memo (checked once a chunk: a
    memo holds at most REMEMBERED and one chunk's values)."""

    def __init__(self, fields: Sequence[FieldMask]) -> None:
        self.fields = list(fields)
        # (index, native, slow) by index, when every field has its C masker: whole chunks in C once no column is
        # sampled any more (mask_chunk: no memo, no row split into Python objects; the same outputs).
        self.whole: list[tuple[int, Native, Callable[[bytes], bytes]]] | None = None
        whole = [(f[0], f[5], _slow(f[1], f[2])) for f in self.fields if f[5] is not None]
        if mask_chunk is not None and whole and len(whole) == len(self.fields):
            self.whole = sorted(whole)

    def __call__(self, data: bytes) -> bytes:
        """Masked COPY text of `data`, which holds whole rows (each ending in a newline)."""
        if self.whole is not None and all(f[3] is None for f in self.fields):
            return mask_chunk(data, self.whole)
        rows = [line.split(b"\t") for line in data.split(b"\n")]
        rows.pop()  # after the last newline
        for position in range(len(self.fields)):
            self._column(position, rows)
        rows.append([b""])
        return b"\n".join([b"\t".join(row) for row in rows])

    def _column(self, position: int, rows: list[list[bytes]]) -> None:
        index, mask, fast, take, memo, native = self.fields[position]
        if len(memo) >= REMEMBERED:
            memo.clear()  # bounded: a fresh start costs a few recomputations, never memory
        done = 0
        if take is not None:
            for row in rows:
                done += 1
                raw = row[index]
                if raw == NULL:
                    continue
                original = decode_field(raw)
                masked = memo.get(raw)  # the sampler still sees every original; the memo only saves masking it
                if masked is None:
                    masked = mask(original) if fast is None or 92 in raw else fast(raw)
                    if len(raw) <= REMEMBERED_LONGEST:
                        memo[raw] = masked
                row[index] = masked
                if not take(original):
                    self.fields[position] = (index, mask, fast, None, memo, native)
                    break
        if native is not None:
            native.column(rows, index, done, memo, _slow(mask, fast), REMEMBERED_LONGEST)
            return
        remembered = memo.get
        for row in rows[done:] if done else rows:
            raw = row[index]
            known = remembered(raw)
            if known is None:
                if raw == NULL:
                    continue
                known = mask(decode_field(raw)) if fast is None or 92 in raw else fast(raw)
                if len(raw) <= REMEMBERED_LONGEST:
                    memo[raw] = known
            row[index] = known


def _slow(mask: Callable[[str], bytes], fast: FastMask | None) -> Callable[[bytes], bytes]:
    """A field's masking in Python, for the fields the C code hands back."""

    def slow(raw: bytes) -> bytes:
        return mask(decode_field(raw)) if fast is None or 92 in raw else fast(raw)

    return slow


def whole_rows(blocks: Iterable[bytes | bytearray | memoryview], size: int) -> Iterator[bytes]:
    """Blocks of COPY data (a row each, as COPY TO sends them, or many) joined into chunks of about `size` bytes
    that end at a row's end, so a chunk can be masked on its own (here or in another process) and written with
    one call."""
    chunk: list[bytes] = []
    gathered = 0
    pending = b""
    for block in blocks:
        data = bytes(block)
        chunk.append(data)
        gathered += len(data)
        if gathered >= size:
            joined = pending + b"".join(chunk)
            end = joined.rfind(b"\n") + 1
            pending = joined[end:]
            chunk, gathered = [], 0
            if end:
                yield joined[:end]
    joined = pending + b"".join(chunk)
    if joined and not joined.endswith(b"\n"):
        raise ValueError("COPY data ended inside a row")
    if joined:
        yield joined

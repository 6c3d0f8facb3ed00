"""Masking rows in COPY's text format, as bytes: only the masked fields of a row are decoded and re-encoded,
every other field passes through untouched, so a wide table costs little more than its masked columns."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence

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
    if b"\\" in field:
        field = _ESCAPED.sub(lambda m: _LETTERS.get(m[1], m[1]), field)
    return field.decode("utf-8", "surrogateescape")


def encode_field(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode("utf-8", "surrogateescape")
    return _SPECIAL.sub(lambda m: _CODES[m[0]], data) if _SPECIAL.search(data) else data


Mask = Callable[[str], str | None]
Sampler = Callable[[str], bool]
# (column index, mask to COPY bytes, sampler, memo): the sampler sees originals and says whether it wants more; the
# memo maps an input's COPY bytes to its masked COPY bytes, shared by the fields whose rule is the same.
FieldMask = tuple[int, Callable[[str], bytes], Sampler | None, dict[bytes, bytes] | None]


def to_copy(mask: Mask, plain: bool = False) -> Callable[[str], bytes]:
    """`mask` writing COPY bytes; `plain`: its outputs never hold a character COPY escapes (no regex pass)."""
    if plain:
        return lambda value: mask(value).encode()  # type: ignore[union-attr]
    return lambda value: encode_field(mask(value))


class ChunkMasker:
    """Masks whole rows of one table, a chunk at a time; the samplers stop once they have enough."""

    def __init__(self, fields: Sequence[FieldMask]) -> None:
        self.fields = list(fields)

    def __call__(self, data: bytes) -> bytes:
        """Masked COPY text of `data`, which holds whole rows (each ending in a newline)."""
        rows = [line.split(b"\t") for line in data.split(b"\n")[:-1]]
        for position, (index, mask, take, memo) in enumerate(self.fields):
            for row in rows:
                raw = row[index]
                if raw == NULL:
                    continue
                if take is None and memo is not None:
                    done = memo.get(raw)
                    if done is not None:
                        row[index] = done
                        continue
                original = decode_field(raw)
                if take is not None and not take(original):
                    take = None
                    self.fields[position] = (index, mask, None, memo)
                masked = mask(original)
                if memo is not None and len(raw) <= REMEMBERED_LONGEST:
                    if len(memo) >= REMEMBERED:
                        memo.clear()  # bounded: a fresh start costs a few recomputations, never memory
                    memo[raw] = masked
                row[index] = masked
        return b"".join(b"\t".join(row) + b"\n" for row in rows)


def whole_rows(blocks: Iterable[bytes | bytearray | memoryview], size: int) -> Iterator[bytes]:
    """COPY TO sends a message per row: joined into chunks of about `size` bytes that end at a row's end, so a
    chunk can be masked on its own (here or in another process) and written with one call."""
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

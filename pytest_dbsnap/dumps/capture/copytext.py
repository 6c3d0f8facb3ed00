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
FLUSH = 1 << 16  # bytes of masked rows gathered before one write to the target


def decode_field(field: bytes) -> str:
    if b"\\" in field:
        field = _ESCAPED.sub(lambda m: _LETTERS.get(m[1], m[1]), field)
    return field.decode("utf-8", "surrogateescape")


def encode_field(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode("utf-8", "surrogateescape")
    return _SPECIAL.sub(lambda m: _CODES[m[0]], data) if _SPECIAL.search(data) else data


FieldMask = tuple[int, Callable[[str], str | None], Callable[[str], bool] | None]


def mask_rows(blocks: Iterable[bytes | bytearray | memoryview], fields: Sequence[FieldMask]) -> Iterator[bytes]:
    """Masked COPY text from COPY text, in chunks of about FLUSH bytes. Each field is (column index, mask,
    sampler): the sampler sees the original and says whether it wants more (None once it has enough)."""
    samplers = [take for _index, _mask, take in fields]
    pending = b""
    for data in _gathered(blocks):
        lines = (pending + data).split(b"\n")
        pending = lines.pop()  # an unfinished row, completed by the next chunk
        out: list[bytes] = []
        for line in lines:
            row = line.split(b"\t")
            for position, (index, mask, _take) in enumerate(fields):
                raw = row[index]
                if raw == NULL:
                    continue
                original = decode_field(raw)
                take = samplers[position]
                if take is not None and not take(original):
                    samplers[position] = None
                row[index] = encode_field(mask(original))
            out.append(b"\t".join(row))
        if out:
            yield b"\n".join(out) + b"\n"
    if pending:
        raise ValueError("COPY data ended inside a row")


def _gathered(blocks: Iterable[bytes | bytearray | memoryview]) -> Iterator[bytes]:
    """COPY TO sends a message per row: joined into chunks of about FLUSH bytes, a row is split, masked and
    written with the others of its chunk instead of one at a time."""
    chunk: list[bytes] = []
    size = 0
    for block in blocks:
        data = bytes(block)
        chunk.append(data)
        size += len(data)
        if size >= FLUSH:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)

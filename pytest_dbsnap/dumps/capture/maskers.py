"""Deterministic fake values: each output is chosen by keyed BLAKE2b (key, masker and input), on the capturing
machine, here in Python and in _fastmask.c in C (the same outputs). The same input, masker and key give the same
output in every table and on every run (so a masked key still joins); a different key gives different values;
the key never leaves this process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from binascii import hexlify
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dbsnap.dumps.capture.copytext import encode_field
from pytest_dbsnap.errors import DumpError

if TYPE_CHECKING:
    from pytest_dbsnap.dumps.capture._fastmask import Native

try:  # the named maskers' fast paths in C (optional: built where the install found a C compiler)
    from pytest_dbsnap.dumps.capture import _fastmask
except ImportError:
    _fastmask = None  # type: ignore[assignment]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ada Alan Alma Arne Bea Bruno Carla Cyril Dana Dario Edda Elio Fay Felix Gemma Gus Hana Hugo Ines Ivo "
    "Jana Jonas Kira Kai Lea Lino Mara Milo Nell Nico Olga Otto Pia Paul Rosa Rui Sina Tom Una Vito Wanda "
    "Yann Zoe"
)
LAST_NAMES = _words(
    "Abbott Baker Castro Dalton Engel Fischer Garcia Holm Ito Jansen Keller Lopez Moreau Novak Olsen "
    "Petrov Quinn Rossi Silva Tanaka Ueda Varga Weber Xu Young Zimmer Berg Costa Dubois Ferrari Hansen "
    "Kowalski"
)
STREETS = _words("Oak Maple Cedar Elm Pine Birch Willow Aspen Linden Chestnut Alder Rowan Hazel Juniper")
STREET_KINDS = ("Street", "Road", "Lane", "Avenue", "Way", "Court")
LOREM = _words(
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex "
    "ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim "
    "id est laborum"
)

# Names of the maskers written as a plain string in the policy; {value = ...} and {json = {...}} are tables.
NAMED = ("email", "first_name", "last_name", "full_name", "phone", "street", "postal_code", "text", "hash", "null")
# Maskers whose outputs come from a small vocabulary: an original that is one of them is not evidence of a leak.
VOCABULARY = ("first_name", "last_name", "full_name", "street", "postal_code")
EMAIL_TOKEN = 16  # hex digits of the keyed hash in each email: distinct inputs stay distinct (64 bits)
PHONE = re.compile(r"^\+1-555-\d{3}-\d{4}$")
EMAIL = re.compile(rf"^[a-z]+\.[a-z]+\.[0-9a-f]{{{EMAIL_TOKEN}}}@example\.com$")
_WORD = re.compile(r"\w+")
# ASCII text splits into \w+ words faster by turning every other byte into a space (the same words).
_ASCII_WORDS = bytes(c if chr(c).isalnum() or chr(c) == "_" else 32 for c in range(256))


def key_fingerprint(key: bytes) -> str:
    """Recorded in the metadata: tells two captures' keys apart without revealing either."""
    return hashlib.sha256(b"dbsnap capture key\0" + key).hexdigest()[:16]


def itself(value: str) -> list[str]:
    """The originals a plain value hides: the value itself (what most maskers' `hidden` is)."""
    return [value]


@dataclass(frozen=True)
class Masker:
    """One rule, ready to run: `mask(original text) -> replacement text or None (SQL NULL)`."""

    spec: str  # how the policy wrote it, for messages
    mask: Callable[[str], str | None]
    max_length: int | None  # the longest output; None when it follows the input's length
    unique: bool  # distinct inputs give distinct outputs (the restore checks unique columns)
    categories: frozenset[str] | None  # pg_type categories it may fill; None: any type
    may_output: Callable[[str], bool]  # whether this masker could itself produce the value
    # The originals it hides in one value, for the leak check: the value itself, or a JSON document's strings
    # under the masked keys.
    hidden: Callable[[str], list[str]] = itself
    plain: bool = False  # its outputs never hold a tab, newline or backslash (COPY needs no escaping)
    # The same masking from the value's UTF-8 bytes to the output's COPY bytes, without a str in between (what
    # COPY sends for a field with no backslash); None: only the str path.
    fast: Callable[[bytes], bytes] | None = None
    # `fast` in C, a column of a chunk at a time (_fastmask.c), where it was built and not turned off.
    native: Native | None = None

    @property
    def makes_null(self) -> bool:
        return self.spec == "null"


PERSON = b"dbsnap-capture"  # BLAKE2b's personalization: these hashes differ from any other use of the key


def native_masking() -> bool:
    """Whether the named maskers run in C (see _Keyed.native)."""
    return _fastmask is not None and os.environ.get("DBSNAP_MASKING") != "python"


def _native_constant(copied: bytes) -> Native | None:
    """The same COPY bytes for every value, in C: lets a table whose masked columns include `null` or `{value}`
    be masked a whole chunk at a time."""
    if not native_masking():
        return None
    return _fastmask.Native(_fastmask.CONSTANT, b"", b"", PERSON, copied, [])


def python_only_note() -> str | None:
    """What a capture says when its maskers ran in Python because the C ones were not built (not when
    DBSNAP_MASKING=python asked for it)."""
    if _fastmask is not None:
        return None
    return (
        "the maskers ran in Python only: this install of pytest-dbsnap has no compiled maskers (it was built "
        "without a C compiler), which makes a masked capture about twice as long on two cores. The outputs are "
        "the same. Reinstall it where gcc and the Python headers are present (apt-get install gcc python3-dev)."
    )


class _Keyed:
    """Keyed BLAKE2b (RFC 7693's MAC mode) under the capture key, with the masker's name before the value so
    maskers do not agree. One pass over the value, where HMAC-SHA256 takes two hashes: about a third of the time
    per value, and the same guarantee (without the key, the outputs cannot be told from random choices)."""

    def __init__(self, key: bytes, name: str) -> None:
        # BLAKE2b takes keys of up to 64 bytes; a longer secret is first hashed to 32.
        secret = key if len(key) <= 64 else hashlib.sha256(key).digest()
        self._state = hashlib.blake2b(key=secret, digest_size=32, person=PERSON)
        self._state.update(name.encode() + b"\0")
        self.secret, self.name = secret, name

    def native(self, kind: str, first: object = (), second: object = ()) -> Native | None:
        """The C masker `kind` under this key and name, or None: not built, or DBSNAP_MASKING=python."""
        if not native_masking():
            return None
        number: int = getattr(_fastmask, kind)
        return _fastmask.Native(number, self.secret, self.name.encode(), PERSON, first, second)

    def digest(self, value: str) -> bytes:
        state = self._state.copy()
        state.update(value.encode("utf-8", "surrogateescape"))
        return state.digest()

    def fresh(self) -> Callable[[], hashlib.blake2b]:
        """A new hash state holding the key and the name, for the fast paths: they update it with the value's
        bytes, the same hash input as `digest`'s."""
        return self._state.copy


def _pick(options: tuple[str, ...] | list[str], number: int) -> str:
    return options[number % len(options)]


def _by_byte(options: tuple[str, ...], suffix: str) -> list[bytes]:
    """_pick's choice for each value of one byte, as bytes: a list index instead of a modulo and an encode."""
    return [(_pick(options, i) + suffix).lower().encode() for i in range(256)]


# int.from_bytes(digest[:4]) (big-endian) and the next ones, without slices
_U32: Callable[[bytes], tuple[int]] = struct.Struct(">I").unpack_from
_U32X2: Callable[[bytes], tuple[int, int]] = struct.Struct(">II").unpack_from
_U32X3: Callable[[bytes], tuple[int, int, int]] = struct.Struct(">III").unpack_from
_ENCODED: dict[tuple[str, ...], list[bytes]] = {}


def _encoded(options: tuple[str, ...]) -> list[bytes]:
    return _ENCODED.setdefault(options, [o.encode() for o in options])


def _never(_value: str) -> bool:
    return False


STRING = frozenset({"S"})
JSON_TYPES = frozenset({"json", "jsonb"})


def _named(name: str, key: bytes) -> Masker:
    keyed = _Keyed(key, name)
    fresh = keyed.fresh()

    def picked(options: tuple[str, ...]) -> Callable[[bytes], bytes]:
        """The fast path of a masker that picks one of `options` by the first four bytes of the digest."""
        encoded = _encoded(options)
        count = len(options)

        def pick(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            return encoded[_U32(state.digest())[0] % count]

        return pick

    def number(value: str) -> int:
        return int.from_bytes(keyed.digest(value)[:4])

    if name == "email":

        def email(value: str) -> str:
            digest = keyed.digest(value)
            first, last = _pick(FIRST_NAMES, digest[0]), _pick(LAST_NAMES, digest[1])
            return f"{first}.{last}.{digest[2:].hex()[:EMAIL_TOKEN]}@example.com".lower()

        firsts, lasts = _by_byte(FIRST_NAMES, "."), _by_byte(LAST_NAMES, ".")

        def email_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            digest = state.digest()
            return firsts[digest[0]] + lasts[digest[1]] + hexlify(digest[2 : 2 + EMAIL_TOKEN // 2]) + b"@example.com"

        longest = max(map(len, FIRST_NAMES)) + max(map(len, LAST_NAMES)) + EMAIL_TOKEN + len("..@example.com")
        return Masker(
            name, email, longest, True, STRING, lambda v: bool(EMAIL.match(v)), plain=True, fast=email_fast,
            native=keyed.native("EMAIL", firsts, lasts),
        )  # fmt: skip
    if name == "first_name":
        return Masker(
            name, lambda v: _pick(FIRST_NAMES, number(v)), max(map(len, FIRST_NAMES)), False, STRING,
            lambda v: v in FIRST_NAMES, plain=True, fast=picked(FIRST_NAMES),
            native=keyed.native("PICK", _encoded(FIRST_NAMES)),
        )  # fmt: skip
    if name == "last_name":
        return Masker(
            name, lambda v: _pick(LAST_NAMES, number(v)), max(map(len, LAST_NAMES)), False, STRING,
            lambda v: v in LAST_NAMES, plain=True, fast=picked(LAST_NAMES),
            native=keyed.native("PICK", _encoded(LAST_NAMES)),
        )  # fmt: skip
    if name == "full_name":

        def full(value: str) -> str:
            digest = keyed.digest(value)
            return f"{_pick(FIRST_NAMES, int.from_bytes(digest[:4]))} {_pick(LAST_NAMES, int.from_bytes(digest[4:8]))}"

        def is_full(value: str) -> bool:
            parts = value.split(" ")
            return len(parts) == 2 and parts[0] in FIRST_NAMES and parts[1] in LAST_NAMES

        firsts, lasts = _encoded(FIRST_NAMES), _encoded(LAST_NAMES)

        def full_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            first, last = _U32X2(state.digest())
            return firsts[first % len(firsts)] + b" " + lasts[last % len(lasts)]

        longest = max(map(len, FIRST_NAMES)) + 1 + max(map(len, LAST_NAMES))
        return Masker(
            name, full, longest, False, STRING, is_full, plain=True, fast=full_fast,
            native=keyed.native("FULL_NAME", firsts, lasts),
        )  # fmt: skip
    if name == "phone":

        def phone(value: str) -> str:
            digits = number(value) % 10_000_000
            return f"+1-555-{digits // 10_000:03d}-{digits % 10_000:04d}"

        def phone_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            digits = _U32(state.digest())[0] % 10_000_000
            return b"+1-555-%03d-%04d" % (digits // 10_000, digits % 10_000)

        return Masker(
            name, phone, 15, False, STRING, lambda v: bool(PHONE.match(v)), plain=True, fast=phone_fast,
            native=keyed.native("PHONE"),
        )  # fmt: skip
    if name == "street":

        def street(value: str) -> str:
            digest = keyed.digest(value)
            house, which, kind = (int.from_bytes(digest[i : i + 4]) for i in (0, 4, 8))
            return f"{house % 998 + 1} {_pick(STREETS, which)} {_pick(STREET_KINDS, kind)}"

        names, kinds = _encoded(STREETS), _encoded(STREET_KINDS)

        def street_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            house, which, kind = _U32X3(state.digest())
            return b"%d %s %s" % (house % 998 + 1, names[which % len(names)], kinds[kind % len(kinds)])

        longest = 4 + max(map(len, STREETS)) + 1 + max(map(len, STREET_KINDS))
        streets = re.compile(rf"^\d{{1,3}} ({'|'.join(STREETS)}) ({'|'.join(STREET_KINDS)})$")
        return Masker(
            name, street, longest, False, STRING, lambda v: bool(streets.match(v)), plain=True, fast=street_fast,
            native=keyed.native("STREET", names, kinds),
        )  # fmt: skip
    if name == "postal_code":

        def postal_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            return b"%05d" % (_U32(state.digest())[0] % 100_000)

        five_digits = re.compile(r"\d{5}").fullmatch
        return Masker(
            name,
            lambda v: f"{number(v) % 100_000:05d}",
            5,
            False,
            STRING,
            lambda v: bool(five_digits(v)),
            plain=True,
            fast=postal_fast,
            native=keyed.native("POSTAL_CODE"),
        )
    if name == "text":
        return Masker(
            name, lambda v: _text(keyed, v), None, False, STRING, _never, plain=True, fast=_text_fast(keyed, fresh),
            native=keyed.native("TEXT", _CORPUS_BYTES, _STARTS),
        )  # fmt: skip
    if name == "hash":

        def hash_fast(data: bytes) -> bytes:
            state = fresh()
            state.update(data)
            return hexlify(state.digest())

        return Masker(
            name, lambda v: keyed.digest(v).hex(), 64, True, STRING, _never, plain=True, fast=hash_fast,
            native=keyed.native("HASH"),
        )  # fmt: skip
    if name == "null":
        return Masker(
            name, lambda _v: None, 0, True, None, _never, fast=lambda _data: b"\\N", native=_native_constant(b"\\N")
        )
    raise ValueError(name)


# A fixed text of lorem words in a scrambled order (the same on every machine); a masked text is a slice of it,
# cut to the original's length, starting at a word the keyed hash picks: one hash and two regex passes per value.
_CORPUS = " ".join(LOREM[(i * 7919 + i // len(LOREM)) % len(LOREM)] for i in range(8192))
_LOREM_SET = frozenset(LOREM)
_STARTS = [m.start() for m in re.finditer(r"\b\w", _CORPUS[: len(_CORPUS) // 2])]


def _text(keyed: _Keyed, value: str) -> str:
    """Lorem words to the original's exact length (so a length limit holds), none of them an original word."""
    if not value:
        return value
    size = len(value)
    corpus = _CORPUS if size <= len(_CORPUS) // 2 else " ".join([_CORPUS] * (size // len(_CORPUS) + 2))
    start = _STARTS[int.from_bytes(keyed.digest(value)[:4], "big") % len(_STARTS)]
    text = corpus[start : start + size]
    lowered = value.lower()
    if lowered.isascii():
        banned = set(lowered.encode().translate(_ASCII_WORDS).decode().split())
    else:
        banned = set(_WORD.findall(lowered))
    # The slice starts at a whole lorem word and may cut the last one: only those can be an original's word.
    if banned & _LOREM_SET or text[text.rfind(" ") + 1 :] in banned:
        filler = "x" if "x" not in banned else "q"
        text = _WORD.sub(lambda m: filler * len(m[0]) if m[0] in banned else m[0], text)
    return text


_CORPUS_BYTES = _CORPUS.encode()
_LOREM_BYTES = frozenset(word.encode() for word in LOREM)


def _text_fast(keyed: _Keyed, fresh: Callable[[], hashlib.blake2b]) -> Callable[[bytes], bytes]:
    """_text on bytes for an ASCII value whose words are no lorem word (the common case: one hash, one translate
    and a list of its words); any other value goes the str way."""
    starts = _STARTS
    half = len(_CORPUS) // 2

    def text(data: bytes) -> bytes:
        size = len(data)
        if not size or size > half or not data.isascii():
            return _text(keyed, data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        state = fresh()
        state.update(data)
        start = starts[_U32(state.digest())[0] % len(starts)]
        out = _CORPUS_BYTES[start : start + size]
        words = data.lower().translate(_ASCII_WORDS).split()  # a list: a set of them costs more than it saves
        if not _LOREM_BYTES.isdisjoint(words) or out[out.rfind(b" ") + 1 :] in words:
            return _text(keyed, data.decode()).encode()
        return out

    return text


def _constant(value: Any) -> Masker:
    """{ value = ... }: the same replacement for every row."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise ValueError("a string, number or boolean")
    copied = encode_field(text)
    return Masker(
        f"value={text!r}", lambda _v: text, len(text), False, None, _never, fast=lambda _data: copied,
        native=_native_constant(copied),
    )  # fmt: skip


# json.dumps(value, ensure_ascii=False) builds this encoder on every call (it caches only the default one).
_TO_JSON = json.JSONEncoder(ensure_ascii=False).encode


def _json(rules: Mapping[str, Masker]) -> Masker:
    """{ json = { key = masker } }: the string values under those keys, at any depth, are masked; a number or
    a nested object under such a key is masked as its JSON text (fail closed); every other key is kept."""

    def walk(node: Any) -> Any:
        """Masks in place (the document was just parsed), descending only into objects and arrays."""
        if isinstance(node, dict):
            for k, v in node.items():
                rule = rules.get(k)
                if rule is not None and v is not None:
                    node[k] = rule.mask(v if isinstance(v, str) else json.dumps(v))
                elif isinstance(v, dict | list):
                    walk(v)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, dict | list):
                    walk(item)
        return node

    def mask(value: str) -> str:
        return _TO_JSON(walk(json.loads(value)))

    def hidden(value: str) -> list[str]:
        found: list[str] = []
        stack = [json.loads(value)]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in rules and isinstance(v, str) and not rules[k].may_output(v):
                        found.append(v)
                    else:
                        stack.append(v)
            elif isinstance(node, list):
                stack.extend(node)
        return found

    spec = "json={" + ", ".join(f"{k}={m.spec}" for k, m in sorted(rules.items())) + "}"
    native = None
    if native_masking() and all(m.native is not None or m.makes_null for m in rules.values()):
        inner = {k.encode(): None if m.makes_null else m.native for k, m in rules.items()}  # None: JSON's null
        native = _fastmask.Native(_fastmask.JSON, b"", b"", PERSON, inner, [])
    return Masker(spec, mask, None, False, None, _never, hidden, native=native)


def _elements(value: str) -> list[str | None]:
    """The elements of a one-dimensional array as PostgreSQL writes it (`{a,"b c",NULL}`)."""
    if not (value.startswith("{") and value.endswith("}")) or value.startswith("{{"):
        raise DumpError(  # the value itself is an original: never in a message
            "An array column masked element by element holds a value that is not a one-dimensional array with its "
            'default bounds; nothing was stored. Mask that column with "null" or keep it.'
        )
    body, i = value[1:-1], 0
    found: list[str | None] = []
    while i < len(body):
        if body[i] == '"':  # quoted: a backslash escapes the next character
            i, chars = i + 1, []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            found.append("".join(chars))
            i += 2  # the closing quote and the comma
        else:  # unquoted elements hold no comma, quote, backslash or space (array_out quotes those)
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            bare = body[i:end]
            found.append(None if bare == "NULL" else bare)
            i = end + 1
    return found


def _array(inner: Masker) -> Masker:
    """The plan's {array = rule} for an array column whose elements the rule may fill (emails in a text[]): each
    element masked by the rule, as it would be in a column of its own (so it still equals that column's masked
    value); NULL elements stay NULL. Every element is written quoted."""

    def mask(value: str) -> str:
        out = []
        for element in _elements(value):
            masked = None if element is None else inner.mask(element)
            out.append("NULL" if masked is None else '"' + masked.replace("\\", "\\\\").replace('"', '\\"') + '"')
        return "{" + ",".join(out) + "}"

    def hidden(value: str) -> list[str]:
        return [original for e in _elements(value) if e is not None for original in inner.hidden(e)]

    native = None
    if inner.native is not None and inner.spec in NAMED and not inner.makes_null:
        native = _fastmask.Native(_fastmask.ARRAY, b"", b"", PERSON, inner.native, [])
    return Masker(f"{inner.spec}[]", mask, None, inner.unique, None, inner.may_output, hidden, native=native)


def needs_key(spec: Any) -> bool:
    """Whether a rule uses the key (`null` and `{value}` do not)."""
    if isinstance(spec, str):
        return spec != "null"
    if isinstance(spec, dict) and "json" in spec:
        return any(needs_key(inner) for inner in spec["json"].values())
    if isinstance(spec, dict) and "array" in spec:
        return needs_key(spec["array"])
    return False


def build_masker(spec: Any, key: bytes) -> Masker:
    """The masker of one policy rule; the policy parser has already checked its shape."""
    if isinstance(spec, str):
        return _named(spec, key)
    if "value" in spec:
        return _constant(spec["value"])
    if "array" in spec:  # made by the plan for an array column, never written in a policy
        return _array(build_masker(spec["array"], key))
    return _json({name: build_masker(inner, key) for name, inner in spec["json"].items()})


def check_spec(spec: Any) -> str | None:
    """What is wrong with a rule as written, or None."""
    if isinstance(spec, str):
        return (
            None
            if spec in NAMED
            else f"{spec!r} is not a masker (maskers: {', '.join(NAMED)}, {{value = ...}}, {{json = {{...}}}})"
        )
    if isinstance(spec, dict) and set(spec) == {"value"}:
        value = spec["value"]
        return (
            None if isinstance(value, str | int | float | bool) else "{value = ...} takes a string, number or boolean"
        )
    if isinstance(spec, dict) and set(spec) == {"json"} and isinstance(spec["json"], dict) and spec["json"]:
        for name, inner in spec["json"].items():
            if not isinstance(inner, str) or inner not in NAMED:
                return f"{{json = ...}} maps keys to named maskers ({', '.join(NAMED)}); {name!r} has {inner!r}"
        return None
    return f'{spec!r} is not a masker: write a name such as "email", {{value = "..."}} or {{json = {{key = "email"}}}}'

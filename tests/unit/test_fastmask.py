"""The named maskers in C (_fastmask.c) against the Python ones: the same keyed BLAKE2b as hashlib's, and byte for
byte the same masked COPY fields, alone and through ChunkMasker, for every named masker and any value (a value the
C code does not handle goes to Python, so both paths always agree)."""

from __future__ import annotations

import hashlib
import json
import random
import string

import pytest

from pytest_dbsnap.dumps.capture import _fastmask, maskers
from pytest_dbsnap.dumps.capture.copytext import (
    REMEMBERED,
    ChunkMasker,
    FieldMask,
    decode_field,
    encode_field,
    to_copy,
)
from pytest_dbsnap.dumps.capture.maskers import (
    LOREM,
    NAMED,
    PERSON,
    Masker,
    build_masker,
    native_masking,
    python_only_note,
)

KEY = b"fastmask-test-key"
KEYED = [name for name in NAMED if name != "null"]  # null writes \N without a hash: nothing to do in C


def values() -> list[str]:
    """What a column may hold: ASCII and not, empty and long, texts with lorem words in any case, escapes."""
    chosen = random.Random(20261204)  # noqa: S311 (test inputs, the same on every run)
    found = [
        "", "a", "Ada", "ann@corp.com", "Zoë Ünal", "日本語", "emoji 🎉", "a\tb\\c\nd", "back\\slash", "12345",
        "x" * 5000, "word " * 3000, "\udce9t\udcc3", "biography of a real person number 7 " * 4,
        # every single letter as a word: a slice of the corpus cut after one letter of a word meets one of them
        "k " + " ".join(string.ascii_lowercase),
        # Unicode words as re's \w sees them in value.lower(): the Kelvin sign lowers to k, İ to i and a
        # combining dot, € is no word character, ï is one
        "\u212a in do", "İstanbul in ut", "5€in bar do", "naïve do ut", "x ü in", "e\u0301t in ad", "Ärger et al",
        "ß \u017f \ufb01 in", "日本 in 語 do", "\udce9 in \udcc3do",
    ]  # fmt: skip
    for word in LOREM:
        found += [f"hello {word} world", f"{word.upper()}!", f"see_{word} {word.capitalize()}2"]
    alphabet = string.ascii_letters + string.digits + " _-.,;:'\"\t\n\\é中"
    for _ in range(3000):
        found.append("".join(chosen.choice(alphabet) for _ in range(chosen.randint(0, 90))))
    return found


def compared(masker: Masker, inputs: list[str]) -> tuple[int, int]:
    """(masked in C, handed back to Python) of `inputs`, each output asserted to be the Python masker's (and its
    bytes fast path's, where it has one). Fields with a backslash are skipped: an escaped field never reaches the
    C code (ChunkMasker's tests below cover them)."""
    assert masker.native is not None
    slow = to_copy(masker.mask, masker.plain)
    handled = handed_back = 0
    for value in inputs:
        raw = encode_field(value)
        if b"\\" in raw:
            continue
        got = masker.native.one(raw)
        if got is None:
            handed_back += 1
            continue
        handled += 1
        assert got == slow(decode_field(raw)), value
        if masker.fast is not None:
            assert got == masker.fast(raw), value
    return handled, handed_back


def test_the_install_built_the_c_maskers() -> None:
    """The development install compiles them (the machine has a C compiler); without them masking is slower,
    never different, so a missing build would otherwise go unnoticed."""
    assert native_masking()
    assert build_masker("email", KEY).native is not None


@pytest.mark.parametrize("key", [b"", b"k", bytes(range(32)), bytes(range(64))])
def test_the_keyed_digest_is_hashlibs_blake2b(key: bytes) -> None:
    for name in ("email", "x" * 200):
        native = _fastmask.Native(_fastmask.HASH, key, name.encode(), PERSON, [], [])
        for size in [*range(300), 1000, 4096]:
            value = bytes((i * 7 + size) % 256 for i in range(size))
            state = hashlib.blake2b(key=key, digest_size=32, person=PERSON)
            state.update(name.encode() + b"\0" + value)
            assert native.digest(value) == state.digest(), (name, size)


@pytest.mark.parametrize("name", KEYED)
def test_each_c_masker_gives_the_python_outputs(name: str) -> None:
    masker = build_masker(name, KEY)
    assert masker.fast is not None
    _handled, handed_back = compared(masker, values())
    if name == "text":
        # Empty texts and the two over half the corpus go to Python; non-ASCII ones are masked in C too.
        assert 2 < handed_back < 100
    else:
        assert handed_back == 0


def test_texts_with_lorem_words_or_the_cut_last_word_are_masked_in_c_too() -> None:
    """A word of the value that the corpus slice also holds (a lorem word like "in" or "do", or the slice's cut
    last word) is written over in the slice, in C as in Python; the single-letter words meet the cut word."""
    masker = build_masker("text", KEY)
    assert masker.native is not None
    inputs = [f"k{i} " + " ".join(string.ascii_lowercase) for i in range(400)]
    inputs += [f"Customer {i} called in March: do ship it, ut et ad x" for i in range(400)]
    inputs += [f"Kunde {i} möchte in März €in do, ut et ad x İn" for i in range(400)]  # read as Python's re does
    overwritten = 0
    for value in inputs:
        got = masker.native.one(value.encode())
        assert got is not None
        assert got == (masker.mask(value) or "").encode()
        assert len(got) == len(value)  # characters: the corpus is ASCII
        overwritten += b"xx" in got or b"qq" in got or got.endswith((b" x", b" q"))
    assert overwritten > 150
    # A one-letter text is a new bytes object: CPython shares one object per byte value, which the C code must
    # never write into (it once did, and b"f" read as b"x" from then on).
    for letter in string.ascii_lowercase:
        masker.native.one(letter.encode())
    assert [bytes([c])[0] for c in range(97, 123)] == list(range(97, 123))


@pytest.mark.parametrize("name", KEYED)
def test_chunks_masked_with_and_without_c_are_the_same(name: str) -> None:
    """Whole rows: NULLs, escaped fields, repeats (the memo), more distinct values than the memo holds, and a
    sampler on the first rows (which ChunkMasker masks in Python while it samples)."""
    masker = build_masker(name, KEY)
    slow = to_copy(masker.mask, masker.plain)
    column = values()
    column += [column[i % 50] for i in range(2000)]  # repeats
    column += [f"person{i}@example.org" for i in range(REMEMBERED + 10)]
    stream = b"".join(b"%d\t%s\tkept\n" % (i, encode_field(v)) for i, v in enumerate([*column, None]))
    outputs = []
    for native in (masker.native, None):
        looked = [0]

        def take(_value: str, looked: list[int] = looked) -> bool:
            looked[0] += 1
            return looked[0] < 100

        outputs.append(ChunkMasker([(1, slow, masker.fast, take, {}, native)])(stream))
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b"\n") == len(column) + 1
    assert outputs[0].endswith(b"\t\\N\tkept\n")  # the NULL stays NULL


def test_bad_arguments_raise_instead_of_crashing() -> None:
    with pytest.raises(ValueError, match="unknown masker"):
        _fastmask.Native(99, KEY, b"x", PERSON, [], [])
    with pytest.raises(ValueError, match="at most 64"):
        _fastmask.Native(_fastmask.HASH, b"k" * 65, b"x", PERSON, [], [])
    with pytest.raises(TypeError, match="list of bytes"):
        _fastmask.Native(_fastmask.PICK, KEY, b"x", PERSON, ["Ada"], [])
    native = _fastmask.Native(_fastmask.HASH, KEY, b"hash", PERSON, [], [])
    document = _fastmask.Native(_fastmask.JSON, KEY, b"doc", PERSON, {b"email": native}, [])
    for inner in (document, b"hash"):  # only a named masker masks a JSON key or an array's elements
        with pytest.raises(TypeError, match="a dict of key"):
            _fastmask.Native(_fastmask.JSON, KEY, b"doc", PERSON, {b"email": inner}, [])
        with pytest.raises(TypeError, match="the Native of a named masker"):
            _fastmask.Native(_fastmask.ARRAY, KEY, b"list", PERSON, inner, [])
    with pytest.raises(ValueError, match="without field 3"):
        native.column([[b"a", b"b"]], 3, 0, {}, lambda raw: raw, 128)
    with pytest.raises(TypeError, match="not bytes"):
        native.column([["a"]], 0, 0, {}, lambda raw: raw, 128)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="no bytes"):
        native.column([[b"a\\tb"]], 0, 0, {}, lambda raw: None, 128)  # type: ignore[arg-type,return-value]


def test_dbsnap_masking_python_turns_the_c_maskers_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBSNAP_MASKING", "python")
    assert not native_masking()
    assert build_masker("email", KEY).native is None


JSON_RULES = {"email": "email", "phone": "phone", "bio": "text", "gone": "null", "n": "full_name"}


def documents() -> list[str]:
    """JSON documents of any shape, written as jsonb writes them and not (ASCII-only escapes, floats, spacing)."""
    chosen = random.Random(4)  # noqa: S311 (test inputs, the same on every run)
    keys = [*JSON_RULES, "x", "y", "é"]

    def value(depth: int) -> object:
        roll = chosen.random()
        if depth < 3 and roll < 0.2:
            return {chosen.choice(keys): value(depth + 1) for _ in range(chosen.randint(0, 4))}
        if depth < 3 and roll < 0.3:
            return [value(depth + 1) for _ in range(chosen.randint(0, 3))]
        if roll < 0.6:
            return "".join(chosen.choice(string.ascii_letters + ' é@."\\\t') for _ in range(chosen.randint(0, 20)))
        if roll < 0.7:
            return chosen.randint(-(10**20), 10**20)
        if roll < 0.75:
            return chosen.random() * 100
        return chosen.choice([True, False, None, 0, -1])

    return [json.dumps(value(0), ensure_ascii=chosen.random() < 0.5) for _ in range(6000)]


@pytest.mark.parametrize("rules", [{"email": "email"}, JSON_RULES])
def test_json_documents_masked_in_c_are_pythons(rules: dict[str, str]) -> None:
    handled, _handed_back = compared(build_masker({"json": rules}, KEY), documents())
    assert handled > 2000


@pytest.mark.parametrize(
    "document",
    [
        '{"email": "a@b.c",  "x": 1}', '{"email":"a@b.c"}', '{"email": "a", "email": "b"}', "-0", "1.50", "1e5",
        '{"email": 5}', '{"email": ["a@b.c"]}', ' {"email": "a@b.c"}', '{"email": "a@b.c"} ', '{"bio": ""}',
        '{"email": "x"', '{"email": "x"}x', "NaN", '{"x": 007}', "[1,2]", '{"x": "\x01"}',
    ],
)  # fmt: skip
def test_json_documents_that_re_encoding_would_change_go_to_python(document: str) -> None:
    """Other spacing, a repeated key, -0 and floats, a masked key over a non-string, a text with a lorem word,
    broken JSON: json.dumps would write them differently (or json.loads refuses them), so Python does."""
    masker = build_masker({"json": JSON_RULES}, KEY)
    assert masker.native is not None
    assert masker.native.one(document.encode()) is None


def test_json_null_and_nested_values_under_masked_keys() -> None:
    masker = build_masker({"json": JSON_RULES}, KEY)
    assert masker.native is not None
    document = '{"gone": "secret", "email": null, "x": [1, {"n": "Ann Lee"}, []], "y": {}}'
    got = masker.native.one(document.encode())
    assert got is not None
    assert got == masker.mask(document).encode()  # type: ignore[union-attr]
    assert got.startswith(b'{"gone": null, "email": null, "x": [1, {"n": "')
    assert b"Ann Lee" not in got


def test_an_install_without_the_c_maskers_masks_in_python_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a build without a C compiler leaves it: the same outputs, and the capture's note names the fix."""
    email = build_masker("email", KEY)
    assert email.native is not None
    assert python_only_note() is None
    monkeypatch.setattr(maskers, "_fastmask", None)
    assert not native_masking()
    without = build_masker("email", KEY)
    assert without.native is None
    assert without.fast is not None
    assert without.fast(b"ann@corp.com") == email.native.one(b"ann@corp.com")
    note = python_only_note()
    assert note is not None
    assert "C compiler" in note
    assert "apt-get install gcc python3-dev" in note


def test_whole_chunks_in_c_are_the_rows_python_masks() -> None:
    """A table whose masked columns all have their C masker is masked a chunk at a time in C once nothing is
    sampled: named maskers, {json}, null and {value} side by side with kept columns, escapes and NULLs."""
    specs: list[object] = [*KEYED, {"json": JSON_RULES}, "null", {"value": "a\tb\\c"}]
    maskers_ = [build_masker(spec, KEY) for spec in specs]
    assert all(m.native is not None for m in maskers_)
    column = values()
    texts = [encode_field(v) for v in column]
    docs = [encode_field(d) for d in documents()]
    lines = []
    for i in range(len(column)):
        row = [b"%d" % i]
        for number in range(len(specs)):
            row.append(b"\\N" if (i + number) % 17 == 0 else docs[i % len(docs)] if number == 9 else texts[i])
            row.append(b"kept\\t%d" % number)  # a kept field between masked ones, with an escape
        lines.append(b"\t".join(row) + b"\n")
    stream = b"".join(lines)
    fields: list[FieldMask] = [
        (1 + 2 * n, to_copy(m.mask, m.plain), m.fast, None, {}, m.native) for n, m in enumerate(maskers_)
    ]
    in_c = ChunkMasker(fields)
    assert in_c.whole is not None  # the whole-chunk path
    in_python = ChunkMasker([(*f[:5], None) for f in fields])
    assert in_python.whole is None
    masked = in_c(stream)
    assert masked == in_python(stream)
    assert masked.count(b"\n") == len(column)
    with pytest.raises(ValueError, match="without field 3"):
        in_c(b"1\tann@corp.com\n")


def arrays() -> list[str]:
    """One-dimensional text arrays as PostgreSQL writes them (array_out quotes what needs it), and not."""
    chosen = random.Random(5)  # noqa: S311 (test inputs, the same on every run)
    found = ["{}", "{NULL}", '{"NULL"}', "{a,}", "{,a}", '{"a"b}', "{{a,b},{c,d}}", "[0:1]={a,b}", "{a", "a}", "{ }"]
    words = [*values()[:400], "NULL", ""]
    for _ in range(3000):
        elements = []
        for _ in range(chosen.randint(0, 5)):
            word = chosen.choice(words)
            if chosen.random() < 0.15:
                elements.append("NULL")
            elif word and not any(c in word for c in ',"\\{} \t\n') and word.upper() != "NULL":
                elements.append(word)
            else:
                elements.append('"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"')
        found.append("{" + ",".join(elements) + "}")
    return found


@pytest.mark.parametrize("name", KEYED)
def test_arrays_masked_in_c_are_pythons(name: str) -> None:
    """{array = rule} (the plan's, for an array column whose elements the rule fills): each element masked by the
    rule in C, or the whole array in Python (escapes, a text the C code hands back, a shape it does not read)."""
    masker = build_masker({"array": name}, KEY)
    assert masker.native is not None
    handled, _handed_back = compared(masker, arrays())
    assert handled > 500
    for odd in ("{{a,b},{c,d}}", "[0:1]={a,b}", '{"a"b}'):
        assert masker.native.one(odd.encode()) is None  # Python's: refused or read its own way
    assert build_masker({"array": "null"}, KEY).native is None

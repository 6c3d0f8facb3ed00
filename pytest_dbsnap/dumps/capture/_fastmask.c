/* The named maskers' fast paths (maskers.py) in C, for a column of a chunk of COPY rows at a time: the capture's
 * masking is otherwise Python work on every value, which bounds its speed on a machine with few cores.
 *
 * Each output is byte for byte the Python fast path's: keyed BLAKE2b (RFC 7693) with the same parameters as
 * maskers._Keyed (32-byte digest, the capture key, personalization "dbsnap-capture", the masker's name and a NUL
 * before the value), and the same choice from the same vocabularies, which the Python side passes in. A value this
 * code does not handle (a backslash in its COPY field, an empty text or one over half the corpus, JSON that
 * re-encoding would change, an array it does not read) is handed to the Python callable `slow`, so the two paths
 * cannot disagree on a rare case. The memo is the Python dict ChunkMasker keeps, used the same way.
 * tests/unit/test_fastmask.py compares the two paths, also under AddressSanitizer. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- BLAKE2b ---- */

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

typedef struct {
    uint64_t h[8];
    uint64_t t;  /* bytes compressed so far (a value is far below 2^64 bytes) */
    uint8_t buf[128];
    size_t buflen;
} Blake;

static inline uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

static inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

#define G(a, b, c, d, x, y)           \
    do {                              \
        a = a + b + (x);              \
        d = rotr(d ^ a, 32);          \
        c = c + d;                    \
        b = rotr(b ^ c, 24);          \
        a = a + b + (y);              \
        d = rotr(d ^ a, 16);          \
        c = c + d;                    \
        b = rotr(b ^ c, 63);          \
    } while (0)

static void compress(Blake *s, const uint8_t *block, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= s->t;
    if (last) v[14] = ~v[14];
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 12
#endif
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = SIGMA[r];
        G(v[0], v[4], v[8], v[12], m[z[0]], m[z[1]]);
        G(v[1], v[5], v[9], v[13], m[z[2]], m[z[3]]);
        G(v[2], v[6], v[10], v[14], m[z[4]], m[z[5]]);
        G(v[3], v[7], v[11], v[15], m[z[6]], m[z[7]]);
        G(v[0], v[5], v[10], v[15], m[z[8]], m[z[9]]);
        G(v[1], v[6], v[11], v[12], m[z[10]], m[z[11]]);
        G(v[2], v[7], v[8], v[13], m[z[12]], m[z[13]]);
        G(v[3], v[4], v[9], v[14], m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

/* A full buffer is compressed only when more input arrives: the last block must be compressed as the last. */
static void update(Blake *s, const uint8_t *in, size_t len) {
    while (len > 0) {
        if (s->buflen == 128) {
            s->t += 128;
            compress(s, s->buf, 0);
            s->buflen = 0;
        }
        size_t take = 128 - s->buflen;
        if (take > len) take = len;
        memcpy(s->buf + s->buflen, in, take);
        s->buflen += take;
        in += take;
        len -= take;
    }
}

static void final32(Blake *s, uint8_t out[32]) {
    s->t += s->buflen;
    memset(s->buf + s->buflen, 0, 128 - s->buflen);
    compress(s, s->buf, 1);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) out[8 * i + j] = (uint8_t)(s->h[i] >> (8 * j));
}

/* hashlib.blake2b(key=key, digest_size=32, person=person), then update(prefix). */
static void start(Blake *s, const uint8_t *key, size_t keylen, const uint8_t *person, size_t personlen,
                  const uint8_t *prefix, size_t prefixlen) {
    uint8_t param[64] = {0};
    param[0] = 32;
    param[1] = (uint8_t)keylen;
    param[2] = 1; /* fanout */
    param[3] = 1; /* depth */
    memcpy(param + 48, person, personlen);
    for (int i = 0; i < 8; i++) s->h[i] = IV[i] ^ load64(param + 8 * i);
    s->t = 0;
    s->buflen = 0;
    if (keylen > 0) {
        uint8_t block[128] = {0};
        memcpy(block, key, keylen);
        update(s, block, 128);
    }
    update(s, prefix, prefixlen);
}

static inline uint32_t u32(const uint8_t *d) {
    return ((uint32_t)d[0] << 24) | ((uint32_t)d[1] << 16) | ((uint32_t)d[2] << 8) | d[3];
}

/* ---- the maskers ---- */

enum { EMAIL = 1, PICK, FULL_NAME, PHONE, STREET, POSTAL_CODE, HASH, TEXT, JSON, CONSTANT, ARRAY };

typedef struct {
    PyObject_HEAD
    int kind;
    Blake keyed;
    PyObject *first; /* the vocabularies (lists of bytes), or for TEXT: the corpus (bytes) */
    PyObject *second; /* the second vocabulary, or for TEXT: the word starts (list of int) */
    /* TEXT only */
    Py_ssize_t *starts;
    Py_ssize_t nstarts;
} Native;

static PyTypeObject NativeType;

/* A Native of a named masker (EMAIL ... before JSON): what a JSON key or an array's elements may be masked with. */
static int named_native(PyObject *o) {
    return PyObject_TypeCheck(o, &NativeType) && ((Native *)o)->kind != 0 && ((Native *)o)->kind < JSON;
}

static void native_dealloc(Native *self) {
    Py_XDECREF(self->first);
    Py_XDECREF(self->second);
    PyMem_Free(self->starts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int bytes_list(PyObject *list, const char *what) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) == 0) {
        PyErr_Format(PyExc_TypeError, "%s: a non-empty list of bytes", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++)
        if (!PyBytes_Check(PyList_GET_ITEM(list, i))) {
            PyErr_Format(PyExc_TypeError, "%s: a non-empty list of bytes", what);
            return -1;
        }
    return 0;
}

/* Native(kind, secret, name, person, first, second) */
static int native_init(Native *self, PyObject *args, PyObject *kwds) {
    int kind;
    Py_buffer secret, name, person;
    PyObject *first, *second;
    if (!PyArg_ParseTuple(args, "iy*y*y*OO", &kind, &secret, &name, &person, &first, &second)) return -1;
    int failed = 0;
    if (secret.len > 64 || person.len > 16) {
        PyErr_SetString(PyExc_ValueError, "a key of at most 64 bytes and a person of at most 16");
        failed = 1;
    } else {
        PyObject *prefix = PyBytes_FromStringAndSize(NULL, name.len + 1);
        if (prefix == NULL) {
            failed = 1;
        } else {
            memcpy(PyBytes_AS_STRING(prefix), name.buf, name.len);
            PyBytes_AS_STRING(prefix)[name.len] = 0;
            start(&self->keyed, secret.buf, (size_t)secret.len, person.buf, (size_t)person.len,
                  (const uint8_t *)PyBytes_AS_STRING(prefix), (size_t)name.len + 1);
            Py_DECREF(prefix);
        }
    }
    PyBuffer_Release(&secret);
    PyBuffer_Release(&name);
    PyBuffer_Release(&person);
    if (failed) return -1;
    if (kind < EMAIL || kind > ARRAY) {
        PyErr_SetString(PyExc_ValueError, "an unknown masker kind");
        return -1;
    }
    self->kind = 0; /* usable once every argument is checked (masked() refuses kind 0) */
    if (kind == TEXT) {
        if (!PyBytes_Check(first) || !PyList_Check(second)) {
            PyErr_SetString(PyExc_TypeError, "text: the corpus (bytes) and its word starts (list)");
            return -1;
        }
        Py_ssize_t n = PyList_GET_SIZE(second);
        PyMem_Free(self->starts);
        self->starts = PyMem_New(Py_ssize_t, n > 0 ? n : 1);
        if (self->starts == NULL) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(second, i));
            if (at == -1 && PyErr_Occurred()) return -1;
            if (at < 0 || at > PyBytes_GET_SIZE(first)) {
                PyErr_SetString(PyExc_ValueError, "text: a word start outside the corpus");
                return -1;
            }
            self->starts[i] = at;
        }
        self->nstarts = n;
        if (n == 0) {
            PyErr_SetString(PyExc_ValueError, "text: no word starts");
            return -1;
        }
    } else if (kind == JSON) {
        if (!PyDict_Check(first)) {
            PyErr_SetString(PyExc_TypeError, "json: a dict of key (bytes) to Native or None");
            return -1;
        }
        PyObject *k, *v;
        Py_ssize_t at = 0;
        while (PyDict_Next(first, &at, &k, &v))
            if (!PyBytes_Check(k) || (v != Py_None && !named_native(v))) {
                PyErr_SetString(PyExc_TypeError, "json: a dict of key (bytes) to Native or None");
                return -1;
            }
    } else if (kind == ARRAY) {
        if (!named_native(first)) {
            PyErr_SetString(PyExc_TypeError, "an array: the Native of a named masker for its elements");
            return -1;
        }
    } else if (kind == CONSTANT) {
        if (!PyBytes_Check(first)) {
            PyErr_SetString(PyExc_TypeError, "a constant: its COPY bytes");
            return -1;
        }
    } else if (kind == EMAIL) {
        if (bytes_list(first, "email") || bytes_list(second, "email")) return -1;
        if (PyList_GET_SIZE(first) != 256 || PyList_GET_SIZE(second) != 256) {
            PyErr_SetString(PyExc_ValueError, "email: 256 choices for each byte");
            return -1;
        }
    } else if (kind == PICK) {
        if (bytes_list(first, "a pick")) return -1;
    } else if (kind == FULL_NAME || kind == STREET) {
        if (bytes_list(first, "a name") || bytes_list(second, "a name")) return -1;
    }
    Py_INCREF(first);
    Py_XSETREF(self->first, first);
    Py_INCREF(second);
    Py_XSETREF(self->second, second);
    self->kind = kind;
    return 0;
}

static void digest_of(const Native *self, const char *data, Py_ssize_t len, uint8_t out[32]) {
    Blake s = self->keyed;
    update(&s, (const uint8_t *)data, (size_t)len);
    final32(&s, out);
}

static PyObject *item(PyObject *list, uint32_t number) {
    PyObject *chosen = PyList_GET_ITEM(list, (Py_ssize_t)(number % (uint32_t)PyList_GET_SIZE(list)));
    Py_INCREF(chosen);
    return chosen;
}

static PyObject *joined(PyObject *a, const char *middle, Py_ssize_t middlelen, PyObject *b, const char *tail,
                        Py_ssize_t taillen) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
    PyObject *out = PyBytes_FromStringAndSize(NULL, la + middlelen + lb + taillen);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, PyBytes_AS_STRING(a), la);
    memcpy(p + la, middle, middlelen);
    memcpy(p + la + middlelen, PyBytes_AS_STRING(b), lb);
    memcpy(p + la + middlelen + lb, tail, taillen);
    return out;
}

static inline int word_byte(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '_'; }

static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* Whether the lowered word data[at:at+len] is `word` (lowercase bytes). */
static int same_word(const char *data, Py_ssize_t at, Py_ssize_t len, const char *word, Py_ssize_t wordlen) {
    if (len != wordlen) return 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if (lower((unsigned char)data[at + i]) != (unsigned char)word[i]) return 0;
    return 1;
}

/* FNV-1a of a word, lowered (the value's) or as it is (the corpus's, which is lowercase). */
static uint32_t word_hash(const char *p, Py_ssize_t n) {
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ lower((unsigned char)p[i])) * 16777619u;
    return h;
}

enum { FEW_WORDS = 64, FEW_SLOTS = 128 };

/* maskers._text for a value of 1..half characters: the corpus slice the keyed hash picks, cut to the value's
 * length, with every word of the slice that is also a word of the value (its runs of [0-9a-z_], lowered: a lorem
 * word, or the slice's cut last word) written over with x (q when "x" is one of the value's words). Python
 * replaces only when one of them is such a word, which is the same. NULL without an error: the Python way. */
/* The ASCII words of a text that is not ASCII, as Python's _text finds them (re's \w+ in value.lower(), which is
 * Py_UNICODE_ISALNUM or "_"; a word holding another character can never be a corpus word), each followed by a
 * space, in a new buffer (*words, *length); the text's length in code points in *size. -1: an error. */
static int unicode_words(const char *data, Py_ssize_t len, char **words, Py_ssize_t *length, Py_ssize_t *size) {
    PyObject *value = PyUnicode_DecodeUTF8(data, len, "surrogateescape");
    if (value == NULL) return -1;
    *size = PyUnicode_GET_LENGTH(value);
    PyObject *lowered = PyObject_CallMethod(value, "lower", NULL);
    Py_DECREF(value);
    if (lowered == NULL) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(lowered), at = 0, i = 0;
    int kind = PyUnicode_KIND(lowered);
    const void *chars = PyUnicode_DATA(lowered);
    char *out = PyMem_Malloc((size_t)n + 1);
    if (out == NULL) {
        Py_DECREF(lowered);
        PyErr_NoMemory();
        return -1;
    }
    while (i < n) {
        Py_UCS4 c = PyUnicode_READ(kind, chars, i);
        if (!(Py_UNICODE_ISALNUM(c) || c == '_')) {
            i++;
            continue;
        }
        Py_ssize_t w = i;
        int ascii = 1;
        for (; i < n; i++) {
            c = PyUnicode_READ(kind, chars, i);
            if (!(Py_UNICODE_ISALNUM(c) || c == '_')) break;
            if (c >= 128) ascii = 0;
        }
        if (ascii) {
            for (Py_ssize_t k = w; k < i; k++) out[at++] = (char)PyUnicode_READ(kind, chars, k);
            out[at++] = ' ';
        }
    }
    Py_DECREF(lowered);
    *words = out;
    *length = at;
    return 0;
}

static PyObject *text(const Native *self, const char *value, Py_ssize_t bytes) {
    Py_ssize_t half = PyBytes_GET_SIZE(self->first) / 2;
    const char *data = value; /* where the value's words are read: the value, or its ASCII words (unicode_words) */
    Py_ssize_t size = bytes;  /* the bytes of `data` */
    Py_ssize_t points = bytes; /* the value's length in characters: the slice's */
    char *own = NULL;
    for (Py_ssize_t i = 0; i < bytes; i++)
        if ((unsigned char)value[i] >= 128) {
            if (unicode_words(value, bytes, &own, &size, &points) < 0) return NULL;
            data = own;
            break;
        }
    if (points == 0 || points > half) {
        PyMem_Free(own);
        return NULL;
    }
    uint8_t d[32];
    digest_of(self, value, bytes, d);
    Py_ssize_t at = self->starts[u32(d) % (uint32_t)self->nstarts];
    const char *corpus = PyBytes_AS_STRING(self->first);
    Py_ssize_t end = at + points > PyBytes_GET_SIZE(self->first) ? PyBytes_GET_SIZE(self->first) : at + points;
    /* A new object, written below: PyBytes_FromStringAndSize(corpus + at, 1) would be CPython's shared
     * one-byte bytes object. */
    PyObject *result = PyBytes_FromStringAndSize(NULL, end - at);
    if (result == NULL) {
        PyMem_Free(own);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(result), corpus + at, (size_t)(end - at));
    /* the value's words */
    Py_ssize_t fewstarts[FEW_WORDS], fewlens[FEW_WORDS];
    Py_ssize_t *starts = fewstarts, *lens = fewlens, count = 0, capacity = FEW_WORDS;
    int32_t fewslots[FEW_SLOTS];
    int32_t *slots = fewslots;
    int has_x = 0, failed = 0;
    Py_ssize_t i = 0;
    while (i < size) {
        if (!word_byte(lower((unsigned char)data[i]))) {
            i++;
            continue;
        }
        Py_ssize_t w = i;
        while (i < size && word_byte(lower((unsigned char)data[i]))) i++;
        if (count == capacity) {
            Py_ssize_t *grown_starts = PyMem_New(Py_ssize_t, capacity * 2);
            Py_ssize_t *grown_lens = PyMem_New(Py_ssize_t, capacity * 2);
            if (grown_starts == NULL || grown_lens == NULL) {
                PyMem_Free(grown_starts);
                PyMem_Free(grown_lens);
                PyErr_NoMemory();
                failed = 1;
                break;
            }
            memcpy(grown_starts, starts, sizeof(Py_ssize_t) * (size_t)count);
            memcpy(grown_lens, lens, sizeof(Py_ssize_t) * (size_t)count);
            if (starts != fewstarts) {
                PyMem_Free(starts);
                PyMem_Free(lens);
            }
            starts = grown_starts;
            lens = grown_lens;
            capacity *= 2;
        }
        starts[count] = w;
        lens[count++] = i - w;
        if (i - w == 1 && lower((unsigned char)data[w]) == 'x') has_x = 1;
    }
    Py_ssize_t nslots = FEW_SLOTS;
    while (!failed && nslots < 2 * count) nslots *= 2;
    if (!failed && nslots > FEW_SLOTS) {
        slots = PyMem_New(int32_t, nslots);
        if (slots == NULL) {
            PyErr_NoMemory();
            failed = 1;
        }
    }
    if (!failed && count > 0) {
        for (Py_ssize_t k = 0; k < nslots; k++) slots[k] = -1;
        for (Py_ssize_t k = 0; k < count; k++) {
            size_t h = word_hash(data + starts[k], lens[k]) & (size_t)(nslots - 1);
            while (slots[h] >= 0) h = (h + 1) & (size_t)(nslots - 1);
            slots[h] = (int32_t)k;
        }
        /* the slice's words written over where the value has them */
        char *out = PyBytes_AS_STRING(result);
        Py_ssize_t outlen = PyBytes_GET_SIZE(result), j = 0;
        char filler = has_x ? 'q' : 'x';
        while (j < outlen) {
            if (!word_byte((unsigned char)out[j])) {
                j++;
                continue;
            }
            Py_ssize_t w = j;
            while (j < outlen && word_byte((unsigned char)out[j])) j++;
            size_t h = word_hash(out + w, j - w) & (size_t)(nslots - 1);
            for (; slots[h] >= 0; h = (h + 1) & (size_t)(nslots - 1)) {
                int32_t k = slots[h];
                if (same_word(data, starts[k], lens[k], out + w, j - w)) {
                    memset(out + w, filler, (size_t)(j - w));
                    break;
                }
            }
        }
    }
    if (starts != fewstarts) {
        PyMem_Free(starts);
        PyMem_Free(lens);
    }
    if (slots != fewslots) PyMem_Free(slots);
    PyMem_Free(own);
    if (failed) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}


/* ---- {json = {key = masker}}: the document copied as it is, but the string values under the masked keys ----
 *
 * Byte for byte what maskers._json gives (json.loads, the walk, then json.dumps with its default separators and
 * ensure_ascii=False) for the documents that re-encoding leaves as they are: PostgreSQL's jsonb output of
 * strings without escapes, integers, true, false, null, ", " and ": ". Anything else (a float, an escape, other
 * spacing, a repeated key, a value under a masked key that is not a string or null, a text the text masker hands
 * back, a deep or huge document) goes to Python whole. */

static PyObject *masked(const Native *self, const char *data, Py_ssize_t len);

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Out;

static int put(Out *o, const char *p, Py_ssize_t n) {
    if (o->len + n > o->cap) {
        Py_ssize_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n + 64;
        char *grown = PyMem_Realloc(o->data, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->data = grown;
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

typedef struct {
    const Native *self;
    const char *p, *end;
    Out out;
    int depth;
} Doc;

enum { DOC_OK = 0, DOC_PYTHON = 1, DOC_ERROR = -1 };

/* A masked value written in double quotes, as a JSON string or an array element; DOC_PYTHON when it holds a
 * quote, a backslash or a control character (escaping it, and COPY's escaping, are Python's). */
static int put_quoted(Out *o, PyObject *m) {
    const char *p = PyBytes_AS_STRING(m);
    Py_ssize_t n = PyBytes_GET_SIZE(m);
    for (Py_ssize_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == '"' || p[i] == '\\') return DOC_PYTHON;
    return put(o, "\"", 1) < 0 || put(o, p, n) < 0 || put(o, "\"", 1) < 0 ? DOC_ERROR : DOC_OK;
}

/* After an item of an object or array: its closing bracket (*closed), or ", " before the next item. */
static int doc_after(Doc *d, char close, int *closed) {
    if (d->p < d->end && *d->p == close) {
        d->p++;
        *closed = 1;
        return put(&d->out, &close, 1) < 0 ? DOC_ERROR : DOC_OK;
    }
    if (d->end - d->p < 2 || d->p[0] != ',' || d->p[1] != ' ') return DOC_PYTHON;
    d->p += 2;
    *closed = 0;
    return put(&d->out, ", ", 2) < 0 ? DOC_ERROR : DOC_OK;
}

/* A string at d->p (no escape, no control character): its contents in [*start, *start + *n). */
static int doc_string(Doc *d, const char **start, Py_ssize_t *n) {
    if (d->p >= d->end || *d->p != '"') return DOC_PYTHON;
    const char *q = d->p + 1;
    while (q < d->end && *q != '"') {
        if ((unsigned char)*q < 0x20 || *q == '\\') return DOC_PYTHON;
        q++;
    }
    if (q >= d->end) return DOC_PYTHON;
    *start = d->p + 1;
    *n = q - (d->p + 1);
    d->p = q + 1;
    return DOC_OK;
}

static int doc_value(Doc *d);

static int literal(Doc *d, const char *word, Py_ssize_t n) {
    if (d->end - d->p < n || memcmp(d->p, word, (size_t)n) != 0) return DOC_PYTHON;
    d->p += n;
    return DOC_OK;
}

/* Skips one scalar (string, literal or integer as json.dumps writes it); doc_value copies it. */
static int doc_scalar(Doc *d) {
    const char *s;
    Py_ssize_t n;
    if (d->p >= d->end) return DOC_PYTHON;
    switch (*d->p) {
        case '"':
            return doc_string(d, &s, &n);
        case 't':
            return literal(d, "true", 4);
        case 'f':
            return literal(d, "false", 5);
        case 'n':
            return literal(d, "null", 4);
    }
    /* an integer as json.dumps writes it: no "-0", no leading zero, no fraction or exponent */
    const char *q = d->p;
    if (*q == '-') q++;
    if (q >= d->end || *q < '0' || *q > '9') return DOC_PYTHON;
    if (*q == '0') {
        if (q != d->p) return DOC_PYTHON; /* -0 is written 0 */
        q++;
    } else {
        const char *digits = q;
        while (q < d->end && *q >= '0' && *q <= '9') q++;
        if (q - digits > 1000) return DOC_PYTHON; /* Python's int limits: its own business */
    }
    if (q < d->end && (*q == '.' || *q == 'e' || *q == 'E' || (*q >= '0' && *q <= '9'))) return DOC_PYTHON;
    d->p = q;
    return DOC_OK;
}

#define MOST_KEYS 256

static int doc_object(Doc *d) {
    const char *keys[MOST_KEYS];
    Py_ssize_t lens[MOST_KEYS];
    int count = 0;
    d->p++; /* { */
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        return put(&d->out, "}", 1) < 0 ? DOC_ERROR : DOC_OK;
    }
    for (;;) {
        const char *key, *pair = d->p;
        Py_ssize_t keylen;
        int r = doc_string(d, &key, &keylen);
        if (r != DOC_OK) return r;
        if (count == MOST_KEYS) return DOC_PYTHON;
        for (int i = 0; i < count; i++)
            if (lens[i] == keylen && memcmp(keys[i], key, (size_t)keylen) == 0) return DOC_PYTHON; /* repeated */
        keys[count] = key;
        lens[count++] = keylen;
        if (d->end - d->p < 2 || d->p[0] != ':' || d->p[1] != ' ') return DOC_PYTHON;
        d->p += 2;
        if (put(&d->out, pair, d->p - pair) < 0) return DOC_ERROR; /* "key": */
        PyObject *name = PyBytes_FromStringAndSize(key, keylen);
        if (name == NULL) return DOC_ERROR;
        PyObject *rule = PyDict_GetItemWithError(d->self->first, name); /* borrowed */
        Py_DECREF(name);
        if (rule == NULL && PyErr_Occurred()) return DOC_ERROR;
        if (rule != NULL && !(d->end - d->p >= 4 && memcmp(d->p, "null", 4) == 0)) {
            /* a masked key: only a string is masked here (json.dumps of anything else is Python's) */
            const char *value;
            Py_ssize_t n;
            r = doc_string(d, &value, &n);
            if (r != DOC_OK) return r;
            if (rule == Py_None) {
                if (put(&d->out, "null", 4) < 0) return DOC_ERROR;
            } else {
                PyObject *m = masked((const Native *)rule, value, n);
                if (m == NULL) return PyErr_Occurred() ? DOC_ERROR : DOC_PYTHON;
                r = put_quoted(&d->out, m);
                Py_DECREF(m);
                if (r != DOC_OK) return r;
            }
        } else {
            r = doc_value(d);
            if (r != DOC_OK) return r;
        }
        int closed;
        r = doc_after(d, '}', &closed);
        if (r != DOC_OK || closed) return r;
    }
}

static int doc_array(Doc *d) {
    d->p++; /* [ */
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        return put(&d->out, "]", 1) < 0 ? DOC_ERROR : DOC_OK;
    }
    for (;;) {
        int closed, r = doc_value(d);
        if (r != DOC_OK) return r;
        r = doc_after(d, ']', &closed);
        if (r != DOC_OK || closed) return r;
    }
}

/* An object or array (copied through, its masked keys' strings replaced), or a scalar (copied). */
static int doc_value(Doc *d) {
    if (d->p >= d->end) return DOC_PYTHON;
    if (*d->p == '{' || *d->p == '[') {
        if (++d->depth > 200) return DOC_PYTHON;
        int is_object = *d->p == '{';
        if (put(&d->out, is_object ? "{" : "[", 1) < 0) return DOC_ERROR;
        int r = is_object ? doc_object(d) : doc_array(d);
        d->depth--;
        return r;
    }
    const char *from = d->p;
    int r = doc_scalar(d);
    if (r != DOC_OK) return r;
    return put(&d->out, from, d->p - from) < 0 ? DOC_ERROR : DOC_OK;
}

static PyObject *json(const Native *self, const char *data, Py_ssize_t len) {
    Doc d = {self, data, data + len, {NULL, 0, 0}, 0};
    int r = doc_value(&d);
    PyObject *result = NULL;
    if (r == DOC_OK && d.p == d.end) result = PyBytes_FromStringAndSize(d.out.data, d.out.len);
    PyMem_Free(d.out.data);
    return result; /* NULL: an error (set) or Python's document */
}


/* ---- {array = rule}: a one-dimensional array as PostgreSQL writes it (maskers._array) ----
 *
 * Each element masked by the named masker, written quoted; NULL stays NULL. Only an array whose field holds no
 * backslash reaches here (so no quoted element holds an escape); anything else that is not `{...}` with bare or
 * quoted elements separated by commas, or whose masked element would need escaping, goes to Python. */
static PyObject *array(const Native *self, const char *data, Py_ssize_t len) {
    if (len < 2 || data[0] != '{' || data[len - 1] != '}' || (len > 1 && data[1] == '{')) return NULL;
    const Native *inner = (const Native *)self->first;
    Out out = {NULL, 0, 0};
    const char *p = data + 1, *end = data + len - 1;
    if (put(&out, "{", 1) < 0) return NULL;
    int first = 1;
    while (p < end) {
        const char *e, *next;
        int null = 0;
        if (*p == '"') {
            const char *close = memchr(p + 1, '"', (size_t)(end - p - 1));
            if (close == NULL) goto python;
            e = close;
            next = close + 1;
            p++;
        } else {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            e = comma != NULL ? comma : end;
            next = e;
            null = e - p == 4 && memcmp(p, "NULL", 4) == 0;
        }
        if (next < end && *next != ',') goto python;
        if (!first && put(&out, ",", 1) < 0) goto error;
        first = 0;
        if (null) {
            if (put(&out, "NULL", 4) < 0) goto error;
        } else {
            PyObject *m = masked(inner, p, e - p);
            if (m == NULL) {
                if (PyErr_Occurred()) goto error;
                goto python;
            }
            int r = put_quoted(&out, m);
            Py_DECREF(m);
            if (r == DOC_PYTHON) goto python;
            if (r == DOC_ERROR) goto error;
        }
        p = next < end ? next + 1 : end;
        if (next < end && p == end) goto python; /* a trailing comma */
    }
    if (put(&out, "}", 1) < 0) goto error;
    PyObject *result = PyBytes_FromStringAndSize(out.data, out.len);
    PyMem_Free(out.data);
    return result;
python:
    PyMem_Free(out.data);
    return NULL;
error:
    PyMem_Free(out.data);
    return NULL;
}

/* The masked COPY bytes of a field without a backslash; NULL without an error: the Python way. */
static PyObject *masked(const Native *self, const char *data, Py_ssize_t len) {
    static const char HEX[] = "0123456789abcdef";
    uint8_t d[32];
    char buf[80];
    if (self->kind == 0) {
        PyErr_SetString(PyExc_ValueError, "a Native that was not initialized");
        return NULL;
    }
    if (self->kind == TEXT) return text(self, data, len);
    if (self->kind == JSON) return json(self, data, len);
    if (self->kind == ARRAY) return array(self, data, len);
    if (self->kind == CONSTANT) {
        Py_INCREF(self->first);
        return self->first;
    }
    digest_of(self, data, len, d);
    switch (self->kind) {
        case EMAIL: {
            for (int i = 0; i < 8; i++) {
                buf[2 * i] = HEX[d[2 + i] >> 4];
                buf[2 * i + 1] = HEX[d[2 + i] & 15];
            }
            memcpy(buf + 16, "@example.com", 12);
            return joined(PyList_GET_ITEM(self->first, d[0]), "", 0, PyList_GET_ITEM(self->second, d[1]), buf, 28);
        }
        case PICK:
            return item(self->first, u32(d));
        case FULL_NAME: {
            PyObject *a = PyList_GET_ITEM(self->first, (Py_ssize_t)(u32(d) % (uint32_t)PyList_GET_SIZE(self->first)));
            PyObject *b =
                PyList_GET_ITEM(self->second, (Py_ssize_t)(u32(d + 4) % (uint32_t)PyList_GET_SIZE(self->second)));
            return joined(a, " ", 1, b, "", 0);
        }
        case PHONE: {
            uint32_t digits = u32(d) % 10000000u;
            int n = snprintf(buf, sizeof buf, "+1-555-%03u-%04u", digits / 10000u, digits % 10000u);
            return PyBytes_FromStringAndSize(buf, n);
        }
        case STREET: {
            PyObject *a = PyList_GET_ITEM(self->first, (Py_ssize_t)(u32(d + 4) % (uint32_t)PyList_GET_SIZE(self->first)));
            PyObject *b =
                PyList_GET_ITEM(self->second, (Py_ssize_t)(u32(d + 8) % (uint32_t)PyList_GET_SIZE(self->second)));
            int n = snprintf(buf, sizeof buf, "%u ", u32(d) % 998u + 1u);
            PyObject *house = PyBytes_FromStringAndSize(buf, n);
            if (house == NULL) return NULL;
            PyObject *front = joined(house, "", 0, a, " ", 1);
            Py_DECREF(house);
            if (front == NULL) return NULL;
            PyObject *out = joined(front, "", 0, b, "", 0);
            Py_DECREF(front);
            return out;
        }
        case POSTAL_CODE: {
            int n = snprintf(buf, sizeof buf, "%05u", u32(d) % 100000u);
            return PyBytes_FromStringAndSize(buf, n);
        }
        case HASH: {
            for (int i = 0; i < 32; i++) {
                buf[2 * i] = HEX[d[i] >> 4];
                buf[2 * i + 1] = HEX[d[i] & 15];
            }
            return PyBytes_FromStringAndSize(buf, 64);
        }
    }
    PyErr_SetString(PyExc_SystemError, "an unknown masker kind");
    return NULL;
}

/* column(rows, index, first, memo, slow, longest): masks rows[first:][index] in place, as ChunkMasker's loop
 * without a sampler does: a remembered input takes its remembered output, \N stays, a field this code does not
 * handle goes to slow(field); inputs of at most `longest` bytes are remembered. */
static PyObject *native_column(Native *self, PyObject *args) {
    PyObject *rows, *memo, *slow;
    Py_ssize_t index, first, longest;
    if (!PyArg_ParseTuple(args, "O!nnO!On", &PyList_Type, &rows, &index, &first, &PyDict_Type, &memo, &slow,
                          &longest))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = first < 0 ? 0 : first; i < count; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyList_Check(row) || index < 0 || index >= PyList_GET_SIZE(row)) {
            PyErr_Format(PyExc_ValueError, "a COPY row without field %zd", index);
            return NULL;
        }
        PyObject *raw = PyList_GET_ITEM(row, index);
        if (!PyBytes_Check(raw)) {
            PyErr_SetString(PyExc_TypeError, "a COPY field that is not bytes");
            return NULL;
        }
        PyObject *known = PyDict_GetItemWithError(memo, raw);
        if (known != NULL) {
            Py_INCREF(known);
            PyList_SetItem(row, index, known);
            continue;
        }
        if (PyErr_Occurred()) return NULL;
        const char *data = PyBytes_AS_STRING(raw);
        Py_ssize_t len = PyBytes_GET_SIZE(raw);
        if (len == 2 && data[0] == '\\' && data[1] == 'N') continue;
        PyObject *out = NULL;
        if (memchr(data, '\\', (size_t)len) == NULL) {
            out = masked(self, data, len);
            if (out == NULL && PyErr_Occurred()) return NULL;
        }
        if (out == NULL) {
            out = PyObject_CallOneArg(slow, raw);
            if (out == NULL) return NULL;
            if (!PyBytes_Check(out)) {
                Py_DECREF(out);
                PyErr_SetString(PyExc_TypeError, "the Python masker gave no bytes");
                return NULL;
            }
        }
        if (len <= longest && PyDict_SetItem(memo, raw, out) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SetItem(row, index, out); /* takes `out`, releases `raw` */
    }
    Py_RETURN_NONE;
}

/* one(field): the masked COPY bytes of one field without a backslash, or None where Python masks it (tests). */
static PyObject *native_one(Native *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a COPY field (bytes)");
        return NULL;
    }
    PyObject *out = masked(self, PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
    if (out == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return out;
}

/* digest(value): the keyed BLAKE2b digest of the name's prefix and `value` (tests compare it with hashlib's). */
static PyObject *native_digest(Native *self, PyObject *args) {
    Py_buffer value;
    if (!PyArg_ParseTuple(args, "y*", &value)) return NULL;
    uint8_t d[32];
    digest_of(self, value.buf, value.len, d);
    PyBuffer_Release(&value);
    return PyBytes_FromStringAndSize((const char *)d, 32);
}

static PyMethodDef native_methods[] = {
    {"column", (PyCFunction)native_column, METH_VARARGS, "Mask one column of a chunk's rows in place."},
    {"one", (PyCFunction)native_one, METH_O, "The masked COPY bytes of one field, or None."},
    {"digest", (PyCFunction)native_digest, METH_VARARGS, "The keyed digest of one value."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NativeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pytest_dbsnap.dumps.capture._fastmask.Native",
    .tp_basicsize = sizeof(Native),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One named masker's fast path in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)native_init,
    .tp_dealloc = (destructor)native_dealloc,
    .tp_methods = native_methods,
};


/* mask_chunk(data, fields): the masked COPY text of `data` (whole rows), where fields lists (index, Native, slow)
 * by ascending index: each masked field as Native.column masks it, without a memo (a cache: the outputs are the
 * same) and without splitting the rows into Python objects; every other byte is copied as it is. ChunkMasker
 * uses it once no column of the table is being sampled. */
static PyObject *mask_chunk(PyObject *module, PyObject *args) {
    Py_buffer data;
    PyObject *fields;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O!", &data, &PyList_Type, &fields)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    Py_ssize_t *indexes = PyMem_New(Py_ssize_t, n > 0 ? n : 1);
    Out out = {NULL, 0, 0};
    PyObject *result = NULL;
    if (indexes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *field = PyList_GET_ITEM(fields, k);
        if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) != 3 ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(field, 1), &NativeType)) {
            PyErr_SetString(PyExc_TypeError, "fields: (index, Native, slow) tuples");
            goto done;
        }
        indexes[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(field, 0));
        if (indexes[k] == -1 && PyErr_Occurred()) goto done;
        if (indexes[k] < 0 || (k > 0 && indexes[k] <= indexes[k - 1])) {
            PyErr_SetString(PyExc_ValueError, "fields: ascending column indexes");
            goto done;
        }
    }
    const char *p = data.buf, *end = p + data.len;
    out.cap = data.len + data.len / 4 + 64;
    out.data = PyMem_Malloc((size_t)out.cap);
    if (out.data == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) {
            PyErr_SetString(PyExc_ValueError, "COPY data ended inside a row");
            goto done;
        }
        const char *copied = p, *f = p;
        Py_ssize_t column = 0;
        for (Py_ssize_t k = 0; k < n;) {
            const char *tab = memchr(f, '\t', (size_t)(eol - f));
            const char *fend = tab != NULL ? tab : eol;
            if (column == indexes[k]) {
                PyObject *field = PyList_GET_ITEM(fields, k);
                Py_ssize_t len = fend - f;
                if (put(&out, copied, f - copied) < 0) goto done;
                copied = fend;
                if (len == 2 && f[0] == '\\' && f[1] == 'N') {
                    if (put(&out, f, 2) < 0) goto done;
                } else {
                    PyObject *m = NULL;
                    if (memchr(f, '\\', (size_t)len) == NULL) {
                        m = masked((const Native *)PyTuple_GET_ITEM(field, 1), f, len);
                        if (m == NULL && PyErr_Occurred()) goto done;
                    }
                    if (m == NULL) {
                        PyObject *raw = PyBytes_FromStringAndSize(f, len);
                        if (raw == NULL) goto done;
                        m = PyObject_CallOneArg(PyTuple_GET_ITEM(field, 2), raw);
                        Py_DECREF(raw);
                        if (m == NULL) goto done;
                        if (!PyBytes_Check(m)) {
                            Py_DECREF(m);
                            PyErr_SetString(PyExc_TypeError, "the Python masker gave no bytes");
                            goto done;
                        }
                    }
                    int failed = put(&out, PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m)) < 0;
                    Py_DECREF(m);
                    if (failed) goto done;
                }
                k++;
            }
            if (tab == NULL) {
                if (k < n) {
                    PyErr_Format(PyExc_ValueError, "a COPY row without field %zd", indexes[k]);
                    goto done;
                }
                break;
            }
            f = tab + 1;
            column++;
        }
        if (put(&out, copied, eol + 1 - copied) < 0) goto done;
        p = eol + 1;
    }
    result = PyBytes_FromStringAndSize(out.data, out.len);
done:
    PyMem_Free(out.data);
    PyMem_Free(indexes);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef module_methods[] = {
    {"mask_chunk", (PyCFunction)mask_chunk, METH_VARARGS, "The masked COPY text of whole rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastmask", "The named maskers' fast paths in C (see maskers.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fastmask(void) {
    if (PyType_Ready(&NativeType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&NativeType);
    if (PyModule_AddObject(m, "Native", (PyObject *)&NativeType) < 0) {
        Py_DECREF(&NativeType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ARRAY", ARRAY) || PyModule_AddIntConstant(m, "CONSTANT", CONSTANT) || PyModule_AddIntConstant(m, "JSON", JSON) || PyModule_AddIntConstant(m, "EMAIL", EMAIL) || PyModule_AddIntConstant(m, "PICK", PICK) ||
        PyModule_AddIntConstant(m, "FULL_NAME", FULL_NAME) || PyModule_AddIntConstant(m, "PHONE", PHONE) ||
        PyModule_AddIntConstant(m, "STREET", STREET) || PyModule_AddIntConstant(m, "POSTAL_CODE", POSTAL_CODE) ||
        PyModule_AddIntConstant(m, "HASH", HASH) || PyModule_AddIntConstant(m, "TEXT", TEXT)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

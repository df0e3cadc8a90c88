/* The fast path of frame decoding: one transport message's plaintext -> its frames.
 *
 * qchan.protocol.frames.FrameDecoder is the reference and the only judge of what is wrong:
 * this module decodes the common case (whole frames of known kinds, each field of its schema's
 * type, in the encodings msgpack's Packer writes) and returns None for anything else, and the
 * Python decoder then decodes the message itself (a PART run, or an error to name precisely).
 * So this file never has to be right about errors, only about what it accepts: when it
 * returns a list, that list equals, value for value and type for type, what the Python decoder
 * returns for the same bytes (tests/protocol/test_speedups.py and the fuzz target check it).
 *
 * Why C: decoding and validating is about 0.4 us per frame in Python, which made it the
 * largest per-frame cost of a busy link; here it is a few tens of nanoseconds.
 *
 * Safety: every read is bounds-checked against the end of the buffer before it happens; every
 * length comes from the message itself and is checked against what is left of it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_PLAINTEXT 65535 /* no transport message's plaintext is longer */
#define MAX_FIELDS 15 /* a fixarray holds at most 15 elements; frames have far fewer */

/* A kind's schema: how many fields follow the kind, and each one's type. */
typedef struct {
    int known;               /* 0: not decoded here (unknown kind, or PART) */
    int count;               /* fields after the kind */
    char types[MAX_FIELDS];  /* 'u' unsigned int, 's' str, 'b' bytes */
} Schema;

static Schema schemas[256];

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

/* The bytes left to read. */
static inline Py_ssize_t left(const Reader *r) { return (Py_ssize_t)(r->end - r->p); }

/* Reads a non-negative integer; 0 if the next item is anything else or is cut short. */
static int read_uint(Reader *r, uint64_t *out) {
    if (left(r) < 1) return 0;
    unsigned char c = r->p[0];
    if (c <= 0x7f) { /* positive fixint */
        *out = c;
        r->p += 1;
        return 1;
    }
    switch (c) {
    case 0xcc: if (left(r) < 2) return 0; *out = r->p[1]; r->p += 2; return 1;
    case 0xcd: if (left(r) < 3) return 0; *out = be16(r->p + 1); r->p += 3; return 1;
    case 0xce: if (left(r) < 5) return 0; *out = be32(r->p + 1); r->p += 5; return 1;
    case 0xcf: if (left(r) < 9) return 0; *out = be64(r->p + 1); r->p += 9; return 1;
    default: return 0; /* signed encodings, negative fixints, other types: the slow path */
    }
}

/* Reads a str or bin header of the given family; the payload length, or -1. */
static Py_ssize_t read_length(Reader *r, int is_str) {
    if (left(r) < 1) return -1;
    unsigned char c = r->p[0];
    Py_ssize_t n;
    if (is_str && c >= 0xa0 && c <= 0xbf) { /* fixstr */
        n = c & 0x1f;
        r->p += 1;
    } else if (c == (is_str ? 0xd9 : 0xc4)) { /* str8 / bin8 */
        if (left(r) < 2) return -1;
        n = r->p[1];
        r->p += 2;
    } else if (c == (is_str ? 0xda : 0xc5)) { /* str16 / bin16 */
        if (left(r) < 3) return -1;
        n = be16(r->p + 1);
        r->p += 3;
    } else if (c == (is_str ? 0xdb : 0xc6)) { /* str32 / bin32 */
        if (left(r) < 5) return -1;
        n = (Py_ssize_t)be32(r->p + 1);
        r->p += 5;
    } else {
        return -1;
    }
    return n <= left(r) ? n : -1;
}

/* One field of the given type as a new reference; NULL (no exception set) to defer. */
static PyObject *read_field(Reader *r, char type) {
    if (type == 'u') {
        uint64_t value;
        if (!read_uint(r, &value)) return NULL;
        return PyLong_FromUnsignedLongLong(value);
    }
    Py_ssize_t n = read_length(r, type == 's');
    if (n < 0) return NULL;
    const char *data = (const char *)r->p;
    r->p += n;
    if (type == 'b') return PyBytes_FromStringAndSize(data, n);
    return PyUnicode_DecodeUTF8(data, n, NULL); /* strict, as msgpack decodes */
}

/* One frame as a new list; NULL to defer (any exception raised on the way is cleared). */
static PyObject *read_frame(Reader *r) {
    if (left(r) < 1) return NULL;
    unsigned char c = r->p[0];
    if (c < 0x90 || c > 0x9f) return NULL; /* frames are short fixarrays */
    Py_ssize_t length = c & 0x0f;
    r->p += 1;
    uint64_t kind;
    if (length < 1 || !read_uint(r, &kind) || kind > 255) return NULL;
    const Schema *schema = &schemas[kind];
    if (!schema->known || length != 1 + schema->count) return NULL;
    PyObject *frame = PyList_New(length);
    if (frame == NULL) return NULL;
    PyObject *kind_object = PyLong_FromUnsignedLongLong(kind);
    if (kind_object == NULL) goto fail;
    PyList_SET_ITEM(frame, 0, kind_object);
    for (int i = 0; i < schema->count; i++) {
        PyObject *field = read_field(r, schema->types[i]);
        if (field == NULL) goto fail;
        PyList_SET_ITEM(frame, i + 1, field);
    }
    return frame;
fail:
    Py_DECREF(frame); /* unset items are NULL, which list dealloc skips */
    return NULL;
}

PyDoc_STRVAR(decode_frames_doc,
"decode_frames(plaintext, /)\n--\n\n"
"The frames of one transport message's plaintext, or None if it holds anything the fast\n"
"path does not decode (the caller then decodes it with the reference decoder).");

static PyObject *decode_frames(PyObject *module, PyObject *plaintext) {
    Py_buffer view;
    if (PyObject_GetBuffer(plaintext, &view, PyBUF_SIMPLE) < 0) return NULL;
    Reader r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    PyObject *frames = NULL;
    if (view.len > MAX_PLAINTEXT) goto done; /* not one message: the reference refuses it */
    frames = PyList_New(0);
    if (frames == NULL) goto done;
    while (r.p < r.end) {
        PyObject *frame = read_frame(&r);
        if (frame == NULL || PyList_Append(frames, frame) < 0) {
            Py_XDECREF(frame);
            Py_CLEAR(frames);
            break;
        }
        Py_DECREF(frame);
    }
done:
    PyBuffer_Release(&view);
    if (frames == NULL) {
        /* Deferring: whatever went wrong (bad UTF-8, memory), the reference decoder meets
         * it again and reports it its own way. */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return frames;
}

PyDoc_STRVAR(set_schemas_doc,
"set_schemas(schemas, /)\n--\n\n"
"Tell the fast path the kinds it may decode: {kind: field types}, a type being one of\n"
"'u' (unsigned int), 's' (str), 'b' (bytes). Kinds left out are deferred to the caller.");

static PyObject *set_schemas(PyObject *module, PyObject *mapping) {
    if (!PyDict_Check(mapping)) {
        PyErr_SetString(PyExc_TypeError, "set_schemas() takes a dict");
        return NULL;
    }
    Schema table[256];
    memset(table, 0, sizeof table);
    PyObject *key, *value;
    Py_ssize_t position = 0;
    while (PyDict_Next(mapping, &position, &key, &value)) {
        long kind = PyLong_AsLong(key);
        if (kind == -1 && PyErr_Occurred()) return NULL;
        Py_ssize_t count;
        const char *types = PyUnicode_Check(value) ? PyUnicode_AsUTF8AndSize(value, &count) : NULL;
        if (kind < 0 || kind > 255 || types == NULL || count >= MAX_FIELDS) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "a schema is {kind 0-255: 'usb' types}");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (types[i] != 'u' && types[i] != 's' && types[i] != 'b') {
                PyErr_SetString(PyExc_ValueError, "a field type is 'u', 's' or 'b'");
                return NULL;
            }
            table[kind].types[i] = types[i];
        }
        table[kind].known = 1;
        table[kind].count = (int)count;
    }
    memcpy(schemas, table, sizeof table);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_frames", decode_frames, METH_O, decode_frames_doc},
    {"set_schemas", set_schemas, METH_O, set_schemas_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "qchan.protocol._speedups",
    "The C fast path of frame decoding (see qchan.protocol.frames).",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }

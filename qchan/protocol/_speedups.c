/* The protocol's fast path: sealing transport messages, and opening and decoding them.
 *
 * Decoding: one transport message's plaintext -> its frames. qchan.protocol.frames.FrameDecoder
 * is the reference and the only judge of what is wrong: this module decodes the common case
 * (whole frames of known kinds, each field of its schema's type, in the encodings msgpack's
 * Packer writes) and returns None for anything else, and the Python decoder then decodes the
 * message itself (a PART run, or an error to name precisely). So this file never has to be
 * right about errors, only about what it accepts: when it returns a list, that list equals,
 * value for value and type for type, what the Python decoder returns for the same bytes
 * (tests/protocol/test_speedups.py and the fuzz targets check it).
 *
 * Sealing and opening (below decode_frames): the same division of labour. A message that does
 * not authenticate is left unconsumed for the reference path (qchan.crypto's CipherState), which
 * raises; the cipher is libsodium's own, the one the reference calls.
 *
 * Why C: per message, the Python path spent about 2.4 us sealing and 2.5 us opening and
 * decoding (wrappers around two libsodium calls, framing, copies); here it is well under a
 * microsecond, and a remote rendezvous has one message each way.
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

/* Appends the frames of one plaintext to `frames`: 1 if it decoded whole, 0 to defer (then
 * `frames` is as it was, and no exception is set). Frames of kinds below `first_kind` defer
 * the whole plaintext too (the connection's own control frames are handled in Python). */
static int decode_into(const unsigned char *buf, Py_ssize_t len, PyObject *frames,
                       long first_kind) {
    Reader r = {buf, buf + len};
    Py_ssize_t start = PyList_GET_SIZE(frames);
    if (len > MAX_PLAINTEXT) goto defer; /* not one message: the reference refuses it */
    while (r.p < r.end) {
        PyObject *frame = read_frame(&r);
        if (frame == NULL) goto defer;
        if (PyLong_AsLong(PyList_GET_ITEM(frame, 0)) < first_kind ||
            PyList_Append(frames, frame) < 0) {
            Py_DECREF(frame);
            goto defer;
        }
        Py_DECREF(frame);
    }
    return 1;
defer:
    /* Whatever went wrong (bad UTF-8, memory), the reference decoder meets it again and
     * reports it its own way. */
    PyErr_Clear();
    if (PyList_SetSlice(frames, start, PyList_GET_SIZE(frames), NULL) < 0) PyErr_Clear();
    return 0;
}

PyDoc_STRVAR(decode_frames_doc,
"decode_frames(plaintext, /)\n--\n\n"
"The frames of one transport message's plaintext, or None if it holds anything the fast\n"
"path does not decode (the caller then decodes it with the reference decoder).");

static PyObject *decode_frames(PyObject *module, PyObject *plaintext) {
    Py_buffer view;
    if (PyObject_GetBuffer(plaintext, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *frames = PyList_New(0);
    if (frames != NULL && !decode_into(view.buf, view.len, frames, 0)) Py_CLEAR(frames);
    PyBuffer_Release(&view);
    if (frames == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return frames;
}

/* --- Sealing and opening transport messages ------------------------------------------------
 *
 * ChaCha20-Poly1305 (IETF) is libsodium's, reached through the function pointers PyNaCl's
 * binding exposes (set_aead): no second copy of the cipher, and nothing to link against.
 * A transport message on the wire is a 2-byte big-endian length, then the ciphertext and its
 * 16-byte tag; its nonce is 4 zero bytes and the 64-bit message counter, little-endian
 * (Noise's ChaChaPoly). The caller keeps the counters: these functions take the next nonce and
 * say how many they used. Opening defers, like decoding: a message that fails authentication
 * is left unconsumed for the reference path, which raises the error. */

#define TAG_LEN 16
#define KEY_LEN 32
#define MAX_MESSAGE 65535
#define MAX_NONCE UINT64_MAX /* reserved by Noise: never used */

typedef int (*aead_encrypt)(unsigned char *c, unsigned long long *clen, const unsigned char *m,
                            unsigned long long mlen, const unsigned char *ad,
                            unsigned long long adlen, const unsigned char *nsec,
                            const unsigned char *npub, const unsigned char *k);
typedef int (*aead_decrypt)(unsigned char *m, unsigned long long *mlen, unsigned char *nsec,
                            const unsigned char *c, unsigned long long clen,
                            const unsigned char *ad, unsigned long long adlen,
                            const unsigned char *npub, const unsigned char *k);

static aead_encrypt encrypt_fn = NULL;
static aead_decrypt decrypt_fn = NULL;

static void make_nonce(unsigned char nonce[12], uint64_t n) {
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++) nonce[4 + i] = (unsigned char)(n >> (8 * i));
}

/* The 32-byte key in `object` (bytes); NULL with an exception otherwise. */
static const unsigned char *key_of(PyObject *object) {
    if (!PyBytes_Check(object) || PyBytes_GET_SIZE(object) != KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "a key is 32 bytes");
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(object);
}

/* The nonce counter in `object`, below MAX_NONCE; 0 with an exception otherwise. */
static int nonce_of(PyObject *object, uint64_t *out) {
    unsigned long long n = PyLong_AsUnsignedLongLong(object);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    if (n >= MAX_NONCE) {
        PyErr_SetString(PyExc_ValueError, "the nonce is exhausted");
        return 0;
    }
    *out = n;
    return 1;
}

/* What seal_message and open_messages both take first: `expected` arguments, of which the
 * key and the nonce come first, and a cipher set up by set_aead. 0 with an exception if not. */
static int cipher_arguments(const char *name, PyObject *const *args, Py_ssize_t nargs,
                            Py_ssize_t expected, const void *function,
                            const unsigned char **key, uint64_t *nonce) {
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected,
                     nargs);
        return 0;
    }
    if (function == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_aead() was not called");
        return 0;
    }
    *key = key_of(args[0]);
    return *key != NULL && nonce_of(args[1], nonce);
}

PyDoc_STRVAR(set_aead_doc,
"set_aead(encrypt, decrypt, /)\n--\n\n"
"The addresses of libsodium's crypto_aead_chacha20poly1305_ietf_encrypt and _decrypt.");

static PyObject *set_aead(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_aead() takes two addresses");
        return NULL;
    }
    void *encrypt = PyLong_AsVoidPtr(args[0]);
    if (encrypt == NULL && PyErr_Occurred()) return NULL;
    void *decrypt = PyLong_AsVoidPtr(args[1]);
    if (decrypt == NULL && PyErr_Occurred()) return NULL;
    if (encrypt == NULL || decrypt == NULL) {
        PyErr_SetString(PyExc_ValueError, "set_aead() needs two function addresses");
        return NULL;
    }
    encrypt_fn = (aead_encrypt)encrypt;
    decrypt_fn = (aead_decrypt)decrypt;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(seal_message_doc,
"seal_message(key, nonce, plaintext, /)\n--\n\n"
"The transport message carrying `plaintext` (at most 65519 bytes), sealed with `key` under\n"
"message counter `nonce`, with its 2-byte length in front. Raises ValueError for a wrong key,\n"
"an exhausted nonce (2**64-1) or a plaintext too long.");

static PyObject *seal_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *key;
    uint64_t n;
    if (!cipher_arguments("seal_message", args, nargs, 3, (const void *)encrypt_fn, &key, &n))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *message = NULL;
    if (view.len > MAX_MESSAGE - TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "plaintext too long for one transport message");
        goto done;
    }
    Py_ssize_t length = view.len + TAG_LEN;
    message = PyBytes_FromStringAndSize(NULL, 2 + length);
    if (message == NULL) goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(message);
    out[0] = (unsigned char)(length >> 8);
    out[1] = (unsigned char)length;
    unsigned char nonce[12];
    make_nonce(nonce, n);
    unsigned long long written = 0;
    if (encrypt_fn(out + 2, &written, view.buf, (unsigned long long)view.len, NULL, 0, NULL,
                   nonce, key) != 0 ||
        written != (unsigned long long)length) {
        Py_CLEAR(message);
        PyErr_SetString(PyExc_RuntimeError, "encryption failed");
    }
done:
    PyBuffer_Release(&view);
    return message;
}

PyDoc_STRVAR(open_messages_doc,
"open_messages(key, nonce, data, offset, frames, first_kind, /)\n--\n\n"
"Open the whole transport messages in `data` from `offset` on, the first under message counter\n"
"`nonce`, appending their frames to `frames`; returns (offset, opened, deferred).\n\n"
"It stops at an incomplete message, at one that fails authentication or is shorter than its\n"
"tag (left unconsumed: the reference path raises for it), and after one whose frames it does\n"
"not decode or that holds a frame of a kind below `first_kind`: that message's plaintext is\n"
"`deferred` for the reference decoder (else None). `opened` counts the messages consumed,\n"
"the deferred one included; `offset` is where the next message begins.");

static PyObject *open_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *key;
    uint64_t n;
    if (!cipher_arguments("open_messages", args, nargs, 6, (const void *)decrypt_fn, &key, &n))
        return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[3]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    PyObject *frames = args[4];
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "frames must be a list");
        return NULL;
    }
    long first_kind = PyLong_AsLong(args[5]);
    if (first_kind == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len;
    if (offset < 0 || offset > size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        return NULL;
    }
    uint64_t opened = 0;
    PyObject *deferred = NULL;
    while (size - offset >= 2 && n + opened < MAX_NONCE) {
        Py_ssize_t length = be16(data + offset);
        if (length < TAG_LEN || length > size - offset - 2) break;
        PyObject *plaintext = PyBytes_FromStringAndSize(NULL, length - TAG_LEN);
        if (plaintext == NULL) break;
        unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(plaintext);
        unsigned char nonce[12];
        make_nonce(nonce, n + opened);
        unsigned long long plain_length = 0;
        if (decrypt_fn(plain, &plain_length, NULL, data + offset + 2,
                       (unsigned long long)length, NULL, 0, nonce, key) != 0 ||
            plain_length != (unsigned long long)(length - TAG_LEN)) {
            Py_DECREF(plaintext);
            break; /* the reference path decrypts it again, and says what is wrong */
        }
        offset += 2 + length;
        opened += 1;
        if (!decode_into(plain, length - TAG_LEN, frames, first_kind)) {
            deferred = plaintext;
            break;
        }
        Py_DECREF(plaintext);
    }
    PyBuffer_Release(&view);
    PyErr_Clear(); /* (a failed allocation above: the reference path meets it again) */
    if (deferred == NULL) deferred = Py_NewRef(Py_None);
    return Py_BuildValue("nKN", offset, (unsigned long long)opened, deferred);
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
    {"open_messages", (PyCFunction)(void (*)(void))open_messages, METH_FASTCALL, open_messages_doc},
    {"seal_message", (PyCFunction)(void (*)(void))seal_message, METH_FASTCALL, seal_message_doc},
    {"set_aead", (PyCFunction)(void (*)(void))set_aead, METH_FASTCALL, set_aead_doc},
    {"set_schemas", set_schemas, METH_O, set_schemas_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "qchan.protocol._speedups",
    "The C fast path of the protocol: sealing, opening and decoding transport messages.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }

/* The compiled twins of three hot loops (docs/design.md, "A compiled walker").
 *
 * skip_plain_explicit_le(buf, pos) returns the position of the first element in `buf` from `pos` that
 * is not an ordinary, defined-length explicit VR little endian element whose value fits, exactly as the
 * pure-Python loop does. Which two-letter VRs are known, and which of them have a 4-byte length, is not
 * written here: walk.py hands its own sets over once with set_vrs(all_vrs, long_vrs), so the one table
 * stays in Python. Until then every VR is unknown and the function returns `pos`: the Python walker then
 * does all the work, which is slower, never wrong.
 *
 * scan_part10(head, size) is part10._parse for the usual file: a preamble and "DICM", explicit VR little
 * endian file meta information, a native or compressed (not deflated) transfer syntax, and the data
 * set's top-level elements up to (0008,0018) with defined lengths, all inside `head` (the first bytes
 * of a file of `size` bytes). It returns (SOP class, SOP instance, transfer syntax, data set offset), or
 * None for anything else, and the Python parser then reads the file as it always did: this function
 * only ever answers what the Python one would, and declines where it would take a second look.
 *
 * store_response(data, start) reads the three values a Storage SCU needs from a C-STORE-RSP command set,
 * as net.dimse.decode_command does, without building its Command (the sender's per-file case).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "_bytes.h"

/* VR kind per two-byte VR (first byte * 256 + second): 0 unknown, 1 short (2-byte length), 2 long. */
static unsigned char vr_kind[65536];

static int
fill(PyObject *vrs, unsigned char kind)
{
    PyObject *it = PyObject_GetIter(vrs);
    PyObject *item;
    if (it == NULL)
        return -1;
    while ((item = PyIter_Next(it)) != NULL) {
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) != 2) {
            Py_DECREF(item);
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "VRs must be 2-byte bytes objects");
            return -1;
        }
        const unsigned char *vr = (const unsigned char *)PyBytes_AS_STRING(item);
        vr_kind[vr[0] << 8 | vr[1]] = kind;
        Py_DECREF(item);
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *
set_vrs(PyObject *self, PyObject *args)
{
    PyObject *all_vrs, *long_vrs;
    if (!PyArg_ParseTuple(args, "OO:set_vrs", &all_vrs, &long_vrs))
        return NULL;
    memset(vr_kind, 0, sizeof vr_kind);
    if (fill(all_vrs, 1) < 0 || fill(long_vrs, 2) < 0) {
        memset(vr_kind, 0, sizeof vr_kind);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
skip_plain_explicit_le(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n:skip_plain_explicit_le", &view, &pos))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    /* all arithmetic in 64 bits: a 32-bit length added to a position never wraps */
    int64_t end = view.len, p = pos;
    if (p >= 0) {
        while (p + 8 <= end) {
            const unsigned char *head = buf + p;
            unsigned char kind = vr_kind[head[4] << 8 | head[5]];
            uint32_t length;
            int64_t next;
            if (kind == 2) {
                if (p + 12 > end)
                    break;
                length = u32le(head + 8);
                next = p + 12 + (int64_t)length;
            }
            else if (kind == 1) {
                length = u16le(head + 6);
                next = p + 8 + (int64_t)length;
            }
            else
                break;
            if (length == 0xFFFFFFFFu || next > end)
                break;
            p = next;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t((Py_ssize_t)p);
}


/* ---- scan_part10 -------------------------------------------------------------------------------- */

#define UNDEFINED_LENGTH 0xFFFFFFFFu
#define SOP_CLASS_TAG 0x00080016u
#define SOP_INSTANCE_TAG 0x00080018u

static uint32_t
u16be(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

static uint32_t
u32be(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* A value as part10._clean_uid cleans it (ASCII, trailing NULs and spaces off, then spaces at either
 * end), or 0 when a byte outside 0x20-0x7E other than NUL needs Python's decoding and stripping rules. */
typedef struct {
    const unsigned char *p;
    int64_t n;
    int set;
} value_t;

static int
clean(const unsigned char *p, int64_t n, value_t *out)
{
    for (int64_t i = 0; i < n; i++)
        if (p[i] != 0 && (p[i] < 0x20 || p[i] > 0x7E))
            return 0;
    while (n > 0 && (p[n - 1] == 0 || p[n - 1] == ' '))
        n--;
    while (n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    out->p = p;
    out->n = n;
    out->set = 1;
    return 1;
}

static int
equals(const value_t *v, const char *s)
{
    size_t n = strlen(s);
    return v->set && (size_t)v->n == n && memcmp(v->p, s, n) == 0;
}

static int
starts_with(const value_t *v, const char *s)
{
    size_t n = strlen(s);
    return v->set && (size_t)v->n >= n && memcmp(v->p, s, n) == 0;
}

#define TS_IMPLICIT_LE "1.2.840.10008.1.2"
#define TS_EXPLICIT_LE "1.2.840.10008.1.2.1"
#define TS_EXPLICIT_BE "1.2.840.10008.1.2.2"
#define TS_DEFLATED "1.2.840.10008.1.2.1.99"

static PyObject *
scan_part10(PyObject *self, PyObject *args)
{
    Py_buffer view;
    long long size_arg;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*L:scan_part10", &view, &size_arg))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    const int64_t have = view.len, size = size_arg;
    value_t meta_class = {0}, meta_instance = {0}, ts = {0}, sop_class = {0}, sop_instance = {0};
    const char *ts_out;
    int64_t pos = 132, offset;
    int explicit, little;

    if (have < 132 || memcmp(buf + 128, "DICM", 4) != 0 || size < have)
        goto decline;
    /* part10._read_meta, explicit VR little endian only */
    while (pos < size) {
        if (pos + 12 > have)
            goto decline;
        const unsigned char *h = buf + pos;
        if (u16le(h) != 0x0002)
            break;
        unsigned char kind = vr_kind[h[4] << 8 | h[5]];
        uint32_t elem = u16le(h + 2), length;
        int64_t vpos;
        if (pos == 132 && kind == 0)
            goto decline; /* implicit VR file meta information */
        if (kind == 2) {
            length = u32le(h + 8);
            vpos = pos + 12;
        }
        else {
            length = u16le(h + 6);
            vpos = pos + 8;
        }
        if (length == UNDEFINED_LENGTH || vpos + (int64_t)length > size)
            goto decline;
        if (elem == 0x0002 || elem == 0x0003 || elem == 0x0010) {
            if (vpos + (int64_t)length > have)
                goto decline;
            value_t *v = elem == 0x0002 ? &meta_class : elem == 0x0003 ? &meta_instance : &ts;
            if (!clean(buf + vpos, length, v))
                goto decline;
        }
        pos = vpos + length;
    }
    offset = pos;
    if (!ts.set || ts.n == 0 || equals(&ts, TS_DEFLATED))
        goto decline;

    /* part10._detect_encoding, _encoding_of and the choice between them */
    int detected = 0, d_explicit = 0, d_little = 0;
    if (offset + 8 <= size) {
        if (offset + 8 > have)
            goto decline;
        const unsigned char *h = buf + offset;
        uint32_t g_le = u16le(h), g_be = u16be(h);
        int is_vr = vr_kind[h[4] << 8 | h[5]] != 0;
        if (g_le == 2 || g_le == 4 || g_le == 6 || g_le == 8) {
            detected = 1;
            d_explicit = is_vr;
            d_little = 1;
        }
        else if (is_vr && (g_be == 2 || g_be == 4 || g_be == 6 || g_be == 8)) {
            detected = 1;
            d_explicit = 1;
            d_little = 0;
        }
    }
    int native = equals(&ts, TS_IMPLICIT_LE) || equals(&ts, TS_EXPLICIT_LE) || equals(&ts, TS_EXPLICIT_BE);
    int standard = native || starts_with(&ts, TS_IMPLICIT_LE ".");
    explicit = !equals(&ts, TS_IMPLICIT_LE);
    little = !equals(&ts, TS_EXPLICIT_BE);
    ts_out = NULL; /* NULL: the transfer syntax as the meta information says */
    if (detected && !standard) {
        explicit = d_explicit;
        little = d_little;
    }
    else if (detected && (d_explicit != explicit || d_little != little) && native) {
        explicit = d_explicit;
        little = d_little;
        ts_out = !explicit ? TS_IMPLICIT_LE : little ? TS_EXPLICIT_LE : TS_EXPLICIT_BE;
    }

    /* part10.find_uids, not strict, without sequences before (0008,0018) */
    pos = offset;
    while (pos < size) {
        if (pos + 8 > have)
            goto decline;
        const unsigned char *h = buf + pos;
        uint32_t group = little ? u16le(h) : u16be(h);
        uint32_t tag = group << 16 | (little ? u16le(h + 2) : u16be(h + 2));
        uint32_t length;
        int64_t vpos;
        unsigned char kind = explicit && group != 0xFFFE ? vr_kind[h[4] << 8 | h[5]] : 0;
        if (kind == 2) {
            if (pos + 12 > have)
                goto decline;
            length = little ? u32le(h + 8) : u32be(h + 8);
            vpos = pos + 12;
        }
        else if (kind == 1 || (explicit && group != 0xFFFE && h[4] >= 'A' && h[4] <= 'Z' && h[5] >= 'A' &&
                               h[5] <= 'Z')) {
            length = little ? u16le(h + 6) : u16be(h + 6);
            vpos = pos + 8;
        }
        else {
            length = little ? u32le(h + 4) : u32be(h + 4);
            vpos = pos + 8;
        }
        if (tag > SOP_INSTANCE_TAG)
            break;
        if (length == UNDEFINED_LENGTH || (int64_t)length > size - vpos)
            goto decline;
        if (tag == SOP_CLASS_TAG || tag == SOP_INSTANCE_TAG) {
            if (vpos + (int64_t)length > have)
                goto decline;
            if (!clean(buf + vpos, length, tag == SOP_CLASS_TAG ? &sop_class : &sop_instance))
                goto decline;
        }
        pos = vpos + length;
    }
    const value_t *cls = sop_class.set && sop_class.n ? &sop_class : &meta_class;
    const value_t *ins = sop_instance.set && sop_instance.n ? &sop_instance : &meta_instance;
    if (!cls->set || !cls->n || !ins->set || !ins->n)
        goto decline;
    result = Py_BuildValue("(s#s#s#L)", (const char *)cls->p, (Py_ssize_t)cls->n, (const char *)ins->p,
                           (Py_ssize_t)ins->n, ts_out ? ts_out : (const char *)ts.p,
                           (Py_ssize_t)(ts_out ? (Py_ssize_t)strlen(ts_out) : (Py_ssize_t)ts.n),
                           (long long)offset);
    PyBuffer_Release(&view);
    return result;
decline:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ---- store_response ----------------------------------------------------------------------------- */

/* store_response(data, start) -> (message ID being responded to, status or None, error comment): the three
 * values of the command set data[start:] that a Storage SCU needs from a C-STORE-RSP, read exactly as
 * net.dimse.decode_command reads a command set (implicit VR little endian elements of group 0000, the
 * same ValueError for a truncated or malformed one, the last of repeated elements counts, a value shorter
 * than 2 bytes leaves the default: 0, None; the comment without trailing NULs and spaces, ASCII with
 * U+FFFD for other bytes). */
static PyObject *
store_response(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n:store_response", &view, &start))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    int64_t end = view.len, offset = start < 0 ? 0 : start;
    long responded = 0, status = -1;
    const unsigned char *comment = NULL;
    int64_t comment_len = 0;
    while (offset < end) {
        if (offset + 8 > end) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "truncated command set");
            return NULL;
        }
        uint32_t group = u16le(buf + offset), elem = u16le(buf + offset + 2), length = u32le(buf + offset + 4);
        int64_t value = offset + 8, stop = value + (int64_t)length;
        if (group != 0 || stop > end) {
            PyBuffer_Release(&view);
            char message[64]; /* PyErr_Format has no %X */
            snprintf(message, sizeof message, "malformed command element (%04X,%04X)", (unsigned)group,
                     (unsigned)elem);
            PyErr_SetString(PyExc_ValueError, message);
            return NULL;
        }
        if (elem == 0x0120)
            responded = length >= 2 ? (long)u16le(buf + value) : 0;
        else if (elem == 0x0900)
            status = length >= 2 ? (long)u16le(buf + value) : -1;
        else if (elem == 0x0902) {
            comment = buf + value;
            comment_len = length;
        }
        offset = stop;
    }
    while (comment_len > 0 && (comment[comment_len - 1] == 0 || comment[comment_len - 1] == ' '))
        comment_len--;
    PyObject *text = PyUnicode_DecodeASCII((const char *)(comment ? comment : buf), (Py_ssize_t)comment_len,
                                           "replace");
    PyBuffer_Release(&view);
    if (text == NULL)
        return NULL;
    PyObject *result;
    if (status < 0)
        result = Py_BuildValue("(lOO)", responded, Py_None, text);
    else
        result = Py_BuildValue("(llO)", responded, status, text);
    Py_DECREF(text);
    return result;
}

static PyMethodDef methods[] = {
    {"skip_plain_explicit_le", skip_plain_explicit_le, METH_VARARGS,
     "skip_plain_explicit_le(buf, pos) -> int: walk.skip_plain_explicit_le, compiled."},
    {"scan_part10", scan_part10, METH_VARARGS,
     "scan_part10(head, size) -> (sop_class, sop_instance, transfer_syntax, offset) or None: part10._parse, "
     "compiled, for the usual file."},
    {"store_response", store_response, METH_VARARGS,
     "store_response(data, start) -> (message_id_responded, status, error_comment): a C-STORE-RSP's values, "
     "read as net.dimse.decode_command reads them."},
    {"set_vrs", set_vrs, METH_VARARGS, "set_vrs(all_vrs, long_vrs): the VRs the walker knows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "batchstore.dicom._walkfast",
    "The compiled twins of walk.skip_plain_explicit_le, part10._parse's usual case and a C-STORE-RSP's reading.", -1, methods,
};

PyMODINIT_FUNC
PyInit__walkfast(void)
{
    return PyModule_Create(&module);
}

/* The compiled one-message path of the Storage SCP (docs/design.md, "Receiving one small file").
 *
 * locate(buf, start, end, max_pdu, contexts) is onemessage.locate, line for line: where a whole C-STORE
 * (a C-STORE-RQ in one P-DATA-TF of one PDV, its data set in the next) lies in buf[start:end], how many
 * bytes from `start` the peer has committed to send before that can be told, or None.
 *
 * serve(buf, start, end, max_pdu, plans, dir_fd, proc_fd, peer_max_pdu) is locate plus the store of the
 * common case, all in one call: the data set's SOP Class and Instance UIDs checked against the request
 * (Explicit or Implicit VR Little Endian: see uids_match), the file meta and the data set written with
 * one writev into an unnamed file (O_TMPFILE) in dir_fd, linked as <prefix>.<SOP Instance UID><extension>,
 * and the C-STORE-RSP (success) encoded, P-DATA-TF and all. It returns what locate returns, except that
 * a found C-STORE becomes (stop, data set length, response PDU, file name, message ID, SOP Instance UID). `plans` maps a context ID to
 * a dict from SOP Class UID to (name prefix, extension, file meta before (0002,0003) or None, file meta
 * after it, explicit VR), built by onemessage.plans; a context or SOP class not in it, a data set whose UIDs are not
 * found as the fast check finds them or do not match, a UID that is not a plain file name, a file that
 * exists already, any failing system call: None, with nothing left behind (the unnamed file vanishes
 * with its descriptor), and the Python path then does the same work and reports what it finds.
 *
 * Every length read from the peer is checked against the bytes present before it is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../dicom/_bytes.h"

#define P_DATA_TF 4
#define MAX_COMMAND_ITEM (16 * 1024 + 2)
#define RECV_BUFFER (1 << 18)
#define MAX_UID 64

typedef struct {
    int context;
    unsigned message_id;
    const unsigned char *cls;
    Py_ssize_t cls_len;
    const unsigned char *inst;
    Py_ssize_t inst_len;
    Py_ssize_t data_start;
    Py_ssize_t stop;
} found_t;

enum { NONE = 0, FOUND = 1, NEED = 2, ERROR = -1 };

static uint32_t
u32be(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* dimse._store_uids: strip trailing NUL and space, non-empty, ASCII, at most 64 characters. */
static int
plain_uid(const unsigned char *p, Py_ssize_t *len)
{
    Py_ssize_t n = *len;
    while (n > 0 && (p[n - 1] == 0 || p[n - 1] == ' '))
        n--;
    if (n == 0 || n > MAX_UID)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return 0;
    *len = n;
    return 1;
}

/* dimse.store_request on b[start:end]: 1 and the fields in f for a plain C-STORE-RQ with a data set. */
static int
store_request(const unsigned char *b, Py_ssize_t start, Py_ssize_t end, found_t *f)
{
    if (end - start >= 70 && u32le(b + start) == 0 && u32le(b + start + 4) == 4
        && u32le(b + start + 12) == 0x00020000) {
        Py_ssize_t class_end = start + 20 + (Py_ssize_t)u32le(b + start + 16);
        if (class_end + 48 <= end) {
            const unsigned char *t = b + class_end;
            if (u32le(t) == 0x01000000 && u32le(t + 4) == 2 && u32le(t + 10) == 0x01100000
                && u32le(t + 14) == 2 && u32le(t + 20) == 0x07000000 && u32le(t + 24) == 2
                && u32le(t + 30) == 0x08000000 && u32le(t + 34) == 2 && u32le(t + 40) == 0x10000000
                && class_end + 48 + (Py_ssize_t)u32le(t + 44) == end) {
                if (u16le(t + 8) != 0x0001 || u16le(t + 38) == 0x0101)
                    return 0;
                f->message_id = u16le(t + 18);
                f->cls = b + start + 20;
                f->cls_len = class_end - start - 20;
                f->inst = t + 48;
                f->inst_len = end - class_end - 48;
                return plain_uid(f->cls, &f->cls_len) && plain_uid(f->inst, &f->inst_len);
            }
        }
    }
    Py_ssize_t pos = start;
    long field = -1, message_id = -1, data_set_type = -1;
    const unsigned char *cls = (const unsigned char *)"", *inst = cls;
    Py_ssize_t cls_len = 0, inst_len = 0;
    while (pos < end) {
        if (pos + 8 > end)
            return 0;
        uint32_t group = u16le(b + pos), elem = u16le(b + pos + 2);
        Py_ssize_t length = (Py_ssize_t)u32le(b + pos + 4);
        pos += 8;
        if (group || length > end - pos)
            return 0;
        if (elem == 0x1000) {
            inst = b + pos;
            inst_len = length;
        }
        else if (elem == 0x0002) {
            cls = b + pos;
            cls_len = length;
        }
        else if (elem == 0x0100 || elem == 0x0110 || elem == 0x0800) {
            if (length != 2)
                return 0;
            long value = (long)u16le(b + pos);
            if (elem == 0x0100)
                field = value;
            else if (elem == 0x0110)
                message_id = value;
            else
                data_set_type = value;
        }
        pos += length;
    }
    if (field != 0x0001 || message_id < 0 || data_set_type < 0 || data_set_type == 0x0101)
        return 0;
    f->message_id = (unsigned)message_id;
    f->cls = cls;
    f->cls_len = cls_len;
    f->inst = inst;
    f->inst_len = inst_len;
    return plain_uid(f->cls, &f->cls_len) && plain_uid(f->inst, &f->inst_len);
}

static int
locate_core(const unsigned char *b, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_pdu, PyObject *contexts,
            found_t *f, Py_ssize_t *need)
{
    if (end - start < 12)
        return NONE;
    const unsigned char *h = b + start;
    Py_ssize_t length = (Py_ssize_t)u32be(h + 2), item = (Py_ssize_t)u32be(h + 6);
    int context = h[10];
    if (h[0] != P_DATA_TF || h[11] != 3 || item != length - 4 || item < 2 || item > MAX_COMMAND_ITEM
        || length > max_pdu)
        return NONE;
    PyObject *key = PyLong_FromLong(context);
    if (key == NULL)
        return ERROR;
    int known = PySequence_Contains(contexts, key);
    Py_DECREF(key);
    if (known < 0)
        return ERROR;
    if (!known)
        return NONE;
    Py_ssize_t command_end = start + 6 + length;
    if (command_end > end) {
        *need = command_end - start;
        return NEED;
    }
    if (!store_request(b, start + 12, command_end, f))
        return NONE;
    if (command_end + 6 > end) {
        *need = command_end + 6 - start;
        return NEED;
    }
    const unsigned char *d = b + command_end;
    Py_ssize_t data_length = (Py_ssize_t)u32be(d + 2);
    Py_ssize_t stop = command_end + 6 + data_length;
    if (d[0] != P_DATA_TF || data_length < 6 || data_length > max_pdu || stop - start > RECV_BUFFER)
        return NONE;
    if (stop > end) {
        *need = stop - start;
        return NEED;
    }
    if (d[11] != 2 || (Py_ssize_t)u32be(d + 6) != data_length - 4 || d[10] != context)
        return NONE;
    f->context = context;
    f->data_start = command_end + 12;
    f->stop = stop;
    return FOUND;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t start, Py_ssize_t end)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (start < 0 || end < start || end > view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
        return -1;
    }
    return 0;
}

static PyObject *
found_tuple(const found_t *f)
{
    return Py_BuildValue("iIs#s#nn", f->context, f->message_id, (const char *)f->cls, f->cls_len,
                         (const char *)f->inst, f->inst_len, f->data_start, f->stop);
}

static PyObject *
locate(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "locate(buf, start, end, max_pdu, contexts)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_pdu = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (get_buffer(args[0], &view, start, end) < 0)
        return NULL;
    found_t f;
    Py_ssize_t need = 0;
    int r = locate_core((const unsigned char *)view.buf, start, end, max_pdu, args[4], &f, &need);
    PyObject *result = NULL;
    if (r == FOUND)
        result = found_tuple(&f);
    else if (r == NEED)
        result = PyLong_FromSsize_t(need);
    else if (r == NONE) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    PyBuffer_Release(&view);
    return result;
}

/* 1 when the data set's SOP Class and Instance UIDs are the request's, read as Store._check_explicit_le
 * reads them (explicit) or as walk.read_elements does before anything unusual (implicit VR little endian):
 * top-level elements of defined length up to (0008,0018). An item tag, a long VR (explicit), an undefined
 * length or a truncated value: 0, and the Python path reads the data set itself. */
static int
uids_match(const unsigned char *p, Py_ssize_t end, const found_t *f, int explicit)
{
    static const char long_vrs[][2] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                                       "UT", "UV"};
    const unsigned char *cls = NULL, *inst = NULL;
    Py_ssize_t cls_len = 0, inst_len = 0, pos = 0;
    while (pos + 8 <= end) {
        uint32_t group = u16le(p + pos), element = u16le(p + pos + 2);
        Py_ssize_t length = explicit ? (Py_ssize_t)u16le(p + pos + 6) : (Py_ssize_t)u32le(p + pos + 4);
        if (group == 0xFFFE || (!explicit && length == 0xFFFFFFFF))
            return 0;
        for (size_t i = 0; explicit && i < sizeof long_vrs / sizeof long_vrs[0]; i++)
            if (p[pos + 4] == (unsigned char)long_vrs[i][0] && p[pos + 5] == (unsigned char)long_vrs[i][1])
                return 0;
        uint32_t tag = group << 16 | element;
        if (tag > 0x00080018)
            return 0;
        pos += 8;
        if (tag == 0x00080016 || tag == 0x00080018) {
            if (length > end - pos)
                return 0;
            Py_ssize_t n = length;
            while (n > 0 && p[pos + n - 1] == 0)
                n--;
            if (tag == 0x00080016) {
                cls = p + pos;
                cls_len = n;
            }
            else {
                inst = p + pos;
                inst_len = n;
            }
            if (cls != NULL && inst != NULL)
                return cls_len == f->cls_len && inst_len == f->inst_len && memcmp(cls, f->cls, cls_len) == 0
                       && memcmp(inst, f->inst, inst_len) == 0;
        }
        pos += length;
    }
    return 0;
}

static const unsigned char preamble[132] = {[128] = 'D', [129] = 'I', [130] = 'C', [131] = 'M'};

static void
put16(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xFF;
    p[1] = v >> 8 & 0xFF;
}

static void
put32(unsigned char *p, uint32_t v)
{
    put16(p, v & 0xFFFF);
    put16(p + 2, v >> 16);
}

static unsigned char *
element(unsigned char *p, uint32_t elem, uint32_t length)
{
    put16(p, 0);
    put16(p + 2, elem);
    put32(p + 4, length);
    return p + 8;
}

/* The C-STORE-RSP (success) PDU, exactly as dimse.c_store_rsp and Association._send_command build it. */
static PyObject *
response(const found_t *f)
{
    Py_ssize_t cls = f->cls_len + (f->cls_len & 1), inst = f->inst_len + (f->inst_len & 1);
    Py_ssize_t command = 12 + 8 + cls + 40 + 8 + inst;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 12 + command);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    memset(p, 0, 12 + command);
    p[0] = P_DATA_TF;
    p[2] = (command + 6) >> 24 & 0xFF, p[3] = (command + 6) >> 16 & 0xFF;
    p[4] = (command + 6) >> 8 & 0xFF, p[5] = (command + 6) & 0xFF;
    p[6] = (command + 2) >> 24 & 0xFF, p[7] = (command + 2) >> 16 & 0xFF;
    p[8] = (command + 2) >> 8 & 0xFF, p[9] = (command + 2) & 0xFF;
    p[10] = (unsigned char)f->context;
    p[11] = 3;
    p = element(p + 12, 0x0000, 4);
    put32(p, (uint32_t)(command - 12));
    p = element(p + 4, 0x0002, (uint32_t)cls);
    memcpy(p, f->cls, f->cls_len); /* the padding byte is the memset's NUL */
    p = element(p + cls, 0x0100, 2);
    put16(p, 0x8001);
    p = element(p + 2, 0x0120, 2);
    put16(p, f->message_id);
    p = element(p + 2, 0x0800, 2);
    put16(p, 0x0101);
    p = element(p + 2, 0x0900, 2); /* status 0x0000: the memset's */
    p = element(p + 2, 0x1000, (uint32_t)inst);
    memcpy(p, f->inst, f->inst_len);
    return out;
}

/* Write the file and link it as `name` in dir_fd: 1 done, 0 nothing left behind. */
static int
place(int dir_fd, int proc_fd, const char *name, struct iovec *iov, int parts, Py_ssize_t total)
{
    int fd = openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    if (fd < 0)
        return 0;
    int done = 0;
    if (writev(fd, iov, parts) == total) {
        char path[24];
        snprintf(path, sizeof path, "%d", fd);
        done = linkat(proc_fd, path, dir_fd, name, AT_SYMLINK_FOLLOW) == 0;
    }
    close(fd);
    return done;
}

static PyObject *
serve(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "serve(buf, start, end, max_pdu, plans, dir_fd, proc_fd, peer_max_pdu)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_pdu = PyLong_AsSsize_t(args[3]), peer_max_pdu = PyLong_AsSsize_t(args[7]);
    int dir_fd = PyLong_AsLong(args[5]), proc_fd = PyLong_AsLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *plans = args[4];
    if (!PyDict_Check(plans)) {
        PyErr_SetString(PyExc_TypeError, "plans must be a dict");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(args[0], &view, start, end) < 0)
        return NULL;
    const unsigned char *b = (const unsigned char *)view.buf;
    found_t f;
    Py_ssize_t need = 0;
    PyObject *result = NULL;
    int r = locate_core(b, start, end, max_pdu, plans, &f, &need);
    if (r == ERROR)
        goto done;
    if (r == NEED) {
        result = PyLong_FromSsize_t(need);
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
    if (r == NONE)
        goto done;
    /* the plan for this context and SOP class */
    PyObject *key = PyLong_FromLong(f.context);
    if (key == NULL)
        goto fail;
    PyObject *classes = PyDict_GetItemWithError(plans, key);
    Py_DECREF(key);
    if (classes == NULL || !PyDict_Check(classes))
        goto check_error;
    PyObject *cls_key = PyUnicode_DecodeASCII((const char *)f.cls, f.cls_len, NULL);
    if (cls_key == NULL)
        goto fail;
    PyObject *plan = PyDict_GetItemWithError(classes, cls_key);
    Py_DECREF(cls_key);
    if (plan == NULL)
        goto check_error;
    const char *prefix, *extension, *before = NULL, *after = NULL;
    Py_ssize_t prefix_len, extension_len, before_len = 0, after_len = 0;
    PyObject *before_obj, *after_obj;
    int explicit;
    if (!PyArg_ParseTuple(plan, "y#y#OOp", &prefix, &prefix_len, &extension, &extension_len, &before_obj,
                          &after_obj, &explicit))
        goto fail;
    int meta = before_obj != Py_None;
    if (meta && (PyBytes_AsStringAndSize(before_obj, (char **)&before, &before_len) < 0
                 || PyBytes_AsStringAndSize(after_obj, (char **)&after, &after_len) < 0))
        goto fail;
    /* the response must fit the peer's PDU, as the Python path sends it */
    Py_ssize_t padded_cls = f.cls_len + (f.cls_len & 1), padded_inst = f.inst_len + (f.inst_len & 1);
    if (peer_max_pdu && 12 + 8 + padded_cls + 48 + padded_inst + 6 > peer_max_pdu)
        goto done;
    /* a file name without anything to sanitise: the UID is digits and dots */
    for (Py_ssize_t i = 0; i < f.inst_len; i++)
        if (!((f.inst[i] >= '0' && f.inst[i] <= '9') || f.inst[i] == '.'))
            goto done;
    char name[512];
    if (prefix_len + f.inst_len + extension_len >= (Py_ssize_t)sizeof name)
        goto done;
    memcpy(name, prefix, prefix_len);
    memcpy(name + prefix_len, f.inst, f.inst_len);
    memcpy(name + prefix_len + f.inst_len, extension, extension_len);
    name[prefix_len + f.inst_len + extension_len] = 0;
    const unsigned char *data = b + f.data_start;
    Py_ssize_t data_len = f.stop - f.data_start;
    if (!uids_match(data, data_len, &f, explicit))
        goto done;
    struct iovec iov[8];
    int parts = 0;
    Py_ssize_t total = data_len;
    unsigned char group_length[12], instance_header[8];
    static const unsigned char nul = 0;
    if (meta) {
        memcpy(group_length, "\x02\x00\x00\x00UL\x04\x00", 8);
        put32(group_length + 8, (uint32_t)(before_len + after_len + 8 + padded_inst));
        memcpy(instance_header, "\x02\x00\x03\x00UI", 6);
        put16(instance_header + 6, (uint32_t)padded_inst);
        iov[parts++] = (struct iovec){(void *)preamble, sizeof preamble};
        iov[parts++] = (struct iovec){group_length, sizeof group_length};
        iov[parts++] = (struct iovec){(void *)before, (size_t)before_len};
        iov[parts++] = (struct iovec){instance_header, sizeof instance_header};
        iov[parts++] = (struct iovec){(void *)f.inst, (size_t)f.inst_len};
        if (f.inst_len & 1)
            iov[parts++] = (struct iovec){(void *)&nul, 1};
        iov[parts++] = (struct iovec){(void *)after, (size_t)after_len};
        total += sizeof preamble + sizeof group_length + before_len + sizeof instance_header + padded_inst
                 + after_len;
    }
    iov[parts++] = (struct iovec){(void *)data, (size_t)data_len};
    PyObject *rsp = response(&f);
    if (rsp == NULL)
        goto fail;
    int placed;
    Py_BEGIN_ALLOW_THREADS
    placed = place(dir_fd, proc_fd, name, iov, parts, total);
    Py_END_ALLOW_THREADS
    if (!placed) {
        Py_DECREF(rsp);
        goto done;
    }
    Py_SETREF(result, Py_BuildValue("nnNsIs#", f.stop, data_len, rsp, name, f.message_id, (const char *)f.inst, f.inst_len));
    goto done;
check_error:
    if (!PyErr_Occurred())
        goto done;
fail:
    Py_CLEAR(result);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"locate", (PyCFunction)(void (*)(void))locate, METH_FASTCALL,
     "Where a whole C-STORE lies in the buffer, the bytes still needed, or None (onemessage.locate)."},
    {"serve", (PyCFunction)(void (*)(void))serve, METH_FASTCALL,
     "locate, then store and answer the common case: (stop, data length, response, name, message ID, UID)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_onemessage", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__onemessage(void)
{
    return PyModule_Create(&module);
}

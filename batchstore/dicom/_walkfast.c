/* The compiled twin of walk.skip_plain_explicit_le (docs/design.md, "A compiled walker").
 *
 * skip_plain_explicit_le(buf, pos) returns the position of the first element in `buf` from `pos` that
 * is not an ordinary, defined-length explicit VR little endian element whose value fits, exactly as the
 * pure-Python loop does. Which two-letter VRs are known, and which of them have a 4-byte length, is not
 * written here: walk.py hands its own sets over once with set_vrs(all_vrs, long_vrs), so the one table
 * stays in Python. Until then every VR is unknown and the function returns `pos`: the Python walker then
 * does all the work, which is slower, never wrong.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

static PyMethodDef methods[] = {
    {"skip_plain_explicit_le", skip_plain_explicit_le, METH_VARARGS,
     "skip_plain_explicit_le(buf, pos) -> int: walk.skip_plain_explicit_le, compiled."},
    {"set_vrs", set_vrs, METH_VARARGS, "set_vrs(all_vrs, long_vrs): the VRs the walker knows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "batchstore.dicom._walkfast",
    "The compiled twin of walk.skip_plain_explicit_le.", -1, methods,
};

PyMODINIT_FUNC
PyInit__walkfast(void)
{
    return PyModule_Create(&module);
}

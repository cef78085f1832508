/* The fork server's loop in C (receiver/spawner.py; docs/design.md, "Where an association's time goes").
 *
 * serve(channel) waits on `channel` (a SOCK_SEQPACKET socket) for requests from the receiver, each one
 * byte carrying one descriptor. For each it forks a child whose parent is the receiver, not this process
 * (clone with CLONE_PARENT; its exit signal, SIGCHLD, goes to the receiver, which reaps it, counts it
 * against --max-associations and removes what a crashed one left), and answers the child's pid as 8 bytes
 * (minus errno if the fork failed). In the child it returns the request's descriptor; when the receiver
 * closes the channel it returns None.
 *
 * Between two forks the loop touches only its stack, so the fork server's pages stay shared with its
 * children instead of being copied at each fork, as a Python loop's would be. It runs no Python code
 * while it waits, so it needs a process with a single thread (a forked process has one) and
 * the default action for the signals that end it. The child is reinitialised as os.fork does it
 * (PyOS_AfterFork_Child: the interpreter's state and the at-fork hooks of the child); the hooks run
 * before and after a fork in the forking process are not run, since this loop holds no lock they
 * would take, and neither is the C library's fork preparation, for the same reason.
 * What the raw clone leaves as it was, which the C library's fork would have set anew in the child: the
 * thread id glibc keeps in the thread's descriptor (it stays the fork server's; glibc's pthread_kill and
 * raise on the calling thread ask the kernel for the real one, and the child starts no threads and takes
 * no priority-inheriting or robust mutex), the robust-mutex list registration (none is used), and
 * pthread_atfork child handlers of other libraries (OpenSSL's random-state reset: a TLS receiver keeps
 * to os.fork: it keeps no spare children, server.py).
 * Linux only; elsewhere the module is not built and the receiver forks its children itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The one descriptor a request carries, or -1 (any others are closed). */
static int
request_fd(struct msghdr *msg)
{
    int fd = -1;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL; cmsg = CMSG_NXTHDR(msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int got;
            memcpy(&got, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
            if (fd < 0) {
                fd = got;
            }
            else {
                close(got);
            }
        }
    }
    return fd;
}

static PyObject *
serve(PyObject *self, PyObject *arg)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (value < 0 || value > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    int channel = (int)value;
    for (;;) {
        char byte;
        struct iovec iov = {&byte, 1};
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(4 * sizeof(int))];
        } control;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        ssize_t got = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        int fd = request_fd(&msg);
        if (got == 0 || fd < 0) {
            Py_RETURN_NONE; /* the receiver closed the channel */
        }
        if (PySys_Audit("os.fork", NULL) < 0) {
            close(fd);
            return NULL;
        }
        /* clone(flags, stack, ...): stack 0 = a copy of the caller's, as fork */
        long pid = syscall(SYS_clone, (long)(CLONE_PARENT | SIGCHLD), 0L, 0L, 0L, 0L);
        if (pid == 0) {
            PyOS_AfterFork_Child();
            return PyLong_FromLong(fd);
        }
        int64_t answer = pid > 0 ? (int64_t)pid : -(int64_t)errno;
        close(fd);
        ssize_t sent;
        do {
            sent = send(channel, &answer, sizeof answer, MSG_NOSIGNAL);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_O,
     "Fork a child of this process's parent per request on the channel; the request's descriptor in the "
     "child, None when the channel closes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sibling", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__sibling(void)
{
    return PyModule_Create(&module);
}

/* clarion.server._fastloop: the fan-out's append loop and the per-iteration flush, compiled.
 *
 * The same two loops as clarion/server/fastws.py (push_many, Flusher.flush), which stays the
 * reference and the fallback: this module implements only their common case and hands every
 * other one to the Python code. It reads and writes the Outbox's and Flusher's slots at the
 * offsets their member descriptors give (bind() looks them up once), so no attribute lookup
 * runs per connection.
 *
 * The common case of a flush: frames queued, nothing held, not sealed, no half-close pending.
 * A connection that allows it (a WebSocket, whose every byte goes through its Outbox) and whose
 * transport's buffer was empty at its last write gets its frames with one send()/sendmsg() on
 * its socket, skipping the transport; whatever the kernel does not take goes to the transport's
 * write(), which buffers it and raises what an error means, as for any write. With use_ring(),
 * the one-frame sends of a flush go to the kernel together, through io_uring (sendring.c).
 *
 * whole_direct() reads a request for one of the app's direct routes (POST /api/publish) that a
 * chunk holds whole and that is written in the plainest way (see http.py), in place of the
 * parser's callbacks; it returns None for anything else, which httptools then parses, so it
 * only ever takes requests httptools would read the same way. step() runs such a request's
 * coroutine to its first suspension or its end (see direct.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "sendring.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define MAX_IOV (IOV_MAX < 1024 ? IOV_MAX : 1024)

/* What bind() found. */
static PyTypeObject *outbox_type;
static PyTypeObject *flusher_type;
static PyObject *flush_one;   /* fastws._flush_one(box): the Python flush with its logging */
static PyObject *push_many_py; /* fastws._push_many: frames that are not plain bytes */
static PyObject *report;       /* fastws._report(box, exc): logs what one flush raised */
static PyObject *empty_bytes;
static PyObject *zero;
static PyObject *str_is_closing, *str_write, *str_buffer_size, *str_over_limit, *str_schedule,
    *str_join, *str_admit;

static Py_ssize_t off_out, off_dirty, off_pushed, off_flusher, off_held, off_sealed, off_eof,
    off_backlog, off_out_bytes, off_limit, off_transport, off_direct, off_fd;
static Py_ssize_t off_f_dirty, off_f_scheduled;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static inline void set_slot(PyObject *obj, Py_ssize_t off, PyObject *value) {
    PyObject *old = SLOT(obj, off);
    Py_INCREF(value);
    SLOT(obj, off) = value;
    Py_XDECREF(old);
}

static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *off) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) return -1;
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
        Py_DECREF(descr);
        return -1;
    }
    *off = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    return 0;
}

static PyObject *bind_types(PyObject *self, PyObject *args) {
    PyObject *outbox, *flusher, *one, *many, *rep;
    if (!PyArg_ParseTuple(args, "O!O!OOO", &PyType_Type, &outbox, &PyType_Type, &flusher, &one,
                          &many, &rep))
        return NULL;
    PyTypeObject *ot = (PyTypeObject *)outbox, *ft = (PyTypeObject *)flusher;
    if (slot_offset(ot, "_out", &off_out) || slot_offset(ot, "_dirty", &off_dirty) ||
        slot_offset(ot, "_pushed", &off_pushed) || slot_offset(ot, "_flusher", &off_flusher) ||
        slot_offset(ot, "_held", &off_held) || slot_offset(ot, "_sealed", &off_sealed) ||
        slot_offset(ot, "_eof", &off_eof) || slot_offset(ot, "_backlog", &off_backlog) ||
        slot_offset(ot, "_out_bytes", &off_out_bytes) || slot_offset(ot, "_limit", &off_limit) ||
        slot_offset(ot, "transport", &off_transport) || slot_offset(ot, "_direct", &off_direct) ||
        slot_offset(ot, "_fd", &off_fd) || slot_offset(ft, "_dirty", &off_f_dirty) ||
        slot_offset(ft, "_scheduled", &off_f_scheduled))
        return NULL;
    Py_INCREF(ot);
    Py_XSETREF(outbox_type, ot);
    Py_INCREF(ft);
    Py_XSETREF(flusher_type, ft);
    Py_INCREF(one);
    Py_XSETREF(flush_one, one);
    Py_INCREF(many);
    Py_XSETREF(push_many_py, many);
    Py_INCREF(rep);
    Py_XSETREF(report, rep);
    Py_RETURN_NONE;
}

/* A slot holding a non-negative int, as a C size; -1 for anything else (an error set if the
 * slot is unset or the int does not fit). */
static inline Py_ssize_t slot_ssize(PyObject *obj, Py_ssize_t off) {
    PyObject *v = SLOT(obj, off);
    if (v == NULL || !PyLong_CheckExact(v)) return -1;
    return PyLong_AsSsize_t(v);
}

/* The first frame of an iteration on a clean connection: put it on its loop's flusher. */
static int mark(PyObject *box) {
    set_slot(box, off_pushed, Py_True);
    if (SLOT(box, off_dirty) == Py_True) return 0;
    set_slot(box, off_dirty, Py_True);
    PyObject *flusher = SLOT(box, off_flusher);
    if (flusher == NULL || !PyObject_TypeCheck(flusher, flusher_type)) {
        PyErr_SetString(PyExc_TypeError, "connection without a flusher");
        return -1;
    }
    PyObject *dirty = SLOT(flusher, off_f_dirty);
    if (dirty == NULL || !PyList_CheckExact(dirty)) {
        PyErr_SetString(PyExc_TypeError, "flusher without its list");
        return -1;
    }
    if (PyList_Append(dirty, box) < 0) return -1;
    if (SLOT(flusher, off_f_scheduled) != Py_True) {
        PyObject *r = PyObject_CallMethodNoArgs(flusher, str_schedule);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    return 0;
}

static PyObject *push_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "push_many(boxes, frame)");
        return NULL;
    }
    PyObject *boxes = args[0], *frame = args[1];
    if (!PyBytes_CheckExact(frame) || outbox_type == NULL)  /* keyed signals: the Python loop */
        return PyObject_Vectorcall(push_many_py, args, 2, NULL);
    Py_ssize_t size = PyBytes_GET_SIZE(frame);
    PyObject *size_obj = NULL; /* made once, for the connections over their limit */
    /* Connections in the same state (the same frames pushed since their last write: every
     * subscriber of a channel) hold the same count object, which this call maps to the next
     * once: the count costs neither an int per connection nor a look into one. Both held, so
     * that a freed object's address never matches. */
    PyObject *memo_from = NULL, *memo_to = NULL, *memo_limit = NULL;
    Py_ssize_t memo_queued = 0, limit_value = 0;
    PyObject *it = PyObject_GetIter(boxes);
    if (it == NULL) return NULL;
    PyObject *box;
    while ((box = PyIter_Next(it)) != NULL) {
        if (!PyObject_TypeCheck(box, outbox_type)) {
            PyErr_Format(PyExc_TypeError, "not an Outbox: %R", box);
            goto fail;
        }
        PyObject *out = SLOT(box, off_out);
        if (out == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_out");
            goto fail;
        }
        if (PyList_CheckExact(out)) {  /* else sealed: its pushes are discarded */
            /* The running count, against the limit, as Outbox.push does it. */
            PyObject *cur = SLOT(box, off_out_bytes), *next = NULL;
            Py_ssize_t queued, backlog, limit;
            if (cur != NULL && cur == memo_from) {
                queued = memo_queued;
                next = memo_to;
            } else {
                queued = slot_ssize(box, off_out_bytes);
                if (queued < 0) goto not_a_size;
                queued += size;
            }
            PyObject *limit_obj = SLOT(box, off_limit);
            if (limit_obj != NULL && limit_obj == memo_limit) {
                limit = limit_value;
            } else {
                limit = slot_ssize(box, off_limit);
                if (limit < 0) goto not_a_size;
                Py_INCREF(limit_obj);
                Py_XSETREF(memo_limit, limit_obj);
                limit_value = limit;
            }
            backlog = SLOT(box, off_backlog) == zero ? 0 : slot_ssize(box, off_backlog);
            if (backlog < 0) goto not_a_size;
            if (queued + backlog > limit) {
                if (size_obj == NULL && (size_obj = PyLong_FromSsize_t(size)) == NULL) goto fail;
                PyObject *r = PyObject_CallMethodOneArg(box, str_admit, size_obj);
                if (r == NULL) goto fail;
                int admitted = PyObject_IsTrue(r);
                Py_DECREF(r);
                if (admitted < 0) goto fail;
                out = SLOT(box, off_out);
                if (!admitted || out == NULL || !PyList_CheckExact(out)) {
                    Py_DECREF(box);
                    continue;
                }
            }
            Py_ssize_t n = PyList_GET_SIZE(out);
            if (PyList_Append(out, frame) < 0) goto fail;
            if (next == NULL) {
                next = PyLong_FromSsize_t(queued);
                if (next == NULL) goto fail;
                if (cur != NULL) {
                    Py_INCREF(cur);
                    Py_XSETREF(memo_from, cur);
                    Py_XSETREF(memo_to, next); /* takes the new reference */
                    memo_queued = queued;
                }
            }
            Py_INCREF(next);
            Py_XSETREF(SLOT(box, off_out_bytes), next);
            if (n == 0 && mark(box) < 0) goto fail;
        }
        Py_DECREF(box);
    }
    Py_DECREF(it);
    Py_XDECREF(size_obj);
    Py_XDECREF(memo_from);
    Py_XDECREF(memo_to);
    Py_XDECREF(memo_limit);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
not_a_size:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "an Outbox count is not a size");
fail:
    Py_DECREF(box);
    Py_DECREF(it);
    Py_XDECREF(size_obj);
    Py_XDECREF(memo_from);
    Py_XDECREF(memo_to);
    Py_XDECREF(memo_limit);
    return NULL;
}

/* The Python flush for this box (it logs and swallows what one connection raises). */
static int flush_slow(PyObject *box) {
    PyObject *r = PyObject_CallOneArg(flush_one, box);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* Clear the queue after its bytes were handed on. */
static int clear_out(PyObject *box, PyObject *out) {
    if (PyList_SetSlice(out, 0, PyList_GET_SIZE(out), NULL) < 0) return -1;
    set_slot(box, off_out_bytes, zero);
    return 0;
}

/* Hand `data` (from byte `sent` on) to the transport, then what Outbox.flush does after its
 * write: note what the transport still holds and hold pushed frames against the limit. */
static int write_rest(PyObject *box, PyObject *transport, PyObject *data, Py_ssize_t sent) {
    PyObject *rest = data;
    if (sent > 0) {
        rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent,
                                         PyBytes_GET_SIZE(data) - sent);
        if (rest == NULL) return -1;
    } else {
        Py_INCREF(rest);
    }
    PyObject *r = PyObject_CallMethodOneArg(transport, str_write, rest);
    Py_DECREF(rest);
    if (r == NULL) return -1;
    Py_DECREF(r);
    PyObject *backlog = PyObject_CallMethodNoArgs(transport, str_buffer_size);
    if (backlog == NULL) return -1;
    set_slot(box, off_backlog, backlog);
    int over = 0;
    if (SLOT(box, off_pushed) == Py_True) {
        set_slot(box, off_pushed, Py_False);
        PyObject *limit = SLOT(box, off_limit);
        over = limit == NULL ? -1 : PyObject_RichCompareBool(backlog, limit, Py_GT);
    }
    Py_DECREF(backlog);
    if (over < 0) return -1;
    if (over) {
        r = PyObject_CallMethodNoArgs(box, str_over_limit);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    return 0;
}

static PyObject *joined(PyObject *out) {
    Py_ssize_t n = PyList_GET_SIZE(out);
    if (n == 1) {
        PyObject *only = PyList_GET_ITEM(out, 0);
        if (PyBytes_CheckExact(only)) return Py_NewRef(only);
    }
    return PyObject_CallMethodOneArg(empty_bytes, str_join, out);
}

/* One connection's queue `out` to its `transport` (both held by the caller, as Python code
 * may run in between): 1 = done here, 0 = not the common case, -1 = error; with `frame` (the
 * ring), 2 = its one frame taken out of the queue into `*frame`, to go out with the
 * iteration's others (send_queued). Several frames keep their own sendmsg(), which already
 * shares its system call among them: joining them for the ring would copy every byte of a
 * burst to save one call. */
static int flush_queue(PyObject *box, PyObject *out, PyObject *transport, PyObject **frame) {
    Py_ssize_t n = PyList_GET_SIZE(out);
    set_slot(box, off_dirty, Py_False);
    if (n == 0) return 1;
    PyObject *closing = PyObject_CallMethodNoArgs(transport, str_is_closing);
    if (closing == NULL) return -1;
    int is_closing = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (is_closing) {
        set_slot(box, off_dirty, Py_True);  /* the Python flush clears it and drops the queue */
        return is_closing < 0 ? -1 : 0;
    }
    PyObject *backlog = SLOT(box, off_backlog), *fdobj = SLOT(box, off_fd);
    int direct = SLOT(box, off_direct) == transport && backlog != NULL &&
                 PyLong_CheckExact(backlog) && PyLong_AsSsize_t(backlog) == 0 &&
                 fdobj != NULL && PyLong_CheckExact(fdobj) && n <= MAX_IOV;
    if (!direct) {
        PyObject *data = joined(out);
        if (data == NULL) return -1;
        int rc = clear_out(box, out);
        if (rc == 0) rc = write_rest(box, transport, data, 0);
        Py_DECREF(data);
        return rc < 0 ? -1 : 1;
    }
    if (frame != NULL && n == 1 && PyBytes_Check(PyList_GET_ITEM(out, 0))) {
        *frame = Py_NewRef(PyList_GET_ITEM(out, 0));
        if (clear_out(box, out) < 0) {
            Py_CLEAR(*frame);
            return -1;
        }
        return 2;
    }
    struct iovec iov[MAX_IOV];
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(out, i);
        if (!PyBytes_Check(item)) {
            set_slot(box, off_dirty, Py_True);
            return 0;
        }
        iov[i].iov_base = PyBytes_AS_STRING(item);
        iov[i].iov_len = (size_t)PyBytes_GET_SIZE(item);
        total += iov[i].iov_len;
    }
    int fd = (int)PyLong_AsLong(fdobj);
    ssize_t sent;
    do {
        if (n == 1) {
            sent = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr msg;
            memset(&msg, 0, sizeof msg);
            msg.msg_iov = iov;
            msg.msg_iovlen = (size_t)n;
            sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        }
    } while (sent < 0 && errno == EINTR);
    if (sent >= 0 && (size_t)sent == total) {
        if (clear_out(box, out) < 0) return -1;
        set_slot(box, off_pushed, Py_False);  /* nothing waits: under any limit */
        return 1;
    }
    /* The kernel took part (or nothing, or failed): the transport takes the rest and, on an
     * error, fails the connection as its own write would. */
    PyObject *data = joined(out);
    if (data == NULL) return -1;
    int rc = clear_out(box, out);
    if (rc == 0) rc = write_rest(box, transport, data, sent > 0 ? (Py_ssize_t)sent : 0);
    Py_DECREF(data);
    return rc < 0 ? -1 : 1;
}

/* One connection: 1 = done here, 0 = not the common case (the caller runs the Python flush),
 * 2 = its frame in `*data`, to be sent with the iteration's others (only when `data` is
 * given), -1 = error. */
static int flush_fast(PyObject *box, PyObject **data) {
    PyObject *out = SLOT(box, off_out), *held = SLOT(box, off_held), *eof = SLOT(box, off_eof);
    PyObject *sealed = SLOT(box, off_sealed), *transport = SLOT(box, off_transport);
    if (out == NULL || held != Py_None || sealed != Py_False || eof == NULL || transport == NULL ||
        !PyList_CheckExact(out) || !PyLong_CheckExact(eof) || PyLong_AsLong(eof) != 0)
        return 0;
    Py_INCREF(out);
    Py_INCREF(transport);
    int rc = flush_queue(box, out, transport, data);
    Py_DECREF(transport);
    Py_DECREF(out);
    return rc;
}

/* As the Python loop does: one connection's failure is logged, the rest go on. 0, or -1 if
 * the logging itself failed. */
static int report_failure(PyObject *box) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallFunctionObjArgs(report, box, value, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* Whether flush_boxes sends through the ring (use_ring). */
static int ring_wanted;

/* Connections whose frames wait to go out together: the references each entry holds. */
#define BATCH 256
typedef struct {
    PyObject *box, *transport, *data;
} queued;

/* Send the batch, then what flush_queue does after its send; every reference let go. */
static int send_queued(queued *q, sendring_entry *e, int k) {
    int rc = 0;
    sendring_send(e, (size_t)k);
    for (int i = 0; i < k; i++) {
        ssize_t sent = e[i].res;
        if (rc == 0 && sent >= 0 && (size_t)sent == e[i].len) {
            /* Nothing waits: under any limit, unless frames came since it was queued. */
            PyObject *out = SLOT(q[i].box, off_out);
            if (out != NULL && PyList_CheckExact(out) && PyList_GET_SIZE(out) == 0)
                set_slot(q[i].box, off_pushed, Py_False);
        } else if (rc == 0 &&
                   write_rest(q[i].box, q[i].transport, q[i].data, sent > 0 ? sent : 0) < 0) {
            rc = report_failure(q[i].box);
        }
        Py_DECREF(q[i].data);
        Py_DECREF(q[i].transport);
        Py_DECREF(q[i].box);
    }
    return rc;
}

static PyObject *flush_boxes(PyObject *self, PyObject *dirty) {
    if (!PyList_CheckExact(dirty)) {
        PyErr_SetString(PyExc_TypeError, "flush_boxes(list)");
        return NULL;
    }
    /* Until the batch is sent its sockets stay open: a transport closed meanwhile (by what
     * a Python flush runs) closes its socket from a later callback, on either event loop. */
    queued q[BATCH];
    sendring_entry e[BATCH];
    PyObject *type, *value, *tb;
    int k = 0, batch = ring_wanted && PyList_GET_SIZE(dirty) > 1 && sendring_ready();
    /* Flushing may not add to this list (the flusher swapped it out), but hold it anyway. */
    Py_INCREF(dirty);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dirty); i++) {
        PyObject *box = PyList_GET_ITEM(dirty, i), *data = NULL;
        Py_INCREF(box);
        int rc = PyObject_TypeCheck(box, outbox_type) ? flush_fast(box, batch ? &data : NULL)
                                                       : 0;
        if (rc == 2) {
            PyObject *transport = SLOT(box, off_transport);
            Py_INCREF(transport);
            q[k] = (queued){box, transport, data};
            e[k] = (sendring_entry){(int)PyLong_AsLong(SLOT(box, off_fd)),
                                    PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), 0};
            if (++k == BATCH) {
                int failed = send_queued(q, e, k);
                k = 0;
                if (failed) goto fail;
            }
            continue; /* the entry holds the box */
        }
        if (rc < 0) rc = report_failure(box) < 0 ? -1 : 1;
        if (rc == 0) rc = flush_slow(box) < 0 ? -1 : 1;
        Py_DECREF(box);
        if (rc < 0) goto fail;
    }
    Py_DECREF(dirty);
    if (send_queued(q, e, k) < 0) return NULL;
    Py_RETURN_NONE;
fail:
    /* What is queued still goes out; the error stays the one to raise. */
    PyErr_Fetch(&type, &value, &tb);
    send_queued(q, e, k);
    PyErr_Restore(type, value, tb);
    Py_DECREF(dirty);
    return NULL;
}

/* use_ring(enabled): flush through the ring or not; "" when it is used, else why not. */
static PyObject *use_ring(PyObject *self, PyObject *enabled) {
    int on = PyObject_IsTrue(enabled);
    if (on < 0) return NULL;
    ring_wanted = 0;
    if (!on) {
        sendring_close();
        return PyUnicode_FromString("");
    }
    const char *why = "";
    int err = sendring_open(&why);
    if (err != 0) return PyUnicode_FromFormat("%s: %s", why, strerror(err));
    ring_wanted = 1;
    return PyUnicode_FromString("");
}


/* ---- A direct route's request, read whole from one chunk (http.py, _whole_direct) -------- */

/* RFC 9110 token characters: a header name. */
static int is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A visible character of a header value (obs-text included); blanks are allowed inside. */
static int is_vchar(unsigned char c) { return (c > 0x20 && c < 0x7f) || c >= 0x80; }

static int name_is(const char *name, Py_ssize_t len, const char *lower) {
    Py_ssize_t i;
    if ((Py_ssize_t)strlen(lower) != len)
        return 0;
    for (i = 0; i < len; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lower[i])
            return 0;
    }
    return 1;
}

/* whole_direct(data, routes, max_headers, max_head_bytes, max_body) -> None or
 * (route, headers, body_start, end): the request at the start of data if data holds it whole
 * and it is written in the plainest way (see http.py), else None (the parser's way). */
static PyObject *whole_direct(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *data, *routes, *path, *route, *headers = NULL, *result = NULL;
    const char *buf, *p, *end, *line;
    Py_ssize_t size, max_headers, max_head, max_body, head_bytes, count = 0, length = -1, i;
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "whole_direct(data, routes, max_headers, head, body)");
        return NULL;
    }
    data = args[0];
    routes = args[1];
    max_headers = PyLong_AsSsize_t(args[2]);
    max_head = PyLong_AsSsize_t(args[3]);
    max_body = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    buf = PyBytes_AS_STRING(data);
    size = PyBytes_GET_SIZE(data);
    end = buf + size;
    if (size < 16 || memcmp(buf, "POST /", 6) != 0)
        Py_RETURN_NONE;
    p = buf + 5;
    line = p;
    while (p < end && *p > 0x20 && *p < 0x7f)
        p++;
    if (end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    path = PyBytes_FromStringAndSize(line, p - line);
    if (path == NULL)
        return NULL;
    route = PyDict_GetItemWithError(routes, path); /* borrowed */
    Py_DECREF(path);
    if (route == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE; /* another path, or a query string */
    }
    head_bytes = p - line;
    p += 11;
    headers = PyList_New(0);
    if (headers == NULL)
        return NULL;
    for (;;) {
        const char *name = p, *value, *value_end;
        Py_ssize_t name_len;
        PyObject *lower, *raw, *pair;
        char *out;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            p += 2;
            break;
        }
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        if (p == name || p >= end || *p != ':')
            goto other;
        name_len = p - name;
        value = ++p;
        while (value < end && (*value == ' ' || *value == '\t'))
            value++;
        if (value >= end || !is_vchar((unsigned char)*value))
            goto other; /* an empty value, or not whole */
        value_end = value + 1;
        while (value_end < end && (is_vchar((unsigned char)*value_end) || *value_end == ' ' ||
                                   *value_end == '\t'))
            value_end++;
        if (end - value_end < 2 || value_end[0] != '\r' || value_end[1] != '\n')
            goto other;
        if (value_end[-1] == ' ' || value_end[-1] == '\t')
            goto other; /* trailing blanks: the parser decides what the value is */
        p = value_end + 2;
        count++;
        head_bytes += name_len + (value_end - value) + 4;
        if (count > max_headers || head_bytes > max_head)
            goto other; /* near the limits: the parser refuses (431) or not, exactly */
        {
            if (name_is(name, name_len, "content-length")) {
                const char *d;
                if (length >= 0 || value_end - value > 9)
                    goto other;
                length = 0;
                for (d = value; d < value_end; d++) {
                    if (*d < '0' || *d > '9')
                        goto other;
                    length = length * 10 + (*d - '0');
                }
            } else if (name_is(name, name_len, "transfer-encoding") ||
                       name_is(name, name_len, "expect") || name_is(name, name_len, "upgrade") ||
                       name_is(name, name_len, "proxy-connection")) {
                goto other;
            } else if (name_is(name, name_len, "connection")) {
                if (!name_is(value, value_end - value, "keep-alive"))
                    goto other;
            }
            lower = PyBytes_FromStringAndSize(NULL, name_len);
            if (lower == NULL)
                goto error;
            out = PyBytes_AS_STRING(lower);
            for (i = 0; i < name_len; i++) {
                char c = name[i];
                out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
            }
        }
        raw = PyBytes_FromStringAndSize(value, value_end - value);
        if (raw == NULL) {
            Py_DECREF(lower);
            goto error;
        }
        pair = PyTuple_Pack(2, lower, raw);
        Py_DECREF(lower);
        Py_DECREF(raw);
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            Py_XDECREF(pair);
            goto error;
        }
        Py_DECREF(pair);
    }
    if (length < 0 || length > max_body || end - p < length)
        goto other;
    result = Py_BuildValue("(OOnn)", route, headers, (Py_ssize_t)(p - buf),
                           (Py_ssize_t)(p - buf) + length);
    Py_DECREF(headers);
    return result;
other:
    Py_DECREF(headers);
    Py_RETURN_NONE;
error:
    Py_DECREF(headers);
    return NULL;
}

/* step(coro): run a direct route's coroutine until it first suspends or ends, as its send(None)
 * would, but without the StopIteration that send raises at the end: an exception object and a
 * traceback per request, 2 % of a publication's instructions. */
static PyObject *
step(PyObject *self, PyObject *coro)
{
    PyObject *value;
    PySendResult sent = PyIter_Send(coro, Py_None, &value);
    if (sent == PYGEN_ERROR)
        return NULL;
    PyObject *result = PyTuple_Pack(2, sent == PYGEN_RETURN ? Py_True : Py_False, value);
    Py_DECREF(value);
    return result;
}

static PyMethodDef methods[] = {
    {"bind", bind_types, METH_VARARGS,
     "bind(Outbox, Flusher, flush_one, push_many, report): the classes whose slots the loops "
     "use, and the Python code they fall back on."},
    {"push_many", (PyCFunction)(void (*)(void))push_many, METH_FASTCALL,
     "push_many(boxes, frame): append one shared frame to each connection's queue, within "
     "its send limit."},
    {"flush_boxes", flush_boxes, METH_O,
     "flush_boxes(dirty): write each dirty connection's queue."},
    {"use_ring", use_ring, METH_O,
     "use_ring(enabled): send the flush's frames through io_uring, many sockets' sends in one "
     "system call, or one send each; returns '' when the ring is used, else why not."},
    {"whole_direct", (PyCFunction)(void (*)(void))whole_direct, METH_FASTCALL,
     "whole_direct(data, routes, max_headers, max_head_bytes, max_body): a direct route's "
     "request read whole from data, as (route, headers, body_start, end), or None."},
    {"step", step, METH_O,
     "step(coro): run coro until it suspends or ends: (False, what it yielded) or "
     "(True, what it returned)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "clarion.server._fastloop",
    "The fan-out's append loop and the per-iteration flush, compiled (see fastws.py).", -1,
    methods,
};

/* What this source offers, as fastws.FASTLOOP_VERSION expects it: bumped with every change to
 * the functions or their arguments, so that a module built from an older source (an editable
 * install not rebuilt) is left unused, and said so, rather than half used. */
#define FASTLOOP_VERSION 5

PyMODINIT_FUNC PyInit__fastloop(void) {
    PyObject *m;
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    zero = PyLong_FromLong(0);
    str_is_closing = PyUnicode_InternFromString("is_closing");
    str_write = PyUnicode_InternFromString("write");
    str_buffer_size = PyUnicode_InternFromString("get_write_buffer_size");
    str_over_limit = PyUnicode_InternFromString("_over_limit");
    str_schedule = PyUnicode_InternFromString("_schedule");
    str_join = PyUnicode_InternFromString("join");
    str_admit = PyUnicode_InternFromString("_admit");
    if (!empty_bytes || !zero || !str_is_closing || !str_write || !str_buffer_size ||
        !str_over_limit || !str_schedule || !str_join || !str_admit)
        return NULL;
    m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", FASTLOOP_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

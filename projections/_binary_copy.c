/* PostgreSQL's binary COPY format for the rows of a replay (projections/binary_copy.py).
 *
 * encode_into(buffer, rows, kinds) -> int: writes a whole COPY ... FROM STDIN (FORMAT binary)
 * stream (header, one tuple per row, trailer) for `rows`, a list of tuples whose column i is of
 * kind kinds[i], at the start of `buffer` (a bytearray, grown when too small, never shrunk), and
 * returns its length. Reusing one buffer keeps its pages: a new 2.4 MB object for every chunk of
 * rm_bookings rows cost as much again in page faults as the encoding itself. The kinds:
 *
 *   't'  text, from str            'j'  jsonb, from str (its JSON text)
 *   'a'  text[], from list/tuple   'h'  int2, 'i' int4, 'l' int8, from int
 *   'm'  timestamptz, from an aware datetime, or from an int: PostgreSQL's microseconds since
 *        2000-01-01 UTC (what projections.readmodels.pg_micros makes of the datetime)
 *   'd'  date, from datetime.date  'b'  bool, from bool
 *
 * None is NULL in every column. A value of another type (a bool in an integer column too, which
 * asyncpg would take as 0 or 1), an int out of its column's range or a str that is not valid
 * Unicode raises (TypeError, OverflowError, UnicodeEncodeError), naming its row and column, and
 * the stream is not used. Otherwise it writes the bytes asyncpg's copy_records_to_table sends
 * for the same rows, at a tenth of its cost (asyncpg encodes each value through a generic codec,
 * a text[] through its generic array encoder). PostgreSQL checks the rest (UTF-8, NUL bytes) as
 * for any COPY.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define TEXT_OID 25

typedef struct {
    PyObject *buffer; /* the bytearray written to, grown as needed */
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Out;

static int out_reserve(Out *o, Py_ssize_t more) {
    if (o->len + more <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap * 2;
    if (cap < o->len + more)
        cap = o->len + more;
    if (PyByteArray_Resize(o->buffer, cap) < 0)
        return -1;
    o->data = PyByteArray_AS_STRING(o->buffer);
    o->cap = cap;
    return 0;
}

static inline void put16(Out *o, int16_t v) {
    uint16_t u = (uint16_t)v;
    o->data[o->len++] = (char)(u >> 8);
    o->data[o->len++] = (char)u;
}

static inline void put32(Out *o, int32_t v) {
    uint32_t u = (uint32_t)v;
    char *p = o->data + o->len;
    p[0] = (char)(u >> 24);
    p[1] = (char)(u >> 16);
    p[2] = (char)(u >> 8);
    p[3] = (char)u;
    o->len += 4;
}

static inline void put64(Out *o, int64_t v) {
    put32(o, (int32_t)((uint64_t)v >> 32));
    put32(o, (int32_t)((uint64_t)v & 0xffffffffu));
}

static int wrong_type(Py_ssize_t row, Py_ssize_t col, const char *want, PyObject *value) {
    PyErr_Format(PyExc_TypeError, "row %zd, column %zd: expected %s, got %.100s", row, col, want,
                 Py_TYPE(value)->tp_name);
    return -1;
}

static int put_str(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col, int jsonb) {
    if (!PyUnicode_Check(value))
        return wrong_type(row, col, "str", value);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(value, &n);
    if (s == NULL)
        return -1;
    if (n + jsonb > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "row %zd, column %zd: a value over 2 GB", row, col);
        return -1;
    }
    if (out_reserve(o, 4 + jsonb + n) < 0)
        return -1;
    put32(o, (int32_t)(n + jsonb));
    if (jsonb)
        o->data[o->len++] = 1; /* jsonb's binary format version */
    memcpy(o->data + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

static int put_text_array(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col) {
    if (!PyList_Check(value) && !PyTuple_Check(value))
        return wrong_type(row, col, "list or tuple of str", value);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(value);
    PyObject **items = PySequence_Fast_ITEMS(value);
    if (count > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "row %zd, column %zd: too many elements", row, col);
        return -1;
    }
    Py_ssize_t start = o->len;
    if (out_reserve(o, 4 + 20) < 0)
        return -1;
    o->len += 4; /* the value's length, filled in below */
    if (count == 0) {
        put32(o, 0);        /* dimensions: an empty array has none */
        put32(o, 0);        /* no NULLs */
        put32(o, TEXT_OID); /* element type */
    } else {
        int has_null = 0;
        for (Py_ssize_t k = 0; k < count; k++)
            if (items[k] == Py_None)
                has_null = 1;
        put32(o, 1);
        put32(o, has_null);
        put32(o, TEXT_OID);
        put32(o, (int32_t)count); /* the dimension's length */
        put32(o, 1);              /* and its lower bound */
        for (Py_ssize_t k = 0; k < count; k++) {
            if (items[k] == Py_None) {
                if (out_reserve(o, 4) < 0)
                    return -1;
                put32(o, -1);
            } else if (put_str(o, items[k], row, col, 0) < 0) {
                return -1;
            }
        }
    }
    Py_ssize_t size = o->len - start - 4;
    if (size > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "row %zd, column %zd: a value over 2 GB", row, col);
        return -1;
    }
    Py_ssize_t end = o->len;
    o->len = start;
    put32(o, (int32_t)size);
    o->len = end;
    return 0;
}

static int put_int(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col, char kind) {
    if (!PyLong_Check(value) || PyBool_Check(value))
        return wrong_type(row, col, "int", value);
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    long long lo = kind == 'h' ? INT16_MIN : kind == 'i' ? INT32_MIN : INT64_MIN;
    long long hi = kind == 'h' ? INT16_MAX : kind == 'i' ? INT32_MAX : INT64_MAX;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_OverflowError, "row %zd, column %zd: %R is out of range for %s", row,
                     col, value, kind == 'h' ? "int2" : kind == 'i' ? "int4" : "int8");
        return -1;
    }
    if (out_reserve(o, 12) < 0)
        return -1;
    if (kind == 'h') {
        put32(o, 2);
        put16(o, (int16_t)v);
    } else if (kind == 'i') {
        put32(o, 4);
        put32(o, (int32_t)v);
    } else {
        put32(o, 8);
        put64(o, (int64_t)v);
    }
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's
 * days_from_civil), exact for every year a datetime.date holds. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

#define PG_EPOCH_DAYS 10957 /* 2000-01-01 counted from 1970-01-01 */

static int put_date(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col) {
    if (!PyDate_Check(value) || PyDateTime_Check(value))
        return wrong_type(row, col, "datetime.date", value);
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                   PyDateTime_GET_DAY(value)) -
                   PG_EPOCH_DAYS;
    if (out_reserve(o, 8) < 0)
        return -1;
    put32(o, 4);
    put32(o, (int32_t)days);
    return 0;
}

/* An aware datetime as PostgreSQL's microseconds since 2000-01-01 UTC, as pg_micros computes
 * it (no infinities: datetime.max is a time like any other). A naive one raises TypeError. */
static int put_datetime(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col) {
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(value);
    int64_t offset = 0;
    if (tz == Py_None) {
        PyErr_Format(PyExc_TypeError, "row %zd, column %zd: a naive datetime for timestamptz",
                     row, col);
        return -1;
    }
    if (tz != PyDateTime_TimeZone_UTC) {
        PyObject *delta = PyObject_CallMethod(tz, "utcoffset", "O", value);
        if (delta == NULL)
            return -1;
        if (!PyDelta_Check(delta)) {
            Py_DECREF(delta);
            PyErr_Format(PyExc_TypeError, "row %zd, column %zd: a datetime without a UTC offset",
                         row, col);
            return -1;
        }
        offset = ((int64_t)PyDateTime_DELTA_GET_DAYS(delta) * 86400 +
                  PyDateTime_DELTA_GET_SECONDS(delta)) *
                     1000000 +
                 PyDateTime_DELTA_GET_MICROSECONDS(delta);
        Py_DECREF(delta);
        /* utcoffset ran Python code: the buffer must still be ours as it was. */
        if (PyByteArray_AS_STRING(o->buffer) != o->data ||
            PyByteArray_GET_SIZE(o->buffer) != o->cap) {
            PyErr_SetString(PyExc_RuntimeError, "the buffer changed while encoding");
            return -1;
        }
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                   PyDateTime_GET_DAY(value)) -
                   PG_EPOCH_DAYS;
    int64_t micros = (days * 86400 + PyDateTime_DATE_GET_HOUR(value) * 3600 +
                      PyDateTime_DATE_GET_MINUTE(value) * 60 + PyDateTime_DATE_GET_SECOND(value)) *
                         1000000 +
                     PyDateTime_DATE_GET_MICROSECOND(value) - offset;
    if (out_reserve(o, 12) < 0)
        return -1;
    put32(o, 8);
    put64(o, micros);
    return 0;
}

static int put_bool(Out *o, PyObject *value, Py_ssize_t row, Py_ssize_t col) {
    if (!PyBool_Check(value))
        return wrong_type(row, col, "bool", value);
    if (out_reserve(o, 5) < 0)
        return -1;
    put32(o, 1);
    o->data[o->len++] = value == Py_True;
    return 0;
}

static PyObject *encode_into(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *buffer, *rows;
    const char *kinds;
    Py_ssize_t ncols;
    if (!PyArg_ParseTuple(args, "O!O!y#:encode_into", &PyByteArray_Type, &buffer, &PyList_Type,
                          &rows, &kinds, &ncols))
        return NULL;
    if (ncols > INT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many columns");
        return NULL;
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        if (kinds[c] == '\0' || strchr("tjahilmdb", kinds[c]) == NULL) {
            PyErr_Format(PyExc_ValueError, "unknown column kind %c", (int)kinds[c]);
            return NULL;
        }
    }
    Py_ssize_t nrows = PyList_GET_SIZE(rows);
    Out o;
    o.buffer = buffer;
    o.data = PyByteArray_AS_STRING(buffer);
    o.cap = PyByteArray_GET_SIZE(buffer);
    o.len = 0;
    if (out_reserve(&o, 21 + nrows * (2 + ncols * 16)) < 0)
        return NULL;
    memcpy(o.data, "PGCOPY\n\377\r\n\0", 11);
    o.len = 11;
    put32(&o, 0); /* flags */
    put32(&o, 0); /* header extension */
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *row = PyList_GET_ITEM(rows, r);
        if (!PyTuple_Check(row)) {
            wrong_type(r, -1, "a tuple", row);
            goto fail;
        }
        if (PyTuple_GET_SIZE(row) != ncols) {
            PyErr_Format(PyExc_ValueError, "row %zd has %zd values, not %zd", r,
                         PyTuple_GET_SIZE(row), ncols);
            goto fail;
        }
        if (out_reserve(&o, 2) < 0)
            goto fail;
        put16(&o, (int16_t)ncols);
        for (Py_ssize_t c = 0; c < ncols; c++) {
            PyObject *v = PyTuple_GET_ITEM(row, c);
            int failed;
            if (v == Py_None) {
                if (out_reserve(&o, 4) < 0)
                    goto fail;
                put32(&o, -1);
                continue;
            }
            switch (kinds[c]) {
            case 't':
                failed = put_str(&o, v, r, c, 0);
                break;
            case 'j':
                failed = put_str(&o, v, r, c, 1);
                break;
            case 'a':
                failed = put_text_array(&o, v, r, c);
                break;
            case 'm':
                if (PyDateTime_Check(v))
                    failed = put_datetime(&o, v, r, c);
                else if (PyLong_Check(v) && !PyBool_Check(v))
                    failed = put_int(&o, v, r, c, 'l');
                else
                    failed = wrong_type(r, c, "an aware datetime or int", v);
                break;
            case 'h':
            case 'i':
            case 'l':
                failed = put_int(&o, v, r, c, kinds[c]);
                break;
            case 'd':
                failed = put_date(&o, v, r, c);
                break;
            default: /* 'b' */
                failed = put_bool(&o, v, r, c);
                break;
            }
            if (failed)
                goto fail;
        }
    }
    if (out_reserve(&o, 2) < 0)
        goto fail;
    put16(&o, -1); /* the trailer */
    return PyLong_FromSsize_t(o.len);
fail:
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_into", encode_into, METH_VARARGS,
     "encode_into(buffer, rows, kinds) -> int: rows (a list of tuples) as a binary COPY stream "
     "at the start of buffer (a bytearray, grown as needed); returns its length."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "projections._binary_copy",
    "PostgreSQL's binary COPY format for a replay's rows (see projections/binary_copy.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__binary_copy(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModule_Create(&module);
}

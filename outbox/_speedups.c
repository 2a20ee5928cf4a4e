/* C versions of the relay's per-row record functions (outbox.record).
 *
 * The relay's hot loop is one Python thread; at 200 B payloads compacting the payload's
 * JSON took a fifth to a third of it (docs/benchmarks.md). These
 * functions return exactly what the Python versions in outbox/record.py return
 * (tests/relay/test_speedups.py checks them against each other); outbox.record uses them
 * when this module is built and OUTBOX_SPEEDUPS is not "0".
 *
 *   compact_json(text) -> str             whitespace between JSON tokens removed
 *   compact_json_many(texts) -> list[str] the same for each text of a list
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

/* Compact `n` characters of one kind from `in` into `out` (room for `n`); the new length.
 * Outside strings every whitespace character (str.split()'s) is dropped; a string is
 * copied whole, through its closing quote, a backslash together with the character after
 * it (so an escaped quote does not close it). Unterminated: copied to the end. */
#define COMPACT_LOOP(TYPE)                                                          \
    static Py_ssize_t compact_##TYPE(const TYPE *in, Py_ssize_t n, TYPE *out)      \
    {                                                                               \
        Py_ssize_t o = 0, i = 0;                                                    \
        while (i < n) {                                                             \
            TYPE c = in[i];                                                         \
            if (c == '"') {                                                         \
                Py_ssize_t start = i++;                                             \
                while (i < n) {                                                     \
                    c = in[i];                                                      \
                    if (c == '"') {                                                 \
                        i++;                                                        \
                        break;                                                      \
                    }                                                               \
                    i += c == '\\' ? 2 : 1;                                         \
                }                                                                   \
                if (i > n)                                                          \
                    i = n; /* a backslash as the last character */                  \
                memcpy(out + o, in + start, (size_t)(i - start) * sizeof(TYPE));   \
                o += i - start;                                                     \
            } else {                                                                \
                if (!Py_UNICODE_ISSPACE(c))                                         \
                    out[o++] = c;                                                   \
                i++;                                                                \
            }                                                                       \
        }                                                                           \
        return o;                                                                   \
    }

COMPACT_LOOP(Py_UCS2)
COMPACT_LOOP(Py_UCS4)

/* The same for one-byte strings (ASCII and Latin-1: nearly every payload), a string's
 * content found with memchr instead of one character at a time: at 10 KB payloads this
 * loop was a fifth of the relay's loop thread (docs/benchmarks.md). Each byte is looked
 * at a bounded number of times: the closing quote found is kept until an escape passes
 * it, and each backslash search stops at the first one. */
static Py_ssize_t compact_Py_UCS1(const Py_UCS1 *in, Py_ssize_t n, Py_UCS1 *out)
{
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        Py_UCS1 c = in[i];
        if (c != '"') {
            if (!Py_UNICODE_ISSPACE(c))
                out[o++] = c;
            i++;
            continue;
        }
        Py_ssize_t start = i++;
        const Py_UCS1 *q = memchr(in + i, '"', (size_t)(n - i));
        Py_ssize_t quote = q != NULL ? q - in : n; /* n: unterminated */
        for (;;) {
            const Py_UCS1 *b = memchr(in + i, '\\', (size_t)(quote - i));
            if (b == NULL) {
                i = quote < n ? quote + 1 : n; /* through the closing quote */
                break;
            }
            i = (b - in) + 2; /* the backslash and the character it escapes */
            if (i >= n) {
                i = n; /* a backslash as the last character, or before it */
                break;
            }
            if (i > quote) { /* the quote found was escaped: the next one */
                q = memchr(in + i, '"', (size_t)(n - i));
                quote = q != NULL ? q - in : n;
            }
        }
        memcpy(out + o, in + start, (size_t)(i - start));
        o += i - start;
    }
    return o;
}

/* compact_<kind> of a str's characters into `buf` (room for its length in its kind). */
static Py_ssize_t compact_into(PyObject *text, void *buf)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        return compact_Py_UCS1(PyUnicode_1BYTE_DATA(text), n, buf);
    case PyUnicode_2BYTE_KIND:
        return compact_Py_UCS2(PyUnicode_2BYTE_DATA(text), n, buf);
    default:
        return compact_Py_UCS4(PyUnicode_4BYTE_DATA(text), n, buf);
    }
}

/* A new reference to the compact form of `text`, or NULL with an exception set. */
static PyObject *compact(PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "compact_json: str expected, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text)) {
        /* Dropping characters keeps ASCII ASCII: write straight into the result. */
        PyObject *result = PyUnicode_New(n, 127);
        if (result == NULL)
            return NULL;
        Py_ssize_t out = compact_into(text, PyUnicode_1BYTE_DATA(result));
        if (out != n && PyUnicode_Resize(&result, out) < 0)
            return NULL;
        return result;
    }
    /* Other kinds: dropped characters may lower the widest one, and a str must be stored
     * in its narrowest kind, which PyUnicode_FromKindAndData works out. */
    int kind = PyUnicode_KIND(text);
    void *buf = PyMem_Malloc(n > 0 ? (size_t)n * (size_t)kind : 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    Py_ssize_t out = compact_into(text, buf);
    PyObject *result = PyUnicode_FromKindAndData(kind, buf, out);
    PyMem_Free(buf);
    return result;
}

static PyObject *compact_json(PyObject *module, PyObject *text)
{
    (void)module;
    return compact(text);
}

static PyObject *compact_json_many(PyObject *module, PyObject *texts)
{
    (void)module;
    PyObject *seq = PySequence_Fast(texts, "compact_json_many: a sequence of str expected");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = PyList_New(n);
    if (result == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *one = compact(items[i]);
        if (one == NULL) {
            Py_DECREF(result);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(result, i, one);
    }
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"compact_json", compact_json, METH_O,
     "JSON text without whitespace between tokens; strings untouched."},
    {"compact_json_many", compact_json_many, METH_O,
     "compact_json of each text of a sequence, as a list."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "outbox._speedups",
    "C versions of outbox.record's per-row functions.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}

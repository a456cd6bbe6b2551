/* fastops/check.h: the one check of a buffer argument, shared by fastops.GPT, the per-op rung and
   InferenceGPT: C-contiguous float64 (or float32) values, writable if the callee writes, and exactly the
   length the model's layout needs. Errors are Python exceptions that name the argument. */

enum { FLOATS_WRITABLE = 1, FLOATS_F64_ONLY = 2 };

/* Acquires `obj` as a buffer of float64 values -- or float32 unless FLOATS_F64_ONLY -- holding exactly
   n of them (any number if n < 0). *is_f32 tells which (may be NULL). Returns 0, or -1 with an
   exception set and nothing acquired. */
static int float_buffer(PyObject *obj, Py_buffer *view, const char *name, int flags, Py_ssize_t n, int *is_f32)
{
    const int writable = flags & FLOATS_WRITABLE, f64_only = flags & FLOATS_F64_ONLY;
    const char *kinds = f64_only ? "float64 ('d')" : "float64 ('d') or float32 ('f')";
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a %scontiguous %s, not %.100s", name, writable ? "writable " : "",
                     f64_only ? "float64 buffer (array('d'))"
                              : "buffer of float64 or float32 (array('d'), array('f') or a numpy array)",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
    const int f64 = !strcmp(f, "d") && view->itemsize == 8, f32 = !strcmp(f, "f") && view->itemsize == 4;
    if (!f64 && !(f32 && !f64_only)) {
        PyErr_Format(PyExc_TypeError, "%s must hold %s values, not format '%s'", name, kinds,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (n >= 0 && view->len / view->itemsize != n) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd values; this model's flat layout needs %zd", name,
                     view->len / view->itemsize, n);
        PyBuffer_Release(view);
        return -1;
    }
    if (is_f32) *is_f32 = f32;
    return 0;
}

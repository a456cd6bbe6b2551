/* fastops/int8.h: fastops.InferenceGPT, the Python type, on the kernels of fastops/int8_kernels.h (the
   packing and the kernels are described there). A kernel harness without Python may include this file
   with FASTOPS_INT8_KERNELS_ONLY (tests/test_fast_int8.py builds one for AArch64 under qemu). */
#include "int8_kernels.h"

#ifndef FASTOPS_INT8_KERNELS_ONLY

typedef struct {
    PyObject_HEAD
    Shape s;
    int int8;
    const char *isa;                 /* the kernel's name */
    MatvecFn matvec;
    float *wte, *wpe;                /* float32 embeddings */
    PackedMatrix *mats;              /* per layer: qkv, wo, fc1, fc2; then lm_head */
    float *cache;                    /* per layer: keys (C x block_size, transposed), values (block_size x C) */
    float *work;                     /* activations of one token */
    QuantInput xq;                   /* the input of a matrix in int8, in xq_bytes */
    uint8_t *xq_bytes;
    int *tokens;                     /* the tokens whose keys and values are in the cache */
    int *ids;                        /* the tokens of the current call */
    int n_cached;
} InferObject;

enum { MAT_QKV, MAT_WO, MAT_FC1, MAT_FC2, MATS_PER_LAYER };

static void infer_rmsnorm(const float *x, float *y, int n)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    const float inv = 1.0f / sqrtf(ss / n + (float)RMS_EPS);
    for (int j = 0; j < n; j++) y[j] = x[j] * inv;
}

/* max(v, 0) by the sign bit, without a branch on a coin toss (GCC will not if-convert a float compare) */
static inline float infer_relu(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bits &= ~(uint32_t)((int32_t)bits >> 31);
    memcpy(&v, &bits, 4);
    return v;
}

/* Runs token `tok` at position `pos` (keys and values of 0 .. pos-1 already cached); logits into out.
   This part is plain C, compiled once for every kernel. Keys are cached transposed (feature-major,
   keys[i][j] for feature i of position j), so that the scores of all positions are one loop over
   contiguous positions that vectorises, each still summed over d in order. */
static void infer_token(InferObject *m, int tok, int pos, float *logits)
{
    const Shape *s = &m->s;
    const int C = s->C, F = 4 * C, H = s->n_head, D = C / H, T = s->block;
    const float scale = 1.0f / sqrtf((float)D);
    float *x = m->work, *h = x + C, *qkv = h + C, *o = qkv + 3 * C, *u = o + C;
    float *restrict att = u + F;
    for (int j = 0; j < C; j++) x[j] = m->wte[(size_t)tok * C + j] + m->wpe[(size_t)pos * C + j];
    infer_rmsnorm(x, x, C);
    for (int l = 0; l < s->n_layer; l++) {
        const PackedMatrix *W = m->mats + (size_t)l * MATS_PER_LAYER;
        float *keys = m->cache + (size_t)l * 2 * T * C, *values = keys + (size_t)T * C;
        infer_rmsnorm(x, h, C);
        m->matvec(&W[MAT_QKV], h, qkv, &m->xq);
        for (int i = 0; i < C; i++) keys[(size_t)i * T + pos] = qkv[C + i];
        memcpy(values + (size_t)pos * C, qkv + 2 * C, (size_t)C * sizeof(float));
        for (int hd = 0; hd < H; hd++) {
            float top = -INFINITY, total = 0.0f;
            for (int j = 0; j <= pos; j++) att[j] = 0.0f;
            for (int d = 0; d < D; d++) {
                const float qd = qkv[hd * D + d];
                const float *restrict kd = keys + (size_t)(hd * D + d) * T;
                for (int j = 0; j <= pos; j++) att[j] += qd * kd[j];
            }
            for (int j = 0; j <= pos; j++) {
                att[j] *= scale;
                top = att[j] > top ? att[j] : top;
            }
            for (int j = 0; j <= pos; j++) { att[j] = expf(att[j] - top); total += att[j]; }
            for (int j = 0; j <= pos; j++) att[j] /= total;
            float *restrict oh = o + hd * D;
            for (int d = 0; d < D; d++) oh[d] = 0.0f;
            for (int j = 0; j <= pos; j++) {
                const float a = att[j];
                const float *restrict vj = values + (size_t)j * C + hd * D;
                for (int d = 0; d < D; d++) oh[d] += a * vj[d];
            }
        }
        m->matvec(&W[MAT_WO], o, h, &m->xq);
        for (int j = 0; j < C; j++) x[j] += h[j];
        infer_rmsnorm(x, h, C);
        m->matvec(&W[MAT_FC1], h, u, &m->xq);
        if (s->relu2)
            for (int i = 0; i < F; i++) { const float v = infer_relu(u[i]); u[i] = v * v; }
        else
            for (int i = 0; i < F; i++) u[i] = infer_relu(u[i]);
        m->matvec(&W[MAT_FC2], u, h, &m->xq);
        for (int j = 0; j < C; j++) x[j] += h[j];
    }
    m->matvec(&m->mats[(size_t)s->n_layer * MATS_PER_LAYER], x, logits, &m->xq);
}

static PyTypeObject InferType;

/* The names isa= takes for int8 (or float32) on this CPU and build, best first: each kernel's isa. */
static PyObject *infer_available_isas(int int8)
{
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < N_INFER_ISAS; i++)
        if (infer_isa_runs(&INFER_ISAS[i], int8)) {
            PyObject *name = PyUnicode_FromString(INFER_ISAS[i].isa);
            if (!name || PyList_Append(list, name) < 0) Py_CLEAR(list);
            Py_XDECREF(name);
        }
    return list;
}

static PyObject *Infer_available_isas(PyObject *unused, PyObject *args, PyObject *kwds)
{
    (void)unused;
    static char *kwlist[] = {"int8", NULL};
    int int8 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:available_isas", kwlist, &int8)) return NULL;
    return infer_available_isas(int8);
}

static void Infer_dealloc(InferObject *m)
{
    if (m->mats)
        for (int i = 0; i < m->s.n_layer * MATS_PER_LAYER + 1; i++) free_matrix(&m->mats[i]);
    free(m->mats);
    free(m->wte);
    free(m->wpe);
    free(m->cache);
    free(m->work);
    free(m->xq_bytes);
    free(m->tokens);
    free(m->ids);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* ', '.join of the names isa= takes for this format on this CPU, best first (a str). */
static PyObject *infer_isa_names(int int8)
{
    PyObject *list = infer_available_isas(int8), *sep = list ? PyUnicode_FromString(", ") : NULL;
    PyObject *joined = sep ? PyUnicode_Join(sep, list) : NULL;
    Py_XDECREF(sep);
    Py_XDECREF(list);
    return joined;
}

static PyObject *Infer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"params", "vocab_size", "n_embd", "n_layer", "n_head", "block_size", "mlp_act", "int8",
                             "isa", NULL};
    PyObject *po;
    int vocab, C, n_layer, n_head, block, int8 = 1;
    const char *mlp_act = "relu2", *isa = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oiiiii|spz:InferenceGPT", kwlist, &po, &vocab, &C, &n_layer, &n_head,
                                     &block, &mlp_act, &int8, &isa))
        return NULL;
    const int dims[] = {vocab, C, n_layer, n_head, block};
    for (int i = 0; i < 5; i++)
        if (dims[i] < (i == 0 ? 2 : 1) || dims[i] > MAX_DIM) {
            PyErr_Format(PyExc_ValueError, "%s must be in [%d, %d], got %d", kwlist[i + 1], i == 0 ? 2 : 1, MAX_DIM,
                         dims[i]);
            return NULL;
        }
    if (C % n_head || (strcmp(mlp_act, "relu2") && strcmp(mlp_act, "relu"))) {
        PyErr_SetString(PyExc_ValueError, "n_head must divide n_embd and mlp_act must be 'relu2' or 'relu'");
        return NULL;
    }
    if (int8 && 4 * C > INT8_MAX_COLS) {
        PyErr_Format(PyExc_ValueError, "n_embd must be at most %d for int8 (4 n_embd columns in int32 sums)",
                     INT8_MAX_COLS / 4);
        return NULL;
    }
    const InferIsa *kernel = find_infer_isa(isa, int8);
    if (!kernel) {
        PyObject *names = infer_isa_names(int8);
        if (names) {
            PyErr_Format(PyExc_ValueError, "isa '%s' is not available for %s on this CPU or build (available: %U; "
                         "or None for the best)", isa, int8 ? "int8" : "float32", names);
            Py_DECREF(names);
        }
        return NULL;
    }
    InferObject *m = (InferObject *)type->tp_alloc(type, 0);
    if (!m) return NULL;
    shape_init(&m->s, vocab, C, n_layer, n_head, block, !strcmp(mlp_act, "relu2"));
    m->int8 = int8;
    m->matvec = int8 ? kernel->i8 : kernel->f32;
    m->isa = int8 ? kernel->i8_name : kernel->isa;
    Py_buffer view;
    int is_f32;
    if (float_buffer(po, &view, "params", 0, m->s.n_params, &is_f32) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    const int n_mats = n_layer * MATS_PER_LAYER + 1, F = 4 * C;
    m->mats = calloc((size_t)n_mats, sizeof(PackedMatrix));
    m->wte = malloc((size_t)vocab * C * sizeof(float));
    m->wpe = malloc((size_t)block * C * sizeof(float));
    m->cache = calloc((size_t)n_layer * 2 * block * C, sizeof(float));
    m->work = calloc((size_t)(6 * C + F + block + vocab), sizeof(float));
    m->xq_bytes = calloc(3 * ((size_t)F + 4), 1);   /* x_q, |x_q|, x_q + 128 of up to F + 3 columns */
    m->xq = (QuantInput){(int8_t *)m->xq_bytes, m->xq_bytes + F + 4, m->xq_bytes + 2 * ((size_t)F + 4)};
    m->tokens = calloc((size_t)block, sizeof(int));
    m->ids = calloc((size_t)block, sizeof(int));
    if (!m->mats || !m->wte || !m->wpe || !m->cache || !m->work || !m->xq_bytes || !m->tokens || !m->ids) goto nomem;
    for (ptrdiff_t i = 0; i < (ptrdiff_t)vocab * C; i++)
        m->wte[i] = is_f32 ? ((float *)view.buf)[m->s.wte + i] : (float)((double *)view.buf)[m->s.wte + i];
    for (ptrdiff_t i = 0; i < (ptrdiff_t)block * C; i++)
        m->wpe[i] = is_f32 ? ((float *)view.buf)[m->s.wpe + i] : (float)((double *)view.buf)[m->s.wpe + i];
    for (int l = 0; l < n_layer; l++) {
        const ptrdiff_t base = layer_offset(&m->s, l);
        PackedMatrix *W = m->mats + (size_t)l * MATS_PER_LAYER;
        if (pack_matrix(&W[MAT_QKV], view.buf, is_f32, base + OFF_WQKV(&m->s), 3 * C, C, int8) < 0 ||
            pack_matrix(&W[MAT_WO], view.buf, is_f32, base + OFF_WO(&m->s), C, C, int8) < 0 ||
            pack_matrix(&W[MAT_FC1], view.buf, is_f32, base + OFF_FC1(&m->s), F, C, int8) < 0 ||
            pack_matrix(&W[MAT_FC2], view.buf, is_f32, base + OFF_FC2(&m->s), C, F, int8) < 0)
            goto nomem;
    }
    if (pack_matrix(&m->mats[n_mats - 1], view.buf, is_f32, m->s.lm_head, vocab, C, int8) < 0) goto nomem;
    PyBuffer_Release(&view);
    return (PyObject *)m;
nomem:
    PyErr_NoMemory();
    PyBuffer_Release(&view);
    Py_DECREF(m);
    return NULL;
}

/* Logits after `tokens`; reuses the cached keys and values of the longest common prefix with the last
   call, so sampling (each call one token longer) costs one token per call. */
static int infer_prefix(InferObject *m, PyObject *tokens, float *logits, const char *what)
{
    PyObject *seq = PySequence_Fast(tokens, "tokens must be a list of token ids");
    if (!seq) return -1;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int rc = -1;
    if (n < 1 || n > m->s.block) {
        PyErr_Format(PyExc_ValueError, "%s needs 1 to block_size = %d token ids, got %zd", what, m->s.block, n);
        goto done;
    }
    int *ids = m->ids;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long id = PyLong_Check(item) ? PyLong_AsLong(item) : -2;
        if (id == -1 && PyErr_Occurred()) goto done;
        if (id == -2 && !PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "token ids must be integers, not %.100s", Py_TYPE(item)->tp_name);
            goto done;
        }
        if (id < 0 || id >= m->s.vocab) {
            PyErr_Format(PyExc_ValueError, "token %zd: id %ld is out of range for vocab_size %d", i, id, m->s.vocab);
            goto done;
        }
        ids[i] = (int)id;
    }
    int start = 0;
    while (start < m->n_cached && start < n - 1 && m->tokens[start] == ids[start]) start++;
    for (int i = start; i < n; i++) {
        infer_token(m, ids[i], i, logits);
        m->tokens[i] = ids[i];
    }
    m->n_cached = (int)n;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

static PyObject *Infer_logits(InferObject *m, PyObject *tokens)
{
    float *logits = m->work + 6 * m->s.C + 4 * m->s.C + m->s.block;
    if (infer_prefix(m, tokens, logits, "logits") < 0) return NULL;
    PyObject *out = PyList_New(m->s.vocab);
    for (int v = 0; out && v < m->s.vocab; v++) {
        PyObject *f = PyFloat_FromDouble(logits[v]);
        if (!f) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, v, f);
    }
    return out;
}

static PyObject *Infer_eval_loss(InferObject *m, PyObject *docs)
{
    PyObject *seq = PySequence_Fast(docs, "docs must be a list of documents (lists of token ids)");
    if (!seq) return NULL;
    const Py_ssize_t n_docs = PySequence_Fast_GET_SIZE(seq);
    float *logits = m->work + 6 * m->s.C + 4 * m->s.C + m->s.block;
    double total = 0.0;
    if (n_docs == 0) {
        PyErr_SetString(PyExc_ValueError, "eval_loss needs at least one document");
        goto fail;
    }
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        PyObject *doc = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, d), "each document must be a list of token ids");
        if (!doc) goto fail;
        const Py_ssize_t len = PySequence_Fast_GET_SIZE(doc);
        if (len < 2 || len > m->s.block + 1) {
            PyErr_Format(PyExc_ValueError, "document %zd has %zd token ids; each needs 2 to block_size + 1 = %d", d, len,
                         m->s.block + 1);
            Py_DECREF(doc);
            goto fail;
        }
        double doc_loss = 0.0;
        for (Py_ssize_t p = 0; p + 1 < len; p++) {
            PyObject *prefix = PyList_GetSlice(doc, 0, p + 1);   /* doc is a list or tuple from PySequence_Fast */
            if (!prefix) prefix = PySequence_GetSlice(doc, 0, p + 1);
            if (!prefix) { Py_DECREF(doc); goto fail; }
            const int rc = infer_prefix(m, prefix, logits, "a document");
            Py_DECREF(prefix);
            PyObject *next = PySequence_Fast_GET_ITEM(doc, p + 1);
            const long target = rc < 0 ? -1 : PyLong_AsLong(next);
            if (rc < 0 || target < 0 || target >= m->s.vocab) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "document %zd: id %ld is out of range for vocab_size %d", d, target,
                                 m->s.vocab);
                Py_DECREF(doc);
                goto fail;
            }
            float top = logits[0];
            double sum = 0.0;
            for (int v = 1; v < m->s.vocab; v++) top = logits[v] > top ? logits[v] : top;
            for (int v = 0; v < m->s.vocab; v++) sum += exp((double)logits[v] - top);
            doc_loss += top + log(sum) - logits[target];
        }
        total += doc_loss / (double)(len - 1);
        Py_DECREF(doc);
    }
    Py_DECREF(seq);
    return PyFloat_FromDouble(total / (double)n_docs);
fail:
    Py_DECREF(seq);
    return NULL;
}

static PyObject *Infer_get_weight_bytes(InferObject *m, void *closure)
{
    (void)closure;
    size_t bytes = ((size_t)m->s.vocab + m->s.block) * m->s.C * sizeof(float);
    for (int i = 0; i < m->s.n_layer * MATS_PER_LAYER + 1; i++) bytes += matrix_bytes(&m->mats[i]);
    return PyLong_FromSize_t(bytes);
}
static PyObject *Infer_get_int8(InferObject *m, void *closure) { (void)closure; return PyBool_FromLong(m->int8); }
static PyObject *Infer_get_isa(InferObject *m, void *closure) { (void)closure; return PyUnicode_FromString(m->isa); }

static PyGetSetDef Infer_getset[] = {
    {"weight_bytes", (getter)Infer_get_weight_bytes, NULL, "bytes of weights (and int8 row scales) the model needs", NULL},
    {"int8", (getter)Infer_get_int8, NULL, "True if the matrices are int8, False if float32", NULL},
    {"isa", (getter)Infer_get_isa, NULL,
     "the kernel that runs: 'avx512-vnni', 'avx2-vnni', 'avx2', 'sse', 'neon' or 'neon-dotprod', 'generic' for int8; "
     "'avx512', 'avx2', 'sse', 'neon', 'generic' for float32", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Infer_methods[] = {
    {"available_isas", (PyCFunction)(void (*)(void))Infer_available_isas, METH_VARARGS | METH_KEYWORDS | METH_STATIC,
     "available_isas(int8=True) -> list[str]\n\nThe instruction sets InferenceGPT(isa=...) runs on this CPU and "
     "build for int8 (or float32) weights, best first."},
    {"logits", (PyCFunction)Infer_logits, METH_O,
     "logits(tokens) -> list[float]\n\nNext-token logits after tokens (1 to block_size ids), reusing the KV cache."},
    {"eval_loss", (PyCFunction)Infer_eval_loss, METH_O,
     "eval_loss(docs) -> float\n\nMean over documents of each one's mean next-token loss."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject InferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastops.InferenceGPT",
    .tp_basicsize = sizeof(InferObject),
    .tp_dealloc = (destructor)Infer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "InferenceGPT(params, vocab_size, n_embd, n_layer, n_head, block_size, mlp_act='relu2', int8=True, isa=None)\n\n"
              "A trained model for sampling and evaluation, token by token with a KV cache, its matrices\n"
              "quantised to int8 per row (int8=True) or kept as float32. Copies what it needs from params.\n"
              "isa: None or 'auto' (the best this CPU runs), or one of InferenceGPT.available_isas(int8);\n"
              "model.isa names the kernel that runs.",
    .tp_methods = Infer_methods,
    .tp_getset = Infer_getset,
    .tp_new = Infer_new,
};

#endif /* FASTOPS_INT8_KERNELS_ONLY */

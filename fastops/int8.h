/* fastops/int8.h: fastops.InferenceGPT -- inference with int8 weights.
   Sampling runs one token at a time with a KV cache, so each weight matrix is used for a matrix-vector
   product. InferenceGPT keeps every matrix of the layers and lm_head either as float32 or quantised per
   row (symmetric: q = round(w / s), s = max|row| / 127) and computes y = W x with 8-bit integer dot
   products; the input vector is quantised the same way on the fly. Embeddings stay float32 (lookups).
   Both formats pack 16 rows side by side so that one vector instruction serves 16 outputs:
     float32: block[k][16]              y[16] += x[k] * block[k][0..15]
     int8:    block[k/4][16][4]         y[16] += dot4(x[k..k+3], block[k/4][r][0..3])   (VNNI vpdpbusd)
   vpdpbusd multiplies unsigned by signed bytes, so x is stored as x_q + 128 and each row's sum of q
   times 128 is subtracted afterwards. */

typedef struct {
    int rows, cols, blocks, groups;   /* blocks of 16 rows; groups of 4 columns (int8) */
    float *w;                         /* float32 packing, or NULL */
    int8_t *q;                        /* int8 packing, or NULL */
    float *scale;                     /* per row (int8) */
    int32_t *bias;                    /* per row: 128 * sum of the row's q (int8) */
} PackedMatrix;

static int pack_matrix(PackedMatrix *pm, const void *src, int is_f32, ptrdiff_t offset, int rows, int cols, int int8)
{
    memset(pm, 0, sizeof *pm);
    pm->rows = rows; pm->cols = cols; pm->blocks = (rows + 15) / 16; pm->groups = (cols + 3) / 4;
#define SRC(r, c) (is_f32 ? (double)((const float *)src)[offset + (ptrdiff_t)(r) * cols + (c)] \
                          : ((const double *)src)[offset + (ptrdiff_t)(r) * cols + (c)])
    if (!int8) {
        pm->w = calloc((size_t)pm->blocks * cols * 16, sizeof(float));
        if (!pm->w) return -1;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) pm->w[((size_t)(r / 16) * cols + c) * 16 + r % 16] = (float)SRC(r, c);
        return 0;
    }
    pm->q = calloc((size_t)pm->blocks * pm->groups * 64, 1);
    pm->scale = calloc((size_t)pm->blocks * 16, sizeof(float));
    pm->bias = calloc((size_t)pm->blocks * 16, sizeof(int32_t));
    if (!pm->q || !pm->scale || !pm->bias) return -1;
    for (int r = 0; r < rows; r++) {
        double amax = 0.0;
        for (int c = 0; c < cols; c++) amax = fabs(SRC(r, c)) > amax ? fabs(SRC(r, c)) : amax;
        const double s = amax / 127.0;
        int32_t sum = 0;
        for (int c = 0; c < cols && s > 0; c++) {
            const int q = (int)lrint(SRC(r, c) / s);
            const int8_t qc = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
            pm->q[(((size_t)(r / 16) * pm->groups + c / 4) * 16 + r % 16) * 4 + c % 4] = qc;
            sum += qc;
        }
        pm->scale[r] = (float)s;
        pm->bias[r] = 128 * sum;
    }
#undef SRC
    return 0;
}

static void free_matrix(PackedMatrix *pm)
{
    free(pm->w);
    free(pm->q);
    free(pm->scale);
    free(pm->bias);
}

static size_t matrix_bytes(const PackedMatrix *pm)
{
    /* what the model needs, not the padding: rows x cols weights, plus a scale per row for int8 */
    return pm->q ? (size_t)pm->rows * pm->cols + (size_t)pm->rows * sizeof(float)
                 : (size_t)pm->rows * pm->cols * sizeof(float);
}

/* The input vector in int8 form: x_q + 128 for vpdpbusd (padding columns hold 128, i.e. zero), and the
   scale that undoes the quantisation. Returns 0 for an all-zero vector. */
static float quantize_input(const float *x, int cols, uint8_t *xq, int groups)
{
    float amax = 0.0f;
    for (int c = 0; c < cols; c++) amax = fabsf(x[c]) > amax ? fabsf(x[c]) : amax;
    const float s = amax / 127.0f, inv = s > 0 ? 1.0f / s : 0.0f;
    for (int c = 0; c < cols; c++) {
        const float v = x[c] * inv;   /* in [-127, 127]; rounded half away from zero, in plain arithmetic */
        xq[c] = (uint8_t)((int)(v + (v >= 0 ? 0.5f : -0.5f)) + 128);
    }
    for (int c = cols; c < groups * 4; c++) xq[c] = 128;
    return s;
}

static void matvec_f32_generic(const PackedMatrix *pm, const float *x, float *y, uint8_t *xq)
{
    (void)xq;
    for (int b = 0; b < pm->blocks; b++) {
        float acc[16] = {0};
        const float *w = pm->w + (size_t)b * pm->cols * 16;
        for (int c = 0; c < pm->cols; c++)
            for (int i = 0; i < 16; i++) acc[i] += x[c] * w[c * 16 + i];
        for (int i = 0; i < 16 && b * 16 + i < pm->rows; i++) y[b * 16 + i] = acc[i];
    }
}

static void matvec_i8_generic(const PackedMatrix *pm, const float *x, float *y, uint8_t *xq)
{
    const float sx = quantize_input(x, pm->cols, xq, pm->groups);
    for (int b = 0; b < pm->blocks; b++) {
        int32_t acc[16] = {0};
        const int8_t *q = pm->q + (size_t)b * pm->groups * 64;
        for (int g = 0; g < pm->groups; g++)
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 4; j++) acc[i] += (int32_t)xq[g * 4 + j] * q[(g * 16 + i) * 4 + j];
        for (int i = 0; i < 16 && b * 16 + i < pm->rows; i++)
            y[b * 16 + i] = sx * pm->scale[b * 16 + i] * (float)(acc[i] - pm->bias[b * 16 + i]);
    }
}

#ifdef HAVE_X86_DISPATCH
__attribute__((target("avx512f,fma")))
static void matvec_f32_avx512(const PackedMatrix *pm, const float *x, float *y, uint8_t *xq)
{
    (void)xq;
    for (int b = 0; b < pm->blocks; b++) {
        __m512 acc = _mm512_setzero_ps();
        const float *w = pm->w + (size_t)b * pm->cols * 16;
        for (int c = 0; c < pm->cols; c++) acc = _mm512_fmadd_ps(_mm512_set1_ps(x[c]), _mm512_loadu_ps(w + c * 16), acc);
        const int n = pm->rows - b * 16 < 16 ? pm->rows - b * 16 : 16;
        _mm512_mask_storeu_ps(y + b * 16, (__mmask16)((1u << n) - 1u), acc);
    }
}

__attribute__((target("avx512f,avx512vnni")))
static void matvec_i8_vnni(const PackedMatrix *pm, const float *x, float *y, uint8_t *xq)
{
    const float sx = quantize_input(x, pm->cols, xq, pm->groups);
    for (int b = 0; b < pm->blocks; b++) {
        __m512i acc = _mm512_setzero_si512();
        const int8_t *q = pm->q + (size_t)b * pm->groups * 64;
        for (int g = 0; g < pm->groups; g++) {
            int32_t x4;
            memcpy(&x4, xq + 4 * g, 4);
            acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(x4), _mm512_loadu_si512(q + g * 64));
        }
        const __m512 dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(pm->bias + b * 16)));
        const __m512 out = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sx), _mm512_loadu_ps(pm->scale + b * 16)), dots);
        const int n = pm->rows - b * 16 < 16 ? pm->rows - b * 16 : 16;
        _mm512_mask_storeu_ps(y + b * 16, (__mmask16)((1u << n) - 1u), out);
    }
}
#endif

typedef void (*MatvecFn)(const PackedMatrix *pm, const float *x, float *y, uint8_t *xq);

typedef struct {
    PyObject_HEAD
    Shape s;
    int int8;
    const char *isa;
    MatvecFn matvec;
    float *wte, *wpe;                /* float32 embeddings */
    PackedMatrix *mats;              /* per layer: qkv, wo, fc1, fc2; then lm_head */
    float *cache;                    /* keys and values of every layer, block_size rows each */
    float *work;                     /* activations of one token */
    uint8_t *xq;
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

/* Runs token `tok` at position `pos` (keys and values of 0 .. pos-1 already cached); logits into out. */
static void infer_token(InferObject *m, int tok, int pos, float *logits)
{
    const Shape *s = &m->s;
    const int C = s->C, F = 4 * C, H = s->n_head, D = C / H, T = s->block;
    const float scale = 1.0f / sqrtf((float)D);
    float *x = m->work, *h = x + C, *qkv = h + C, *o = qkv + 3 * C, *u = o + C, *att = u + F;
    for (int j = 0; j < C; j++) x[j] = m->wte[(size_t)tok * C + j] + m->wpe[(size_t)pos * C + j];
    infer_rmsnorm(x, x, C);
    for (int l = 0; l < s->n_layer; l++) {
        const PackedMatrix *W = m->mats + (size_t)l * MATS_PER_LAYER;
        float *keys = m->cache + (size_t)l * 2 * T * C, *values = keys + (size_t)T * C;
        infer_rmsnorm(x, h, C);
        m->matvec(&W[MAT_QKV], h, qkv, m->xq);
        memcpy(keys + (size_t)pos * C, qkv + C, (size_t)C * sizeof(float));
        memcpy(values + (size_t)pos * C, qkv + 2 * C, (size_t)C * sizeof(float));
        for (int hd = 0; hd < H; hd++) {
            float top = -INFINITY, total = 0.0f;
            for (int j = 0; j <= pos; j++) {
                float dot = 0.0f;
                for (int d = 0; d < D; d++) dot += qkv[hd * D + d] * keys[(size_t)j * C + hd * D + d];
                att[j] = dot * scale;
                top = att[j] > top ? att[j] : top;
            }
            for (int j = 0; j <= pos; j++) { att[j] = expf(att[j] - top); total += att[j]; }
            for (int j = 0; j <= pos; j++) att[j] /= total;
            for (int d = 0; d < D; d++) o[hd * D + d] = 0.0f;
            for (int j = 0; j <= pos; j++)
                for (int d = 0; d < D; d++) o[hd * D + d] += att[j] * values[(size_t)j * C + hd * D + d];
        }
        m->matvec(&W[MAT_WO], o, h, m->xq);
        for (int j = 0; j < C; j++) x[j] += h[j];
        infer_rmsnorm(x, h, C);
        m->matvec(&W[MAT_FC1], h, u, m->xq);
        for (int i = 0; i < F; i++) u[i] = u[i] > 0 ? (s->relu2 ? u[i] * u[i] : u[i]) : 0.0f;
        m->matvec(&W[MAT_FC2], u, h, m->xq);
        for (int j = 0; j < C; j++) x[j] += h[j];
    }
    m->matvec(&m->mats[(size_t)s->n_layer * MATS_PER_LAYER], x, logits, m->xq);
}

static PyTypeObject InferType;

static void Infer_dealloc(InferObject *m)
{
    if (m->mats)
        for (int i = 0; i < m->s.n_layer * MATS_PER_LAYER + 1; i++) free_matrix(&m->mats[i]);
    free(m->mats);
    free(m->wte);
    free(m->wpe);
    free(m->cache);
    free(m->work);
    free(m->xq);
    free(m->tokens);
    free(m->ids);
    Py_TYPE(m)->tp_free((PyObject *)m);
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
    int vector = 0;
    if (isa == NULL || !strcmp(isa, "auto")) {
#ifdef HAVE_X86_DISPATCH
        vector = int8 ? cpu_supports("avx512") && __builtin_cpu_supports("avx512vnni") : cpu_supports("avx512");
#endif
    } else if (!strcmp(isa, "avx512")) {
#ifdef HAVE_X86_DISPATCH
        vector = int8 ? cpu_supports("avx512") && __builtin_cpu_supports("avx512vnni") : cpu_supports("avx512");
#endif
        if (!vector) {
            PyErr_SetString(PyExc_ValueError, "isa 'avx512' (with VNNI for int8) is not available on this CPU or build");
            return NULL;
        }
    } else if (strcmp(isa, "generic")) {
        PyErr_Format(PyExc_ValueError, "isa must be 'avx512', 'generic' or None, got '%s'", isa);
        return NULL;
    }
    InferObject *m = (InferObject *)type->tp_alloc(type, 0);
    if (!m) return NULL;
    shape_init(&m->s, vocab, C, n_layer, n_head, block, !strcmp(mlp_act, "relu2"));
    m->int8 = int8;
#ifdef HAVE_X86_DISPATCH
    m->matvec = vector ? (int8 ? matvec_i8_vnni : matvec_f32_avx512) : (int8 ? matvec_i8_generic : matvec_f32_generic);
#else
    m->matvec = int8 ? matvec_i8_generic : matvec_f32_generic;
#endif
    m->isa = vector ? "avx512" : "generic";
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
    m->xq = calloc((size_t)F + 4, 1);
    m->tokens = calloc((size_t)block, sizeof(int));
    m->ids = calloc((size_t)block, sizeof(int));
    if (!m->mats || !m->wte || !m->wpe || !m->cache || !m->work || !m->xq || !m->tokens || !m->ids) goto nomem;
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
    {"isa", (getter)Infer_get_isa, NULL, "'avx512' (VNNI for int8) or 'generic'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Infer_methods[] = {
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
              "quantised to int8 per row (int8=True) or kept as float32. Copies what it needs from params.",
    .tp_methods = Infer_methods,
    .tp_getset = Infer_getset,
    .tp_new = Infer_new,
};


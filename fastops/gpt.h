/* fastops/gpt.h: the Python type fastops.GPT -- the fused trainer on four flat buffers that Python owns.
   Parses and checks documents, holds the scratch memory, releases the GIL around the kernels. */

#ifndef _WIN32
#include <sys/mman.h>
#endif

static const char *const BUF_NAMES[N_BUFS] = {"params", "grads", "m", "v"};

typedef struct {
    PyObject_HEAD
    Model m;                        /* what the kernels see: shape, buffers, Adam, threads, scratch */
    int is_f32;
    Py_buffer views[N_BUFS];
    int n_views;
    const Kernels *k;
    int *ids;                       /* parsed documents: input, target, pos per token, doc starts */
    size_t ids_cap;
    int busy;                       /* set while a call runs without the GIL */
} GPTObject;

/* Grows the int buffer of parsed documents to hold `extra` more ints past `used`. */
static int reserve_ids(GPTObject *g, size_t used, size_t extra)
{
    if (used + extra <= g->ids_cap) return 0;
    size_t cap = (used + extra) * 2;
    int *ids = realloc(g->ids, cap * sizeof(int));
    if (!ids) { PyErr_NoMemory(); return -1; }
    g->ids = ids;
    g->ids_cap = cap;
    return 0;
}

/* Where a parsed batch lives in g->ids: [input M][target M][pos M][doc_start n_docs + 1]. */
typedef struct { size_t offset; int n_docs, M; } BatchRef;

static Batch resolve(const GPTObject *g, BatchRef r)
{
    const int *base = g->ids + r.offset;
    Batch b = {r.n_docs, r.M, base + 3 * (size_t)r.M, base, base + r.M, base + 2 * (size_t)r.M};
    return b;
}

/* Reads one token id, checking its type and range. */
static int token_id(GPTObject *g, PyObject *item, int *out, const char *where, Py_ssize_t doc, Py_ssize_t i)
{
    if (!PyLong_Check(item)) {
        PyErr_Format(PyExc_TypeError, "%sdocument %zd, token %zd: token ids must be integers, not %.100s",
                     where, doc, i, Py_TYPE(item)->tp_name);
        return -1;
    }
    int overflow;
    long id = PyLong_AsLongAndOverflow(item, &overflow);
    if (id == -1 && PyErr_Occurred()) return -1;
    if (overflow || id < 0 || id >= g->m.s.vocab) {
        PyErr_Format(PyExc_ValueError, "%sdocument %zd, token %zd: id %S is out of range for vocab_size %d",
                     where, doc, i, item, g->m.s.vocab);
        return -1;
    }
    *out = (int)id;
    return 0;
}

/* Parses a list of documents (each [BOS] + tokens + [BOS], 2 .. block_size + 1 ids) into g->ids at
   *used. `where` prefixes error messages (e.g. "batch 3: "). */
static int parse_docs(GPTObject *g, PyObject *docs, size_t *used, BatchRef *ref, const char *where)
{
    PyObject *seq = PySequence_Fast(docs, "");
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "%sdocs must be a list of documents (lists of token ids), not %.100s",
                     where, Py_TYPE(docs)->tp_name);
        return -1;
    }
    const Py_ssize_t n_docs = PySequence_Fast_GET_SIZE(seq);
    int rc = -1;
    if (n_docs == 0 || n_docs > INT_MAX / (g->m.s.block + 1)) {
        PyErr_Format(PyExc_ValueError, "%sa batch needs 1 to %d documents, got %zd", where,
                     INT_MAX / (g->m.s.block + 1), n_docs);
        goto done;
    }
    Py_ssize_t M = 0;
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        PyObject *doc = PySequence_Fast_GET_ITEM(seq, d);
        Py_ssize_t len = PySequence_Check(doc) && !PyUnicode_Check(doc) ? PySequence_Size(doc) : -1;
        if (len < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%sdocument %zd must be a list of token ids, not %.100s",
                         where, d, Py_TYPE(doc)->tp_name);
            goto done;
        }
        if (len < 2 || len > g->m.s.block + 1) {
            PyErr_Format(PyExc_ValueError, "%sdocument %zd has %zd token ids; each needs 2 to block_size + 1 = %d "
                         "([BOS] + tokens + [BOS], cut to block_size + 1)", where, d, len, g->m.s.block + 1);
            goto done;
        }
        M += len - 1;
    }
    if (reserve_ids(g, *used, 3 * (size_t)M + (size_t)n_docs + 1) < 0) goto done;
    int *input = g->ids + *used, *target = input + M, *pos = target + M, *doc_start = pos + M;
    int t = 0;
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        PyObject *doc = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, d), "");
        if (!doc) goto done;
        const Py_ssize_t len = PySequence_Fast_GET_SIZE(doc);
        if (len < 2 || len > g->m.s.block + 1) {   /* a sequence may change length between the passes */
            PyErr_Format(PyExc_ValueError, "%sdocument %zd changed length while being read", where, d);
            Py_DECREF(doc);
            goto done;
        }
        doc_start[d] = t;
        for (Py_ssize_t i = 0; i < len; i++) {
            int id;
            if (token_id(g, PySequence_Fast_GET_ITEM(doc, i), &id, where, d, i) < 0) { Py_DECREF(doc); goto done; }
            if (i < len - 1) { input[t + i] = id; pos[t + i] = (int)i; }
            if (i > 0) target[t + i - 1] = id;
        }
        t += (int)(len - 1);
        Py_DECREF(doc);
    }
    if (t != M) {
        PyErr_Format(PyExc_ValueError, "%sa document changed length while being read", where);
        goto done;
    }
    doc_start[n_docs] = t;
    ref->offset = *used;
    ref->n_docs = (int)n_docs;
    ref->M = (int)M;
    *used += 3 * (size_t)M + (size_t)n_docs + 1;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

/* Asks for 2 MiB pages under [p, p + bytes) (its whole 2 MiB-aligned pages), where Linux offers them
   (transparent huge pages in "madvise" mode, the usual default, give them only to regions that ask).
   A medium batch-32 step walks 19 MB of weights and Adam moments in float64, beyond what the TLB maps
   in 4 KiB pages; on 2 MiB pages that step took 16% less time with AVX-512, 10% with AVX2 and 12% with
   SSE (float32, half the bytes: 3% with AVX2; one process, both orders, Sapphire Rapids class). With
   `collapse`, pages already written (the caller's buffers) are moved onto huge pages now (MADV_COLLAPSE,
   Linux 6.1+), not whenever khugepaged gets to them. Advice only: on any error nothing changes. */
#define HUGE_PAGE ((size_t)2 << 20)
#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25   /* Linux 6.1; older C libraries' headers lack it */
#endif
static void advise_huge_pages(void *p, size_t bytes, int collapse)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t lo = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1),
                    hi = ((uintptr_t)p + bytes) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (hi <= lo) return;
    madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    if (collapse) madvise((void *)lo, hi - lo, MADV_COLLAPSE);
#else
    (void)p; (void)bytes; (void)collapse;
#endif
}

/* Makes the scratch memory hold a batch of M tokens (zeroed when it grows). */
static int ensure_workspace(GPTObject *g, ptrdiff_t M, int mode)
{
    const ptrdiff_t MP = round_up(M, LANE_PAD);
    const int saved = mode == MODE_GRAD ? g->m.s.n_layer : 1;
    const double estimate = (double)MP * (saved * (14.0 * g->m.s.C + (double)g->m.s.n_head * (g->m.s.block + LANE_PAD)) +
                                          16.0 * g->m.s.C + g->m.s.vocab);
    if (estimate * 8.0 > 1e13) {
        PyErr_Format(PyExc_MemoryError, "a batch of %zd tokens needs too much scratch memory", (Py_ssize_t)M);
        return -1;
    }
    size_t bytes = g->k->workspace_bytes(&g->m.s, MP, saved, g->m.pool.n_threads);
    if (bytes <= g->m.work_bytes) return 0;
    free(g->m.work);
    g->m.work = NULL;
    g->m.work_bytes = 0;
    void *p = NULL;
#ifdef _WIN32
    p = _aligned_malloc(bytes, 64);
#else
    /* Large workspaces on 2 MiB pages where the kernel offers them: a gemm walks a feature-major panel
       down K rows MP lanes apart, a new 4 KiB page every row or two. */
    if (posix_memalign(&p, bytes >= HUGE_PAGE ? HUGE_PAGE : 64, bytes)) p = NULL;
    if (p) advise_huge_pages(p, bytes, 0);
#endif
    if (!p) { PyErr_NoMemory(); return -1; }
    memset(p, 0, bytes);
    g->m.work = p;
    g->m.work_bytes = bytes;
    return 0;
}

static void free_workspace(GPTObject *g)
{
#ifdef _WIN32
    _aligned_free(g->m.work);
#else
    free(g->m.work);
#endif
    g->m.work = NULL;
    g->m.work_bytes = 0;
}

/* Guards against two Python threads using one engine at once (calls release the GIL). */
static int enter(GPTObject *g)
{
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this fastops.GPT is already running a call in another thread");
        return -1;
    }
    g->busy = 1;
    return 0;
}

/* ---- the GPT type ---- */

static PyTypeObject GPTType;

static void GPT_dealloc(GPTObject *g)
{
    pool_stop(&g->m.pool);
    for (int i = 0; i < g->n_views; i++) PyBuffer_Release(&g->views[i]);
    free_workspace(g);
    free(g->ids);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyObject *GPT_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"params", "grads", "m", "v", "vocab_size", "n_embd", "n_layer", "n_head", "block_size",
                             "mlp_act", "beta1", "beta2", "eps", "grad_clip", "threads", "isa", NULL};
    PyObject *objs[N_BUFS];
    int vocab, C, n_layer, n_head, block, threads = 1;
    const char *mlp_act = "relu2", *isa = NULL;
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOiiiii|sddddiz:GPT", kwlist, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &vocab, &C, &n_layer, &n_head, &block, &mlp_act, &beta1, &beta2,
                                     &eps, &grad_clip, &threads, &isa))
        return NULL;
    const struct { const char *name; int value, min; } dims[] = {
        {"vocab_size", vocab, 2}, {"n_embd", C, 1}, {"n_layer", n_layer, 1}, {"n_head", n_head, 1},
        {"block_size", block, 1}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].value < dims[i].min || dims[i].value > MAX_DIM) {
            PyErr_Format(PyExc_ValueError, "%s must be in [%d, %d], got %d", dims[i].name, dims[i].min, MAX_DIM,
                         dims[i].value);
            return NULL;
        }
    if (C % n_head) {
        PyErr_Format(PyExc_ValueError, "n_head must divide n_embd (%d %% %d != 0)", C, n_head);
        return NULL;
    }
    if (strcmp(mlp_act, "relu2") && strcmp(mlp_act, "relu")) {
        PyErr_Format(PyExc_ValueError, "mlp_act must be 'relu2' or 'relu', got '%s'", mlp_act);
        return NULL;
    }
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps > 0 && isfinite(eps)) ||
        !(grad_clip >= 0 && isfinite(grad_clip))) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= beta1, beta2 < 1, eps > 0 and grad_clip >= 0 (all finite)");
        return NULL;
    }
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, %d], got %d", MAX_THREADS, threads);
        return NULL;
    }
    const Isa *chosen = find_isa(isa);
    if (!chosen) {
        PyErr_Format(PyExc_ValueError, "isa '%s' is not available on this CPU or build (try fastops.available_isas())",
                     isa ? isa : "auto");
        return NULL;
    }

    GPTObject *g = (GPTObject *)type->tp_alloc(type, 0);
    if (!g) return NULL;
    shape_init(&g->m.s, vocab, C, n_layer, n_head, block, !strcmp(mlp_act, "relu2"));
    g->m.pool.n_threads = 1;
    for (int i = 0; i < N_BUFS; i++) {
        int is_f32;
        if (float_buffer(objs[i], &g->views[i], BUF_NAMES[i], FLOATS_WRITABLE, g->m.s.n_params, &is_f32) < 0) goto fail;
        g->n_views = i + 1;
        g->m.buf[i] = g->views[i].buf;
        advise_huge_pages(g->views[i].buf, (size_t)g->views[i].len, 1);
        if (i == 0) g->is_f32 = is_f32;
        else if (is_f32 != g->is_f32) {
            PyErr_Format(PyExc_TypeError, "%s is %s but params is %s; all four buffers need one dtype",
                         BUF_NAMES[i], is_f32 ? "float32" : "float64", g->is_f32 ? "float32" : "float64");
            goto fail;
        }
    }
    for (int i = 0; i < N_BUFS; i++)
        for (int j = i + 1; j < N_BUFS; j++) {
            const char *a = g->views[i].buf, *b = g->views[j].buf;
            if (a < b + g->views[j].len && b < a + g->views[i].len) {
                PyErr_Format(PyExc_ValueError, "%s and %s overlap; the four buffers must be distinct", BUF_NAMES[i],
                             BUF_NAMES[j]);
                goto fail;
            }
        }
    g->m.beta1 = beta1; g->m.beta2 = beta2; g->m.eps = eps; g->m.grad_clip = grad_clip;
    g->k = g->is_f32 ? chosen->f32 : chosen->f64;
    if (pool_start(&g->m.pool, threads) < 0) {
        PyErr_Format(PyExc_OSError, "cannot start %d threads: %s", threads, g->m.pool.error);
        goto fail;
    }
    return (PyObject *)g;
fail:
    Py_DECREF(g);
    return NULL;
}

/* Adam's update number step + 1 from the gradient in the grads buffer, scaled down to the global norm
   grad_clip when it is longer (and clipping is on). Runs without the GIL. */
static void adam_from_grads(GPTObject *g, double lr)
{
    g->m.step++;
    double scale = 1.0;
    if (g->m.grad_clip > 0) {
        const double norm = sqrt(g->k->grad_sq_norm(&g->m));
        if (norm > g->m.grad_clip) scale = g->m.grad_clip / norm;
    }
    g->k->adam(&g->m, lr, scale);
}

/* One optimizer step on a parsed batch. Runs without the GIL. Clipping needs the whole gradient's norm
   before any update, so only then is the gradient stored and applied in a second pass. */
static double train_one(GPTObject *g, const Batch *b, double lr)
{
    if (g->m.grad_clip <= 0) {
        g->m.step++;
        return g->k->run_batch(&g->m, b, MODE_TRAIN, lr, NULL) / b->n_docs;
    }
    const double loss = g->k->run_batch(&g->m, b, MODE_GRAD, 0.0, NULL) / b->n_docs;
    adam_from_grads(g, lr);
    return loss;
}

PyDoc_STRVAR(train_steps_doc,
"train_steps(batches, lrs) -> list[float]\n\n"
"One optimizer step per batch (a list of documents), with learning rate lrs[i]; returns each step's\n"
"loss. Every batch is validated before the first step runs. Without clipping the update is fused into\n"
"the backward pass and the grads buffer is not written (use loss_and_grad for gradients).");

static PyObject *GPT_train_steps(GPTObject *g, PyObject *args)
{
    PyObject *batches, *lrs;
    if (!PyArg_ParseTuple(args, "OO:train_steps", &batches, &lrs)) return NULL;
    PyObject *bseq = PySequence_Fast(batches, "batches must be a list of batches (lists of documents)");
    if (!bseq) return NULL;
    PyObject *lseq = PySequence_Fast(lrs, "lrs must be a list of learning rates");
    if (!lseq) { Py_DECREF(bseq); return NULL; }
    PyObject *result = NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(bseq);
    BatchRef *refs = NULL;
    double *rates = NULL, *losses = NULL;
    if (PySequence_Fast_GET_SIZE(lseq) != n) {
        PyErr_Format(PyExc_ValueError, "got %zd batches but %zd learning rates", n, PySequence_Fast_GET_SIZE(lseq));
        goto done;
    }
    if (enter(g) < 0) goto done;
    refs = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *refs);
    rates = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *rates);
    losses = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *losses);
    if (!refs || !rates || !losses) { PyErr_NoMemory(); goto leave; }
    size_t used = 0;
    int max_M = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char where[48];
        snprintf(where, sizeof where, "batch %zd: ", i);
        if (parse_docs(g, PySequence_Fast_GET_ITEM(bseq, i), &used, &refs[i], where) < 0) goto leave;
        rates[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(lseq, i));
        if (rates[i] == -1.0 && PyErr_Occurred()) goto leave;
        if (!isfinite(rates[i])) {
            PyErr_Format(PyExc_ValueError, "learning rate %zd is not finite", i);
            goto leave;
        }
        if (refs[i].M > max_M) max_M = refs[i].M;
    }
    if (n && ensure_workspace(g, max_M, MODE_GRAD) < 0) goto leave;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        Batch b = resolve(g, refs[i]);
        losses[i] = train_one(g, &b, rates[i]);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *f = PyFloat_FromDouble(losses[i]);
        if (!f) { Py_CLEAR(result); break; }
        PyList_SET_ITEM(result, i, f);
    }
leave:
    g->busy = 0;
done:
    PyMem_Free(refs);
    PyMem_Free(rates);
    PyMem_Free(losses);
    Py_DECREF(bseq);
    Py_DECREF(lseq);
    return result;
}

/* Runs one batch in `mode` (MODE_LOSS or MODE_GRAD) and returns the batch's mean loss. */
static PyObject *run_docs(GPTObject *g, PyObject *docs, int mode)
{
    if (enter(g) < 0) return NULL;
    PyObject *result = NULL;
    size_t used = 0;
    BatchRef ref;
    if (parse_docs(g, docs, &used, &ref, "") < 0 || ensure_workspace(g, ref.M, mode) < 0) goto leave;
    Batch b = resolve(g, ref);
    double loss;
    Py_BEGIN_ALLOW_THREADS
    loss = g->k->run_batch(&g->m, &b, mode, 0.0, NULL) / b.n_docs;
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(loss);
leave:
    g->busy = 0;
    return result;
}

PyDoc_STRVAR(loss_and_grad_doc,
"loss_and_grad(docs) -> float\n\n"
"The batch's mean loss; its gradient is written to the grads buffer. No update.");

static PyObject *GPT_loss_and_grad(GPTObject *g, PyObject *docs) { return run_docs(g, docs, MODE_GRAD); }

PyDoc_STRVAR(apply_adam_doc,
"apply_adam(lr) -> None\n\n"
"One Adam update from the gradient in the grads buffer (whatever wrote it: loss_and_grad, or a sum of\n"
"several processes' gradients), clipped to the global norm grad_clip as train_steps clips; step += 1.\n"
"loss_and_grad(docs) then apply_adam(lr) is train_steps([docs], [lr]) split in two.");

static PyObject *GPT_apply_adam(GPTObject *g, PyObject *arg)
{
    const double lr = PyFloat_AsDouble(arg);
    if (lr == -1.0 && PyErr_Occurred()) return NULL;
    if (!isfinite(lr)) {
        PyErr_SetString(PyExc_ValueError, "the learning rate is not finite");
        return NULL;
    }
    if (enter(g) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    adam_from_grads(g, lr);
    Py_END_ALLOW_THREADS
    g->busy = 0;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(eval_loss_doc,
"eval_loss(docs) -> float\n\n"
"The batch's mean loss, forward pass only (grads untouched). Any number of documents.");

static PyObject *GPT_eval_loss(GPTObject *g, PyObject *docs) { return run_docs(g, docs, MODE_LOSS); }

PyDoc_STRVAR(logits_doc,
"logits(tokens) -> list[float]\n\n"
"Next-token logits after `tokens` (1 to block_size ids, starting with BOS).");

static PyObject *GPT_logits(GPTObject *g, PyObject *tokens)
{
    PyObject *seq = PySequence_Fast(tokens, "tokens must be a list of token ids");
    if (!seq) return NULL;
    PyObject *result = NULL;
    double *out = NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (enter(g) < 0) { Py_DECREF(seq); return NULL; }
    if (n < 1 || n > g->m.s.block) {
        PyErr_Format(PyExc_ValueError, "logits needs 1 to block_size = %d token ids, got %zd", g->m.s.block, n);
        goto leave;
    }
    if (reserve_ids(g, 0, 3 * (size_t)n + 2) < 0 || ensure_workspace(g, n, MODE_LOGITS) < 0) goto leave;
    int *input = g->ids, *target = input + n, *pos = target + n, *doc_start = pos + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (token_id(g, PySequence_Fast_GET_ITEM(seq, i), &input[i], "", 0, i) < 0) goto leave;
        target[i] = 0;
        pos[i] = (int)i;
    }
    doc_start[0] = 0;
    doc_start[1] = (int)n;
    Batch b = {1, (int)n, doc_start, input, target, pos};
    out = PyMem_Malloc((size_t)g->m.s.vocab * sizeof(double));
    if (!out) { PyErr_NoMemory(); goto leave; }
    Py_BEGIN_ALLOW_THREADS
    g->k->run_batch(&g->m, &b, MODE_LOGITS, 0.0, out);
    Py_END_ALLOW_THREADS
    result = PyList_New(g->m.s.vocab);
    for (int v = 0; result && v < g->m.s.vocab; v++) {
        PyObject *f = PyFloat_FromDouble(out[v]);
        if (!f) { Py_CLEAR(result); break; }
        PyList_SET_ITEM(result, v, f);
    }
leave:
    g->busy = 0;
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

static PyObject *GPT_get_step(GPTObject *g, void *closure) { (void)closure; return PyLong_FromLongLong(g->m.step); }

static int GPT_set_step(GPTObject *g, PyObject *value, void *closure)
{
    (void)closure;
    if (!value || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "step must be an integer");
        return -1;
    }
    long long step = PyLong_AsLongLong(value);
    if (step == -1 && PyErr_Occurred()) return -1;
    if (step < 0) {
        PyErr_Format(PyExc_ValueError, "step must be >= 0, got %lld", step);
        return -1;
    }
    g->m.step = step;
    return 0;
}

static PyObject *GPT_get_isa(GPTObject *g, void *closure) { (void)closure; return PyUnicode_FromString(g->k->isa); }
static PyObject *GPT_get_dtype(GPTObject *g, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(g->is_f32 ? "float32" : "float64");
}
static PyObject *GPT_get_threads(GPTObject *g, void *closure) { (void)closure; return PyLong_FromLong(g->m.pool.n_threads); }
static PyObject *GPT_get_n_params(GPTObject *g, void *closure) { (void)closure; return PyLong_FromSsize_t(g->m.s.n_params); }

PyDoc_STRVAR(profile_doc,
"profile(reset=False) -> dict\n\n"
"Time spent in each phase of the training steps so far, {phase: {'seconds': s, 'calls': n}}, counted on\n"
"the calling thread. Only in builds made with MICROGPT_PROFILE=1 (fastops.PROFILED); reset=True zeroes it.");

static PyObject *GPT_profile(GPTObject *g, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"reset", NULL};
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:profile", kwlist, &reset)) return NULL;
    if (!FASTOPS_PROFILED) {
        PyErr_SetString(PyExc_RuntimeError, "this fastops build has no phase counters: rebuild it with "
                        "MICROGPT_PROFILE=1 (MICROGPT_PROFILE=1 pip install -e .)");
        return NULL;
    }
    static double ticks_per_second = 0.0;
    if (ticks_per_second == 0.0) ticks_per_second = profile_ticks_per_second();
    PyObject *out = PyDict_New();
    for (int i = 0; out && i < N_PHASES; i++) {
        PyObject *phase = Py_BuildValue("{s:d,s:K}", "seconds", (double)g->m.profile.ticks[i] / ticks_per_second,
                                        "calls", (unsigned long long)g->m.profile.calls[i]);
        if (!phase || PyDict_SetItemString(out, PHASE_NAMES[i], phase) < 0) Py_CLEAR(out);
        Py_XDECREF(phase);
    }
    if (out && reset) memset(&g->m.profile, 0, sizeof g->m.profile);
    return out;
}

static PyGetSetDef GPT_getset[] = {
    {"step", (getter)GPT_get_step, (setter)GPT_set_step, "Adam's update count t (train_steps and apply_adam increment it)", NULL},
    {"isa", (getter)GPT_get_isa, NULL, "instruction set of the kernels in use", NULL},
    {"dtype", (getter)GPT_get_dtype, NULL, "'float64' or 'float32', from the buffers", NULL},
    {"threads", (getter)GPT_get_threads, NULL, "threads used for batches", NULL},
    {"n_params", (getter)GPT_get_n_params, NULL, "length of each flat buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef GPT_methods[] = {
    {"train_steps", (PyCFunction)GPT_train_steps, METH_VARARGS, train_steps_doc},
    {"loss_and_grad", (PyCFunction)GPT_loss_and_grad, METH_O, loss_and_grad_doc},
    {"apply_adam", (PyCFunction)GPT_apply_adam, METH_O, apply_adam_doc},
    {"eval_loss", (PyCFunction)GPT_eval_loss, METH_O, eval_loss_doc},
    {"logits", (PyCFunction)GPT_logits, METH_O, logits_doc},
    {"profile", (PyCFunction)(void (*)(void))GPT_profile, METH_VARARGS | METH_KEYWORDS, profile_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(GPT_doc,
"GPT(params, grads, m, v, vocab_size, n_embd, n_layer, n_head, block_size, mlp_act='relu2',\n"
"    beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=0.0, threads=1, isa=None)\n\n"
"The model of train.py computed in C on four flat buffers in the layout of microgpt/params.py,\n"
"shared (not copied) through the buffer protocol: all float64 or all float32, writable, contiguous.\n"
"isa picks the kernels ('avx512', 'avx2', 'sse', 'neon', 'generic'; None or 'auto' for the best this\n"
"CPU runs; fastops.available_isas() lists them).");

static PyTypeObject GPTType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastops.GPT",
    .tp_basicsize = sizeof(GPTObject),
    .tp_dealloc = (destructor)GPT_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = GPT_doc,
    .tp_methods = GPT_methods,
    .tp_getset = GPT_getset,
    .tp_new = GPT_new,
};


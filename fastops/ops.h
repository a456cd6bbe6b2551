/* fastops/ops.h: the per-op rung -- one kernel per op of train.py, float64, driven from Python.
   Each function does what one op of train.py does for one token (forward or backward), on array('d')
   vectors and on the flat params/grads buffers at a matrix's offset. train_fast.OpsEngine strings them
   together exactly as train.py strings its ops; the difference to the fused GPT is the per-op cost of
   crossing from Python to C. Arguments are checked like everywhere else: wrong sizes, offsets or types
   raise ValueError / TypeError. The module's method table lists them as OPS_METHODS. */

#define MAX_VEC_ARGS 10

typedef struct {
    Py_buffer views[MAX_VEC_ARGS];
    int n;
} VecArgs;

/* A contiguous float64 vector argument (writable if asked); its data and length in *out, *len. */
static int vec_arg(VecArgs *va, PyObject *obj, const char *name, int writable, double **out, Py_ssize_t *len)
{
    Py_buffer *view = &va->views[va->n];
    if (float_buffer(obj, view, name, FLOATS_F64_ONLY | (writable ? FLOATS_WRITABLE : 0), -1, NULL) < 0) return -1;
    va->n++;
    *out = view->buf;
    *len = view->len / 8;
    return 0;
}

static void vec_release(VecArgs *va)
{
    for (int i = 0; i < va->n; i++) PyBuffer_Release(&va->views[i]);
    va->n = 0;
}

static int check(int ok, PyObject *type, const char *message)
{
    if (!ok) PyErr_SetString(type, message);
    return ok ? 0 : -1;
}

/* rows x cols matrix at `offset` must lie inside a buffer of n values */
static int check_matrix(Py_ssize_t offset, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n)
{
    if (offset < 0 || rows < 1 || cols < 1 || rows > n || cols > n / rows || offset > n - rows * cols) {
        PyErr_Format(PyExc_ValueError, "a %zd x %zd matrix at offset %zd does not fit in a buffer of %zd values",
                     rows, cols, offset, n);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(op_embedding_doc, "embedding(params, wte_offset, vocab_size, wpe_offset, block_size, tok, pos, out)\n\n"
             "out = wte[tok] + wpe[pos] (rows of len(out) values).");
static PyObject *op_embedding(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *po, *oo;
    Py_ssize_t wte, vocab, wpe, block, tok, pos, n, C;
    double *p, *out;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OnnnnnnO:embedding", &po, &wte, &vocab, &wpe, &block, &tok, &pos, &oo)) return NULL;
    if (vec_arg(&va, po, "params", 0, &p, &n) < 0 || vec_arg(&va, oo, "out", 1, &out, &C) < 0 ||
        check_matrix(wte, vocab, C, n) < 0 || check_matrix(wpe, block, C, n) < 0 ||
        check(tok >= 0 && tok < vocab, PyExc_ValueError, "token id out of range for vocab_size") < 0 ||
        check(pos >= 0 && pos < block, PyExc_ValueError, "position out of range for block_size") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < C; j++) out[j] = p[wte + tok * C + j] + p[wpe + pos * C + j];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_embedding_backward_doc,
             "embedding_backward(grads, wte_offset, vocab_size, wpe_offset, block_size, tok, pos, g)\n\n"
             "dwte[tok] += g; dwpe[pos] += g.");
static PyObject *op_embedding_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *go, *gvo;
    Py_ssize_t wte, vocab, wpe, block, tok, pos, n, C;
    double *G, *g;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OnnnnnnO:embedding_backward", &go, &wte, &vocab, &wpe, &block, &tok, &pos, &gvo))
        return NULL;
    if (vec_arg(&va, go, "grads", 1, &G, &n) < 0 || vec_arg(&va, gvo, "g", 0, &g, &C) < 0 ||
        check_matrix(wte, vocab, C, n) < 0 || check_matrix(wpe, block, C, n) < 0 ||
        check(tok >= 0 && tok < vocab, PyExc_ValueError, "token id out of range for vocab_size") < 0 ||
        check(pos >= 0 && pos < block, PyExc_ValueError, "position out of range for block_size") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < C; j++) {
        G[wte + tok * C + j] += g[j];
        G[wpe + pos * C + j] += g[j];
    }
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_rmsnorm_doc, "rmsnorm(x, out) -> inv\n\nout = x * inv, inv = (mean(x^2) + 1e-5) ** -0.5.");
static PyObject *op_rmsnorm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo, *oo;
    double *x, *out;
    Py_ssize_t n, n_out;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OO:rmsnorm", &xo, &oo)) return NULL;
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0 || vec_arg(&va, oo, "out", 1, &out, &n_out) < 0 ||
        check(n == n_out && n > 0, PyExc_ValueError, "x and out need the same non-zero length") < 0) {
        vec_release(&va);
        return NULL;
    }
    double ss = 0.0;
    for (Py_ssize_t j = 0; j < n; j++) ss += x[j] * x[j];
    const double inv = pow(ss / n + RMS_EPS, -0.5);
    for (Py_ssize_t j = 0; j < n; j++) out[j] = inv * x[j];
    vec_release(&va);
    return PyFloat_FromDouble(inv);
}

PyDoc_STRVAR(op_rmsnorm_backward_doc, "rmsnorm_backward(x, inv, g, gx)\n\ngx += inv g - inv^3 (x . g) / n x.");
static PyObject *op_rmsnorm_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo, *go, *gxo;
    double inv, *x, *g, *gx;
    Py_ssize_t n, n_g, n_gx;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OdOO:rmsnorm_backward", &xo, &inv, &go, &gxo)) return NULL;
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0 || vec_arg(&va, go, "g", 0, &g, &n_g) < 0 ||
        vec_arg(&va, gxo, "gx", 1, &gx, &n_gx) < 0 ||
        check(n == n_g && n == n_gx, PyExc_ValueError, "x, g and gx need the same length") < 0) {
        vec_release(&va);
        return NULL;
    }
    double xg = 0.0;
    for (Py_ssize_t j = 0; j < n; j++) xg += x[j] * g[j];
    const double c = -(inv * inv * inv) * xg / n;
    for (Py_ssize_t j = 0; j < n; j++) gx[j] = (gx[j] + inv * g[j]) + c * x[j];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_linear_doc, "linear(params, offset, x, y)\n\ny = W x, W the len(y) x len(x) matrix at params[offset:].");
static PyObject *op_linear(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *po, *xo, *yo;
    Py_ssize_t off, n, K, N;
    double *p, *x, *y;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OnOO:linear", &po, &off, &xo, &yo)) return NULL;
    if (vec_arg(&va, po, "params", 0, &p, &n) < 0 || vec_arg(&va, xo, "x", 0, &x, &K) < 0 ||
        vec_arg(&va, yo, "y", 1, &y, &N) < 0 || check_matrix(off, N, K, n) < 0) {
        vec_release(&va);
        return NULL;
    }
    const double *W = p + off;
    for (Py_ssize_t i = 0; i < N; i++) {
        double sum = 0.0;
        for (Py_ssize_t j = 0; j < K; j++) sum += W[i * K + j] * x[j];
        y[i] = sum;
    }
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_linear_backward_doc, "linear_backward(params, grads, offset, x, g, gx)\n\n"
             "gx += W^T g and dW += g x^T for the matrix at offset (rows = len(g), cols = len(x)).");
static PyObject *op_linear_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *po, *Go, *xo, *go, *gxo;
    Py_ssize_t off, n, n_G, K, N, n_gx;
    double *p, *G, *x, *g, *gx;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOnOOO:linear_backward", &po, &Go, &off, &xo, &go, &gxo)) return NULL;
    if (vec_arg(&va, po, "params", 0, &p, &n) < 0 || vec_arg(&va, Go, "grads", 1, &G, &n_G) < 0 ||
        vec_arg(&va, xo, "x", 0, &x, &K) < 0 || vec_arg(&va, go, "g", 0, &g, &N) < 0 ||
        vec_arg(&va, gxo, "gx", 1, &gx, &n_gx) < 0 ||
        check(n == n_G, PyExc_ValueError, "params and grads need the same length") < 0 ||
        check(n_gx == K, PyExc_ValueError, "gx needs the length of x") < 0 || check_matrix(off, N, K, n) < 0) {
        vec_release(&va);
        return NULL;
    }
    const double *W = p + off;
    double *dW = G + off;
    for (Py_ssize_t j = 0; j < K; j++) {      /* gx[j] += column j of W . g */
        double sum = 0.0;
        for (Py_ssize_t i = 0; i < N; i++) sum += W[i * K + j] * g[i];
        gx[j] += sum;
    }
    for (Py_ssize_t i = 0; i < N; i++)
        if (g[i] != 0.0)
            for (Py_ssize_t j = 0; j < K; j++) dW[i * K + j] += g[i] * x[j];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_relu_act_doc, "relu_act(x, out, squared)\n\nout = relu(x)^2 if squared else relu(x).");
static PyObject *op_relu_act(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo, *oo;
    int squared;
    double *x, *out;
    Py_ssize_t n, n_out;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOp:relu_act", &xo, &oo, &squared)) return NULL;
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0 || vec_arg(&va, oo, "out", 1, &out, &n_out) < 0 ||
        check(n == n_out, PyExc_ValueError, "x and out need the same length") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) out[i] = x[i] > 0 ? (squared ? x[i] * x[i] : x[i]) : 0.0;
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_relu_act_backward_doc, "relu_act_backward(x, g, gx, squared)\n\ngx += g * act'(x).");
static PyObject *op_relu_act_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo, *go, *gxo;
    int squared;
    double *x, *g, *gx;
    Py_ssize_t n, n_g, n_gx;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOp:relu_act_backward", &xo, &go, &gxo, &squared)) return NULL;
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0 || vec_arg(&va, go, "g", 0, &g, &n_g) < 0 ||
        vec_arg(&va, gxo, "gx", 1, &gx, &n_gx) < 0 ||
        check(n == n_g && n == n_gx, PyExc_ValueError, "x, g and gx need the same length") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (x[i] > 0) gx[i] += squared ? 2.0 * x[i] * g[i] : g[i];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_attention_doc, "attention(q, keys, values, n, n_head, out, weights)\n\n"
             "Causal attention of query q over the first n rows (len(q) each) of the key and value caches;\n"
             "weights (n_head x at least n) keeps the softmax weights for the backward pass.");
static PyObject *op_attention(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *qo, *ko, *vo, *oo, *wo;
    Py_ssize_t n, H, C, nk, nv, no, nw;
    double *q, *K, *V, *out, *wts;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOnnOO:attention", &qo, &ko, &vo, &n, &H, &oo, &wo)) return NULL;
    if (vec_arg(&va, qo, "q", 0, &q, &C) < 0 || vec_arg(&va, ko, "keys", 0, &K, &nk) < 0 ||
        vec_arg(&va, vo, "values", 0, &V, &nv) < 0 || vec_arg(&va, oo, "out", 1, &out, &no) < 0 ||
        vec_arg(&va, wo, "weights", 1, &wts, &nw) < 0 ||
        check(H >= 1 && C % H == 0 && no == C, PyExc_ValueError, "need n_head | len(q) and len(out) == len(q)") < 0 ||
        check(n >= 1 && n <= nk / C && n <= nv / C && n <= nw / H, PyExc_ValueError,
              "n must be >= 1 and the caches and weights must hold n rows") < 0) {
        vec_release(&va);
        return NULL;
    }
    const Py_ssize_t D = C / H, ldw = nw / H;
    const double scale = 1.0 / sqrt((double)D);
    for (Py_ssize_t h = 0; h < H; h++) {
        double *a = wts + h * ldw, top = -INFINITY, total = 0.0;
        for (Py_ssize_t j = 0; j < n; j++) {
            double s = 0.0;
            for (Py_ssize_t d = 0; d < D; d++) s += q[h * D + d] * K[j * C + h * D + d];
            a[j] = s * scale;
            top = a[j] > top ? a[j] : top;
        }
        for (Py_ssize_t j = 0; j < n; j++) { a[j] = exp(a[j] - top); total += a[j]; }
        for (Py_ssize_t j = 0; j < n; j++) a[j] /= total;
        for (Py_ssize_t d = 0; d < D; d++) out[h * D + d] = 0.0;
        for (Py_ssize_t j = 0; j < n; j++)
            for (Py_ssize_t d = 0; d < D; d++) out[h * D + d] += a[j] * V[j * C + h * D + d];
    }
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_attention_backward_doc, "attention_backward(q, keys, values, n, n_head, weights, g, gq, gkeys, gvalues)\n\n"
             "Adds the gradients of attention(...) into gq and the first n rows of the cache gradients.");
static PyObject *op_attention_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *qo, *ko, *vo, *wo, *go, *gqo, *gko, *gvo;
    Py_ssize_t n, H, C, nk, nv, nw, ng, ngq, ngk, ngv;
    double *q, *K, *V, *wts, *g, *gq, *gK, *gV;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOnnOOOOO:attention_backward", &qo, &ko, &vo, &n, &H, &wo, &go, &gqo, &gko, &gvo))
        return NULL;
    if (vec_arg(&va, qo, "q", 0, &q, &C) < 0 || vec_arg(&va, ko, "keys", 0, &K, &nk) < 0 ||
        vec_arg(&va, vo, "values", 0, &V, &nv) < 0 || vec_arg(&va, wo, "weights", 0, &wts, &nw) < 0 ||
        vec_arg(&va, go, "g", 0, &g, &ng) < 0 || vec_arg(&va, gqo, "gq", 1, &gq, &ngq) < 0 ||
        vec_arg(&va, gko, "gkeys", 1, &gK, &ngk) < 0 || vec_arg(&va, gvo, "gvalues", 1, &gV, &ngv) < 0 ||
        check(H >= 1 && C % H == 0 && ng == C && ngq == C, PyExc_ValueError,
              "need n_head | len(q) and len(g) == len(gq) == len(q)") < 0 ||
        check(n >= 1 && n <= nk / C && n <= nv / C && n <= ngk / C && n <= ngv / C && n <= nw / H,
              PyExc_ValueError, "n must be >= 1 and the caches, their gradients and weights must hold n rows") < 0) {
        vec_release(&va);
        return NULL;
    }
    const Py_ssize_t D = C / H, ldw = nw / H;
    const double scale = 1.0 / sqrt((double)D);
    for (Py_ssize_t h = 0; h < H; h++) {
        const double *a = wts + h * ldw, *gh = g + h * D;
        double mean = 0.0;
        /* through the weighted sum: dv_j += a_j g, da_j = g . v_j; then mean = sum_j a_j da_j */
        for (Py_ssize_t j = 0; j < n; j++) {
            double da = 0.0;
            for (Py_ssize_t d = 0; d < D; d++) {
                gV[j * C + h * D + d] += a[j] * gh[d];
                da += gh[d] * V[j * C + h * D + d];
            }
            mean += a[j] * da;
        }
        /* through the softmax: ds_j = a_j (da_j - mean) / sqrt(D); da_j is recomputed, not stored */
        for (Py_ssize_t j = 0; j < n; j++) {
            double da = 0.0;
            for (Py_ssize_t d = 0; d < D; d++) da += gh[d] * V[j * C + h * D + d];
            const double ds = a[j] * (da - mean) * scale;
            for (Py_ssize_t d = 0; d < D; d++) {
                gq[h * D + d] += ds * K[j * C + h * D + d];
                gK[j * C + h * D + d] += ds * q[h * D + d];
            }
        }
    }
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_cross_entropy_doc, "cross_entropy(logits, target, exps) -> (loss, total)\n\n"
             "-log softmax(logits)[target]; exps and total keep exp(logits - max) and its sum for backward.");
static PyObject *op_cross_entropy(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lo, *eo;
    Py_ssize_t target, V, ne;
    double *L, *e;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OnO:cross_entropy", &lo, &target, &eo)) return NULL;
    if (vec_arg(&va, lo, "logits", 0, &L, &V) < 0 || vec_arg(&va, eo, "exps", 1, &e, &ne) < 0 ||
        check(V == ne && V > 0, PyExc_ValueError, "logits and exps need the same non-zero length") < 0 ||
        check(target >= 0 && target < V, PyExc_ValueError, "target out of range for the logits") < 0) {
        vec_release(&va);
        return NULL;
    }
    double top = L[0], total = 0.0;
    for (Py_ssize_t v = 1; v < V; v++) top = L[v] > top ? L[v] : top;
    for (Py_ssize_t v = 0; v < V; v++) { e[v] = exp(L[v] - top); total += e[v]; }
    const double loss = top + log(total) - L[target];
    vec_release(&va);
    return Py_BuildValue("dd", loss, total);
}

PyDoc_STRVAR(op_cross_entropy_backward_doc, "cross_entropy_backward(exps, total, target, g, glogits)\n\n"
             "glogits += g (softmax - onehot(target)).");
static PyObject *op_cross_entropy_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *glo;
    Py_ssize_t target, V, ngl;
    double total, g, *e, *gl;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OdndO:cross_entropy_backward", &eo, &total, &target, &g, &glo)) return NULL;
    if (vec_arg(&va, eo, "exps", 0, &e, &V) < 0 || vec_arg(&va, glo, "glogits", 1, &gl, &ngl) < 0 ||
        check(V == ngl, PyExc_ValueError, "exps and glogits need the same length") < 0 ||
        check(target >= 0 && target < V, PyExc_ValueError, "target out of range for the logits") < 0) {
        vec_release(&va);
        return NULL;
    }
    const double s = g / total;
    for (Py_ssize_t v = 0; v < V; v++) gl[v] += v == target ? s * e[v] - g : s * e[v];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_add_doc, "add(a, b, out)\n\nout = a + b.");
static PyObject *op_add(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ao, *bo, *oo;
    Py_ssize_t n, nb, no;
    double *a, *b, *out;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOO:add", &ao, &bo, &oo)) return NULL;
    if (vec_arg(&va, ao, "a", 0, &a, &n) < 0 || vec_arg(&va, bo, "b", 0, &b, &nb) < 0 ||
        vec_arg(&va, oo, "out", 1, &out, &no) < 0 ||
        check(n == nb && n == no, PyExc_ValueError, "a, b and out need the same length") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_axpy_doc, "axpy(alpha, x, y)\n\ny += alpha x.");
static PyObject *op_axpy(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo, *yo;
    double alpha, *x, *y;
    Py_ssize_t n, ny;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "dOO:axpy", &alpha, &xo, &yo)) return NULL;
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0 || vec_arg(&va, yo, "y", 1, &y, &ny) < 0 ||
        check(n == ny, PyExc_ValueError, "x and y need the same length") < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) y[i] += alpha * x[i];
    vec_release(&va);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(op_sum_squares_doc, "sum_squares(x) -> float\n\nsum of x[i]^2 (the squared global gradient norm).");
static PyObject *op_sum_squares(PyObject *self, PyObject *xo)
{
    (void)self;
    double *x, sum = 0.0;
    Py_ssize_t n;
    VecArgs va = {.n = 0};
    if (vec_arg(&va, xo, "x", 0, &x, &n) < 0) {
        vec_release(&va);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) sum += x[i] * x[i];
    vec_release(&va);
    return PyFloat_FromDouble(sum);
}

PyDoc_STRVAR(op_adam_doc, "adam(params, grads, m, v, lr, beta1, beta2, eps, t, grad_scale)\n\n"
             "One Adam update with bias correction for step t >= 1, gradients first scaled by grad_scale.");
static PyObject *op_adam(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *po, *go, *mo, *vo;
    double lr, b1, b2, eps, scale, *p, *g, *m, *v;
    long long t;
    Py_ssize_t n, ng, nm, nv;
    VecArgs va = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOOddddLd:adam", &po, &go, &mo, &vo, &lr, &b1, &b2, &eps, &t, &scale)) return NULL;
    if (vec_arg(&va, po, "params", 1, &p, &n) < 0 || vec_arg(&va, go, "grads", 1, &g, &ng) < 0 ||
        vec_arg(&va, mo, "m", 1, &m, &nm) < 0 || vec_arg(&va, vo, "v", 1, &v, &nv) < 0 ||
        check(n == ng && n == nm && n == nv, PyExc_ValueError, "params, grads, m and v need the same length") < 0 ||
        check(t >= 1 && b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1 && eps > 0, PyExc_ValueError,
              "need t >= 1, 0 <= beta1, beta2 < 1 and eps > 0") < 0) {
        vec_release(&va);
        return NULL;
    }
    const double c1 = 1.0 - b1, c2 = 1.0 - b2, bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    for (Py_ssize_t i = 0; i < n; i++) {
        const double gi = g[i] * scale;
        g[i] = gi;
        m[i] = b1 * m[i] + c1 * gi;
        v[i] = b2 * v[i] + c2 * gi * gi;
        p[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps);
    }
    vec_release(&va);
    Py_RETURN_NONE;
}

#define OPS_METHODS \
    {"embedding", op_embedding, METH_VARARGS, op_embedding_doc}, \
    {"embedding_backward", op_embedding_backward, METH_VARARGS, op_embedding_backward_doc}, \
    {"rmsnorm", op_rmsnorm, METH_VARARGS, op_rmsnorm_doc}, \
    {"rmsnorm_backward", op_rmsnorm_backward, METH_VARARGS, op_rmsnorm_backward_doc}, \
    {"linear", op_linear, METH_VARARGS, op_linear_doc}, \
    {"linear_backward", op_linear_backward, METH_VARARGS, op_linear_backward_doc}, \
    {"relu_act", op_relu_act, METH_VARARGS, op_relu_act_doc}, \
    {"relu_act_backward", op_relu_act_backward, METH_VARARGS, op_relu_act_backward_doc}, \
    {"attention", op_attention, METH_VARARGS, op_attention_doc}, \
    {"attention_backward", op_attention_backward, METH_VARARGS, op_attention_backward_doc}, \
    {"cross_entropy", op_cross_entropy, METH_VARARGS, op_cross_entropy_doc}, \
    {"cross_entropy_backward", op_cross_entropy_backward, METH_VARARGS, op_cross_entropy_backward_doc}, \
    {"add", op_add, METH_VARARGS, op_add_doc}, \
    {"axpy", op_axpy, METH_VARARGS, op_axpy_doc}, \
    {"sum_squares", op_sum_squares, METH_O, op_sum_squares_doc}, \
    {"adam", op_adam, METH_VARARGS, op_adam_doc}

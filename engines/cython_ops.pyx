# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The per-op kernels of train.py, compiled by Cython over typed memoryviews of flat buffers.

Each function is one op of the model, forward or backward, on the activations of one document: a
``(T, C)`` matrix per activation, rows = positions. The Python driver (engines/cython_engine.py) calls
them in the same order train.py composes its ops, so this is the rung between pure Python (an
interpreter loop per element) and fastops.c (one C call per training step): the inner loops run in C,
the sequencing of ops stays in Python.

Conventions, as in llm.c:
  * weights are row-major ``(out, in)`` and a linear layer computes ``y[t, i] = sum_j W[i, j] x[t, j]``;
  * buffers are allocated for ``block_size`` rows, and ``T`` says how many rows the current document uses;
  * backward kernels ADD into their gradient buffers (an activation feeding several ops sums their
    gradients), so the caller zeroes those buffers first;
  * every kernel works on float64 or float32 (``floating``: Cython compiles both), all arguments alike.

Bounds checks are off inside the loops; each kernel checks shapes once on entry, so a wrong call is a
ValueError, not a crash.
"""

from cython cimport floating
from libc.math cimport exp, log, sqrt
from libc.stdlib cimport free, malloc


cdef inline int require(bint ok, str message) except -1:
    if not ok:
        raise ValueError(message)
    return 0


cdef inline int check_rows(int T, Py_ssize_t rows, str name) except -1:
    return require(0 <= T <= rows, f"{name}: T={T} outside the buffer's {rows} rows")


def zero(floating[::1] buf):
    """buf[:] = 0 (one call clears all of a layer's gradient scratch, which shares one buffer)."""
    cdef Py_ssize_t i
    for i in range(buf.shape[0]):
        buf[i] = 0


# ---- embedding: x[t] = wte[tokens[t]] + wpe[t] ----

def embed_forward(list tokens, floating[:, ::1] wte, floating[:, ::1] wpe, floating[:, ::1] out):
    cdef int T = len(tokens), t, tok
    cdef Py_ssize_t c, C = wte.shape[1]
    require(T <= wpe.shape[0], f"embed: {T} tokens but only {wpe.shape[0]} positions")
    require(wpe.shape[1] == C and out.shape[1] == C, "embed: width mismatch")
    check_rows(T, out.shape[0], "embed")
    for t in range(T):
        tok = tokens[t]
        require(0 <= tok < wte.shape[0], f"token id {tok} out of range [0, {wte.shape[0]})")
        for c in range(C):
            out[t, c] = wte[tok, c] + wpe[t, c]


def embed_backward(list tokens, floating[:, ::1] dout, floating[:, ::1] dwte, floating[:, ::1] dwpe):
    cdef int T = len(tokens), t, tok
    cdef Py_ssize_t c, C = dwte.shape[1]
    require(T <= dwpe.shape[0] and T <= dout.shape[0], "embed_backward: too many tokens")
    require(dwpe.shape[1] == C and dout.shape[1] == C, "embed_backward: width mismatch")
    for t in range(T):
        tok = tokens[t]
        require(0 <= tok < dwte.shape[0], f"token id {tok} out of range [0, {dwte.shape[0]})")
        for c in range(C):
            dwte[tok, c] += dout[t, c]
            dwpe[t, c] += dout[t, c]


# ---- RMSNorm without gain: y = x * inv, inv = 1 / sqrt(mean(x^2) + eps) ----

def rmsnorm_forward(floating[:, ::1] x, floating[:, ::1] out, floating[::1] inv, int T, double eps=1e-5):
    cdef Py_ssize_t t, c, C = x.shape[1]
    cdef floating ss, s
    check_rows(T, min(x.shape[0], out.shape[0], inv.shape[0]), "rmsnorm")
    require(out.shape[1] == C, "rmsnorm: width mismatch")
    for t in range(T):
        ss = 0
        for c in range(C):
            ss += x[t, c] * x[t, c]
        s = 1.0 / sqrt(ss / C + eps)
        inv[t] = s  # kept for the backward pass
        for c in range(C):
            out[t, c] = x[t, c] * s


def rmsnorm_backward(floating[:, ::1] x, floating[::1] inv, floating[:, ::1] dout, floating[:, ::1] dx, int T):
    """dx += inv * dout - inv^3 (x . dout) / C * x   (the Jacobian of x * inv(x), applied to dout)."""
    cdef Py_ssize_t t, c, C = x.shape[1]
    cdef floating xg, s, k
    check_rows(T, min(x.shape[0], inv.shape[0], dout.shape[0], dx.shape[0]), "rmsnorm_backward")
    require(dout.shape[1] == C and dx.shape[1] == C, "rmsnorm_backward: width mismatch")
    for t in range(T):
        s = inv[t]
        xg = 0
        for c in range(C):
            xg += x[t, c] * dout[t, c]
        k = s * s * s * xg / C
        for c in range(C):
            dx[t, c] += s * dout[t, c] - k * x[t, c]


# ---- linear: y = x W^T ----

def linear_forward(floating[:, ::1] x, floating[:, ::1] W, floating[:, ::1] out, int T):
    cdef Py_ssize_t t, i, j, n_out = W.shape[0], n_in = W.shape[1]
    cdef floating acc
    check_rows(T, min(x.shape[0], out.shape[0]), "linear")
    require(x.shape[1] == n_in and out.shape[1] == n_out,
            f"linear: x is (*, {x.shape[1]}), W is ({n_out}, {n_in}), out is (*, {out.shape[1]})")
    for t in range(T):
        for i in range(n_out):
            acc = 0
            for j in range(n_in):
                acc += W[i, j] * x[t, j]
            out[t, i] = acc


def linear_backward(floating[:, ::1] x, floating[:, ::1] W, floating[:, ::1] dout, floating[:, ::1] dx,
                    floating[:, ::1] dW, int T):
    """dx += dout W;  dW += dout^T x."""
    cdef Py_ssize_t t, i, j, n_out = W.shape[0], n_in = W.shape[1]
    cdef floating g
    check_rows(T, min(x.shape[0], dout.shape[0], dx.shape[0]), "linear_backward")
    require(x.shape[1] == n_in and dx.shape[1] == n_in and dout.shape[1] == n_out
            and dW.shape[0] == n_out and dW.shape[1] == n_in, "linear_backward: shape mismatch")
    for t in range(T):
        for i in range(n_out):
            g = dout[t, i]
            if g == 0:  # units a ReLU switched off contribute nothing
                continue
            for j in range(n_in):
                dx[t, j] += g * W[i, j]
                dW[i, j] += g * x[t, j]


def residual_forward(floating[:, ::1] a, floating[:, ::1] b, floating[:, ::1] out, int T):
    """out = a + b (the backward pass needs no kernel: both inputs receive dout)."""
    cdef Py_ssize_t t, c, C = a.shape[1]
    check_rows(T, min(a.shape[0], b.shape[0], out.shape[0]), "residual")
    require(b.shape[1] == C and out.shape[1] == C, "residual: width mismatch")
    for t in range(T):
        for c in range(C):
            out[t, c] = a[t, c] + b[t, c]


# ---- activation: relu(x)^2 or relu(x) ----

def relu_forward(floating[:, ::1] x, floating[:, ::1] out, bint squared, int T):
    cdef Py_ssize_t t, c, C = x.shape[1]
    cdef floating v
    check_rows(T, min(x.shape[0], out.shape[0]), "relu")
    require(out.shape[1] == C, "relu: width mismatch")
    for t in range(T):
        for c in range(C):
            v = x[t, c]
            out[t, c] = (v * v if squared else v) if v > 0 else 0


def relu_backward(floating[:, ::1] x, floating[:, ::1] dout, floating[:, ::1] dx, bint squared, int T):
    cdef Py_ssize_t t, c, C = x.shape[1]
    cdef floating v
    check_rows(T, min(x.shape[0], dout.shape[0], dx.shape[0]), "relu_backward")
    require(dout.shape[1] == C and dx.shape[1] == C, "relu_backward: width mismatch")
    for t in range(T):
        for c in range(C):
            v = x[t, c]
            if v > 0:
                dx[t, c] += (2 * v * dout[t, c]) if squared else dout[t, c]


# ---- multi-head self-attention over the T positions of one document ----

def attention_forward(floating[:, ::1] q, floating[:, ::1] k, floating[:, ::1] v, floating[:, :, ::1] att,
                      floating[:, ::1] out, int n_head, int T, bint causal=True):
    """Per head h and query i: a = softmax_j(q_i.k_j / sqrt(D)) over j <= i (causal) or all j; out_i = sum_j a_j v_j.

    ``att`` (n_head, rows, rows) keeps the weights for the backward pass; masked entries are left unused.
    """
    cdef Py_ssize_t h, i, j, d, C = q.shape[1], D, hs, last
    cdef floating s, top, total, a
    cdef double scale
    require(n_head >= 1 and C % n_head == 0, f"attention: {n_head} heads do not divide width {C}")
    check_rows(T, min(q.shape[0], k.shape[0], v.shape[0], out.shape[0], att.shape[1], att.shape[2]), "attention")
    require(k.shape[1] == C and v.shape[1] == C and out.shape[1] == C and att.shape[0] == n_head,
            "attention: shape mismatch")
    D = C // n_head
    scale = 1.0 / sqrt(<double>D)
    for h in range(n_head):
        hs = h * D
        for i in range(T):
            last = i + 1 if causal else T
            for j in range(last):
                s = 0
                for d in range(D):
                    s += q[i, hs + d] * k[j, hs + d]
                att[h, i, j] = s * scale
            top = att[h, i, 0]
            for j in range(1, last):
                if att[h, i, j] > top:
                    top = att[h, i, j]
            total = 0
            for j in range(last):
                att[h, i, j] = exp(att[h, i, j] - top)
                total += att[h, i, j]
            for d in range(D):
                out[i, hs + d] = 0
            for j in range(last):
                a = att[h, i, j] / total
                att[h, i, j] = a
                for d in range(D):
                    out[i, hs + d] += a * v[j, hs + d]


def attention_backward(floating[:, ::1] q, floating[:, ::1] k, floating[:, ::1] v, floating[:, :, ::1] att,
                       floating[:, ::1] dout, floating[:, ::1] dq, floating[:, ::1] dk, floating[:, ::1] dv,
                       int n_head, int T, bint causal=True):
    """Through o = sum_j a_j v_j:  dv_j += a_j do,  da_j = do . v_j;
    through the softmax:  ds_j = a_j (da_j - sum_k a_k da_k) / sqrt(D);  dq_i += ds_j k_j,  dk_j += ds_j q_i."""
    cdef Py_ssize_t h, i, j, d, C = q.shape[1], D, hs, last
    cdef floating da_mean, g, ds, a
    cdef double scale
    cdef double* da  # da_j of one query row
    require(n_head >= 1 and C % n_head == 0, f"attention_backward: {n_head} heads do not divide width {C}")
    check_rows(T, min(q.shape[0], k.shape[0], v.shape[0], dout.shape[0], dq.shape[0], dk.shape[0], dv.shape[0],
                      att.shape[1], att.shape[2]), "attention_backward")
    require(k.shape[1] == C and v.shape[1] == C and dout.shape[1] == C and dq.shape[1] == C and dk.shape[1] == C
            and dv.shape[1] == C and att.shape[0] == n_head, "attention_backward: shape mismatch")
    D = C // n_head
    scale = 1.0 / sqrt(<double>D)
    da = <double*> malloc(max(T, 1) * sizeof(double))
    if da == NULL:
        raise MemoryError()
    for h in range(n_head):
        hs = h * D
        for i in range(T):
            last = i + 1 if causal else T
            da_mean = 0
            for j in range(last):
                a = att[h, i, j]
                g = 0
                for d in range(D):
                    g += dout[i, hs + d] * v[j, hs + d]
                    dv[j, hs + d] += a * dout[i, hs + d]
                da[j] = g
                da_mean += a * g
            for j in range(last):
                ds = att[h, i, j] * (da[j] - da_mean) * scale
                for d in range(D):
                    dq[i, hs + d] += ds * k[j, hs + d]
                    dk[j, hs + d] += ds * q[i, hs + d]
    free(da)


# ---- cross-entropy: loss_t = logsumexp(logits[t]) - logits[t, target_t] ----

def cross_entropy_forward(floating[:, ::1] logits, list targets, floating[:, ::1] probs):
    """Sum over positions of the losses; ``probs`` keeps softmax(logits) for the backward pass."""
    cdef int T = len(targets), t, target
    cdef Py_ssize_t c, V = logits.shape[1]
    cdef floating top, total
    cdef double loss = 0
    check_rows(T, min(logits.shape[0], probs.shape[0]), "cross_entropy")
    require(probs.shape[1] == V, "cross_entropy: width mismatch")
    for t in range(T):
        target = targets[t]
        require(0 <= target < V, f"target id {target} out of range [0, {V})")
        top = logits[t, 0]
        for c in range(1, V):
            if logits[t, c] > top:
                top = logits[t, c]
        total = 0
        for c in range(V):
            probs[t, c] = exp(logits[t, c] - top)
            total += probs[t, c]
        for c in range(V):
            probs[t, c] /= total
        loss += top + log(total) - logits[t, target]
    return loss


def cross_entropy_backward(floating[:, ::1] probs, list targets, floating[:, ::1] dlogits, double dloss):
    """dlogits[t] = dloss * (softmax - onehot(target)) for every position (dloss: d batch loss / d loss_t)."""
    cdef int T = len(targets), t
    cdef Py_ssize_t c, V = probs.shape[1]
    check_rows(T, min(probs.shape[0], dlogits.shape[0]), "cross_entropy_backward")
    require(dlogits.shape[1] == V, "cross_entropy_backward: width mismatch")
    for t in range(T):
        for c in range(V):
            dlogits[t, c] = dloss * probs[t, c]
        dlogits[t, <int>targets[t]] -= dloss


# ---- optimizer, over the whole flat parameter buffer ----

def sum_of_squares(floating[::1] g):
    cdef Py_ssize_t i
    cdef double acc = 0
    for i in range(g.shape[0]):
        acc += g[i] * g[i]
    return acc


def adam_update(floating[::1] params, floating[::1] grads, floating[::1] m, floating[::1] v, double lr,
                double beta1, double beta2, double eps, int t, double grad_scale=1.0):
    """One bias-corrected Adam step at update count ``t``; ``grad_scale`` applies gradient clipping."""
    cdef Py_ssize_t i, n = params.shape[0]
    cdef double step = lr / (1.0 - beta1 ** t), inv_bc2 = 1.0 / (1.0 - beta2 ** t)
    cdef floating g
    require(grads.shape[0] == n and m.shape[0] == n and v.shape[0] == n, "adam: buffers differ in length")
    require(t >= 1, f"adam: update count must be >= 1 (got {t})")
    for i in range(n):
        g = grads[i] * grad_scale
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * g * g
        params[i] -= step * m[i] / (sqrt(v[i] * inv_bc2) + eps)

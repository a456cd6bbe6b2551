/* fastops/reference.h: the portable kernels -- the same contracts as fastops/kernels_vector.h in plain C
   loops (Adam, gemm, the fused backward, RMSNorm, the MLP activation, attention's lanes_combine_rows), for CPUs without a vector instance and as the reference the kernel harness checks the vector
   instances against. */

/* Adam on elements [begin, end) of the flat buffers; grad[j] is the gradient of element begin + j. */
static TARGET void FN(adam_update)(const FN(AdamArgs) *a, ptrdiff_t begin, ptrdiff_t end, const real *grad)
{
    real *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
    for (ptrdiff_t i = begin; i < end; i++) {
        const real gi = grad[i - begin] * a->scale;
        if (a->store_grad) a->g[i] = gi;
        m[i] = a->b1 * m[i] + a->c1 * gi;
        v[i] = a->b2 * v[i] + a->c2 * gi * gi;
        p[i] -= a->lr * (m[i] * a->inv_bc1) / (R_SQRT(v[i] * a->inv_bc2) + a->eps);
    }
}

/* Portable version: row by row, the inner loop over contiguous columns (a panel's, with b_panels) for the
   compiler to vectorise. */
#define GEMM_PANEL 8
static TARGET void FN(gemm)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs,
                            const real *B, ptrdiff_t ldb, ptrdiff_t b_panels, real *Cm, ptrdiff_t ldc, int accumulate,
                            const FN(AdamArgs) *adam)
{
    const ptrdiff_t width = b_panels ? GEMM_PANEL : N;
    for (ptrdiff_t m = 0; m < M; m++) {
        real *restrict c = Cm + m * ldc;
        if (!accumulate)
            for (ptrdiff_t n = 0; n < N; n++) c[n] = 0;
        for (ptrdiff_t k = 0; k < K; k++) {
            const real a = A[m * a_rs + k * a_cs];
            for (ptrdiff_t n0 = 0; n0 < N; n0 += width) {
                const real *restrict b = b_panels ? B + n0 / width * b_panels + k * ldb : B + k * ldb + n0;
                for (ptrdiff_t n = 0; n < width && n0 + n < N; n++) c[n0 + n] += a * b[n];
            }
        }
        if (adam) FN(adam_update)(adam, c - adam->g, c - adam->g + N, c);
    }
}

/* Portable version: row by row, each loop over contiguous columns for the compiler to vectorise; the
   row's gradient goes through a scratch row (G itself without adam) into Adam. */
static inline TARGET void FN(fused_rows)(const int R, const int first, const FN(FusedArgs) *f, ptrdiff_t i,
                                         ptrdiff_t begin, ptrdiff_t end, real *g_rows)
{
    const ptrdiff_t K = f->K;
    const FN(AdamArgs) *a = f->adam;
    for (ptrdiff_t r = i; r < i + R; r++) {
        const real *restrict w = f->W + r * K;
        real *restrict dw = a ? g_rows : f->G + r * K;
        for (ptrdiff_t k = begin; k < end; k++) dw[k] = 0;
        for (ptrdiff_t t = 0; t < f->M; t++) {
            const real d = f->dyT[r * f->MP + t];
            const real *restrict x = f->x_tok + t * K;
            real *restrict dx = f->dx_tok + t * (K + DX_SKEW);
            if (first && r == i)
                for (ptrdiff_t k = begin; k < end; k++) { dx[k] = d * w[k]; dw[k] += d * x[k]; }
            else
                for (ptrdiff_t k = begin; k < end; k++) { dx[k] += d * w[k]; dw[k] += d * x[k]; }
        }
        if (a) FN(adam_update)(a, f->W - a->p + r * K + begin, f->W - a->p + r * K + end, dw + begin);
    }
}

/* ---- per-token operations on feature-major arrays: loops over MP contiguous lanes ---- */

/* y = x / sqrt(mean(x^2) + eps) for every token; inv keeps 1 / sqrt(...) for the backward pass. */
static TARGET void FN(rmsnorm_forward)(const real *x, real *y, real *inv, ptrdiff_t C, ptrdiff_t MP)
{
    for (ptrdiff_t t = 0; t < MP; t++) inv[t] = 0;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) inv[t] += x[j * MP + t] * x[j * MP + t];
    for (ptrdiff_t t = 0; t < MP; t++) inv[t] = (real)1 / R_SQRT(inv[t] / (real)C + (real)RMS_EPS);
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) y[j * MP + t] = x[j * MP + t] * inv[t];
}

/* dx (+)= inv * (dy - y * mean(y * dy)), the RMSNorm gradient written with its output y = x * inv. */
static TARGET void FN(rmsnorm_backward)(const real *y, const real *inv, const real *dy, real *dx, real *tmp,
                                        ptrdiff_t C, ptrdiff_t MP, int accumulate)
{
    for (ptrdiff_t t = 0; t < MP; t++) tmp[t] = 0;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) tmp[t] += y[j * MP + t] * dy[j * MP + t];
    for (ptrdiff_t t = 0; t < MP; t++) tmp[t] /= (real)C;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) {
            real g = inv[t] * (dy[j * MP + t] - y[j * MP + t] * tmp[t]);
            dx[j * MP + t] = accumulate ? dx[j * MP + t] + g : g;
        }
}

/* act = relu(u)^2 or relu(u), elementwise. */
static TARGET void FN(mlp_act_forward)(const real *u, real *act, ptrdiff_t n, int relu2)
{
    if (relu2)
        for (ptrdiff_t i = 0; i < n; i++) act[i] = u[i] > 0 ? u[i] * u[i] : 0;
    else
        for (ptrdiff_t i = 0; i < n; i++) act[i] = u[i] > 0 ? u[i] : 0;
}

/* d = d * act'(u), in place: 2u for relu^2, 1 for relu, 0 where u <= 0. */
static TARGET void FN(mlp_act_backward)(const real *u, real *d, ptrdiff_t n, int relu2)
{
    if (relu2)
        for (ptrdiff_t i = 0; i < n; i++) d[i] = u[i] > 0 ? (real)2 * u[i] * d[i] : 0;
    else
        for (ptrdiff_t i = 0; i < n; i++) d[i] = u[i] > 0 ? d[i] : 0;
}

/* ---- attention's inner products over token lanes ---- */

/* y[r y_next + t] = sum_i a[r a_next + i a_stride] x[i ld + t] for r < count and the n lanes t (n a
   multiple of LANE_PAD), each sum in i order; only the first `keep` lanes of a y row are written. */
static TARGET void FN(lanes_combine_rows)(real *y, ptrdiff_t y_next, ptrdiff_t keep, const real *a, ptrdiff_t a_next,
                                          ptrdiff_t a_stride, const real *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                                          ptrdiff_t count)
{
    for (ptrdiff_t r = 0; r < count; r++)
        for (ptrdiff_t t0 = 0; t0 < n && t0 < keep; t0 += LANE_PAD) {
            real acc[LANE_PAD] = {0};
            for (ptrdiff_t i = 0; i < rows; i++)
                for (int t = 0; t < LANE_PAD; t++) acc[t] += a[r * a_next + i * a_stride] * x[i * ld + t0 + t];
            memcpy(y + r * y_next + t0, acc, (size_t)(keep - t0 < LANE_PAD ? keep - t0 : LANE_PAD) * sizeof(real));
        }
}

/* fastops/linear.h: Adam and the linear layers of one kernel instance -- forward, both gradients, and
   the update fused into the backward pass -- on top of the instance's kernels (vector or reference). */

/* ---- Adam with bias correction, as train.py writes it ----
   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m / bc1) / (sqrt(v / bc2) + eps),
   after scaling g by `scale` (gradient clipping). Elementwise, so any split over threads or tiles
   gives the same bits. */
typedef struct {
    real *p, *g, *m, *v;
    real b1, b2, c1, c2, inv_bc1, inv_bc2, eps, lr, scale;
    int store_grad;         /* also write the scaled gradient back to g */
} FN(AdamArgs);


/* ---- small batches: both gradients of a linear layer and its update in one pass over W ----
   With a few tokens, each weight is used in a handful of multiply-adds per step, so a step's time is
   the passes over W, m and v. For M <= FUSED_MAX_TOKENS the two products above become one walk down
   W's rows, FUSED_ROWS at a time, that reads each old weight once:
       dX[t][k] += dY[t][i] W[i][k]         (dX token-major in cache, summed over rows in order)
       dW[i][k]  = sum_t dY[t][i] X[t][k]   (in registers), then Adam on it at once -- or into G.
   The next group's W, m and v are prefetched: the loop's few loads per weight would not keep enough
   memory requests in flight (without it this pass took 2.3x as long at (128,4,32)). Measured and left
   out: a separate Adam loop over a gradient scratch (20% slower), 2 or 8 rows per group.
   Threads split the columns k, so every sum runs in the same order whatever the thread count. */
typedef struct {
    const real *W;
    real *G;                    /* the gradient of W: written when adam is NULL */
    ptrdiff_t N, K, M, MP;
    const real *dyT, *x_tok;    /* dY^T (N x MP) feature-major, X (M x K) token-major */
    real *dx_tok;               /* dX (M x K) token-major with row stride K + DX_SKEW, overwritten */
    real *g_rows;               /* per thread: a row of K for the portable kernel's gradient */
    const FN(AdamArgs) *adam;
} FN(FusedArgs);


#ifdef FASTOPS_VECTOR
#include "kernels_vector.h"
#else
#include "reference.h"
#endif


/* Adam on elements [begin, end), reading the gradients from the grads buffer. */
static TARGET void FN(adam_range)(const FN(AdamArgs) *a, ptrdiff_t begin, ptrdiff_t end)
{
    FN(adam_update)(a, begin, end, a->g + begin);
}

static TARGET void FN(adam_task)(void *arg, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    (void)thread;
    FN(adam_range)(arg, begin, end);
}

static TARGET FN(AdamArgs) FN(adam_args)(Model *g, double lr, double grad_scale)
{
    const double bc1 = 1.0 - pow(g->beta1, (double)g->step), bc2 = 1.0 - pow(g->beta2, (double)g->step);
    FN(AdamArgs) a = {g->buf[BUF_PARAMS], g->buf[BUF_GRADS], g->buf[BUF_M], g->buf[BUF_V],
                      (real)g->beta1, (real)g->beta2, (real)(1.0 - g->beta1), (real)(1.0 - g->beta2),
                      (real)(1.0 / bc1), (real)(1.0 / bc2), (real)g->eps, (real)lr,
                      (real)grad_scale, grad_scale != 1.0};
    return a;
}

/* One Adam update of every parameter from the gradients in the grads buffer. */
static TARGET void FN(adam)(Model *g, double lr, double grad_scale)
{
    PROFILE_START();
    FN(AdamArgs) a = FN(adam_args)(g, lr, grad_scale);
    parallel_for(&g->pool, FN(adam_task), &a, g->s.n_params, 4096);
    PROFILE_LAP(&g->profile, PHASE_ADAM);
}


/* gemm spread over the pool's threads by blocks of rows of C. */
typedef struct {
    ptrdiff_t N, K, a_rs, a_cs, ldb, b_panels, ldc;
    const real *A, *B;
    real *C;
    int accumulate;
    const FN(AdamArgs) *adam;
} FN(GemmArgs);

static TARGET void FN(gemm_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    const FN(GemmArgs) *g = p;
    (void)thread;
    FN(gemm)(end - begin, g->N, g->K, g->A + begin * g->a_rs, g->a_rs, g->a_cs, g->B, g->ldb, g->b_panels,
             g->C + begin * g->ldc, g->ldc, g->accumulate, g->adam);
}

static TARGET void FN(pgemm)(Pool *pool, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs,
                             ptrdiff_t a_cs, const real *B, ptrdiff_t ldb, ptrdiff_t b_panels, real *Cm, ptrdiff_t ldc,
                             int accumulate, const FN(AdamArgs) *adam)
{
    FN(GemmArgs) g = {N, K, a_rs, a_cs, ldb, b_panels, ldc, A, B, Cm, accumulate, adam};
    parallel_for(pool, FN(gemm_task), &g, M, GEMM_MR);
}

/* The linear layer y = W x for all tokens at once, and its two gradients. W is (N x K) row-major. */

/* Y^T (N x MP) = W X^T, X^T (K x MP) feature-major. */
static TARGET void FN(linear_forward)(Pool *pool, const real *W, ptrdiff_t N, ptrdiff_t K, const real *xT, real *yT,
                                      ptrdiff_t MP, int accumulate)
{
    FN(pgemm)(pool, N, MP, K, W, K, 1, xT, MP, 0, yT, MP, accumulate, NULL);
}

/* dX^T (K x MP) = W^T dY^T: row i of W^T is column i of W, hence the strides (1, K). */
static TARGET void FN(linear_backward_input)(Pool *pool, const real *W, ptrdiff_t N, ptrdiff_t K, const real *dyT,
                                             real *dxT, ptrdiff_t MP)
{
    FN(pgemm)(pool, K, MP, N, W, 1, K, dyT, MP, 0, dxT, MP, 0, NULL);
}

/* Whether the weight gradient's product takes X in column panels (to_panels) rather than token-major: where
   X's rows are long. Token-major rows K apart are read one line per token, which the L1 prefetcher follows
   up to 2 KiB strides and no further, and rows 4 KiB apart all fall in one L1 set; panels make that one
   stream. Short rows stay token-major: a panel wider than the row is mostly zeros. */
#ifndef X_PANEL_MIN_ROW_BYTES
#define X_PANEL_MIN_ROW_BYTES 1024
#endif
static inline int FN(x_in_panels)(ptrdiff_t K)
{
    return K * (ptrdiff_t)sizeof(real) >= X_PANEL_MIN_ROW_BYTES;
}

/* dW (N x K) = dY^T X over the M real tokens; X as copy_weight_input leaves it. Overwrites dW: each
   weight matrix gets its whole gradient from this one product. With `adam`, updates W instead (see gemm). */
static TARGET void FN(linear_backward_weight)(Pool *pool, real *dW, ptrdiff_t N, ptrdiff_t K, const real *dyT,
                                              const real *x, ptrdiff_t M, ptrdiff_t MP, const FN(AdamArgs) *adam)
{
    const int panels = FN(x_in_panels)(K);
    FN(pgemm)(pool, N, K, M, dyT, MP, 1, x, panels ? GEMM_PANEL : K, panels ? GEMM_PANEL * M : 0, dW, K, 0, adam);
}


static TARGET void FN(linear_backward_fused_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    const FN(FusedArgs) *f = p;
    real *g_rows = f->g_rows + (ptrdiff_t)thread * f->K;
    /* the first group stores dX, the others add to it */
    ptrdiff_t i = f->N >= FUSED_ROWS ? FUSED_ROWS : 1;
    if (i == FUSED_ROWS) FN(fused_rows)(FUSED_ROWS, 1, f, 0, begin, end, g_rows);
    else FN(fused_rows)(1, 1, f, 0, begin, end, g_rows);
    for (; i + FUSED_ROWS <= f->N; i += FUSED_ROWS) FN(fused_rows)(FUSED_ROWS, 0, f, i, begin, end, g_rows);
    for (; i < f->N; i++) FN(fused_rows)(1, 0, f, i, begin, end, g_rows);
}

/* x[t][k] = xT[k][t] for features [k0, k1) and tokens [t0, t1): one line of xT per k. */
static inline TARGET void FN(copy_token_major)(const real *xT, real *x, ptrdiff_t K, ptrdiff_t MP, ptrdiff_t k0,
                                               ptrdiff_t k1, ptrdiff_t t0, ptrdiff_t t1)
{
    for (ptrdiff_t k = k0; k < k1; k++)
        for (ptrdiff_t t = t0; t < t1; t++) x[t * K + k] = xT[k * MP + t];
}

/* dst[j][i] = src[i][j] for a 4 x 4 block (rows src_ld and dst_ld apart): 4 short row segments read and 4
   written, which the compiler keeps in registers (it turns them into shuffles), where copying one value at
   a time stored every value on its own (1.4x the time at K = 128 and 512, hot caches). */
static inline __attribute__((always_inline)) TARGET void FN(transpose_4x4)(const real *src, ptrdiff_t src_ld,
                                                                           real *dst, ptrdiff_t dst_ld)
{
    real block[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) block[i][j] = src[i * src_ld + j];
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < 4; i++) dst[j * dst_ld + i] = block[i][j];
}

/* Token-major copy (M x K) of a feature-major array (K x MP), in 4 x 4 blocks. The rows' lines 16 values
   ahead are prefetched, once per line: xT usually comes from beyond L2. */
static TARGET void FN(to_token_major)(const real *xT, real *x, ptrdiff_t K, ptrdiff_t M, ptrdiff_t MP)
{
    ptrdiff_t t0 = 0;
    for (; t0 + 4 <= M; t0 += 4) {
        const int new_line = (t0 * (ptrdiff_t)sizeof(real)) % 64 == 0;
        ptrdiff_t k = 0;
        for (; k + 4 <= K; k += 4) {
            const real *src = xT + k * MP + t0;
            if (new_line)
                for (int i = 0; i < 4; i++) __builtin_prefetch(src + i * MP + 16);
            FN(transpose_4x4)(src, MP, x + t0 * K + k, K);
        }
        FN(copy_token_major)(xT, x, K, MP, k, K, t0, t0 + 4);
    }
    FN(copy_token_major)(xT, x, K, MP, 0, K, t0, M);   /* the last M % 4 tokens */
}

/* X (M tokens x K features) in column panels of GEMM_PANEL features, from its feature-major copy xT
   (K x MP): panel j holds, token after token, features j GEMM_PANEL .. + GEMM_PANEL - 1, at
   xp + j GEMM_PANEL M (the last panel's missing features are zeros): the weight gradient's product reads
   its B, a panel per register tile, token after token, as one stream. The copy writes contiguously, 4 x 4
   blocks at a time. */
static TARGET void FN(to_panels)(const real *xT, real *xp, ptrdiff_t K, ptrdiff_t M, ptrdiff_t MP)
{
    for (ptrdiff_t k0 = 0; k0 < K; k0 += GEMM_PANEL) {
        real *panel = xp + k0 * M;
        const ptrdiff_t width = K - k0 < GEMM_PANEL ? K - k0 : GEMM_PANEL;
        ptrdiff_t t0 = 0;
        if (width == GEMM_PANEL)
            for (; t0 + 4 <= M; t0 += 4)
                for (ptrdiff_t c = 0; c < GEMM_PANEL; c += 4)
                    FN(transpose_4x4)(xT + (k0 + c) * MP + t0, MP, panel + t0 * GEMM_PANEL + c, GEMM_PANEL);
        for (; t0 < M; t0++)
            for (ptrdiff_t c = 0; c < GEMM_PANEL; c++)
                panel[t0 * GEMM_PANEL + c] = c < width ? xT[(k0 + c) * MP + t0] : 0;
    }
}

/* X for linear_backward_weight, from the layer's input xT (K x MP): in panels or token-major (x_in_panels). */
static TARGET void FN(copy_weight_input)(const real *xT, real *x, ptrdiff_t K, ptrdiff_t M, ptrdiff_t MP)
{
    if (FN(x_in_panels)(K)) FN(to_panels)(xT, x, K, M, MP);
    else FN(to_token_major)(xT, x, K, M, MP);
}

/* Feature-major copy (K x MP) of a token-major array (M x K, row stride ld); padding lanes get zeros. */
static TARGET void FN(from_token_major)(const real *x, ptrdiff_t ld, real *xT, ptrdiff_t K, ptrdiff_t M, ptrdiff_t MP)
{
    for (ptrdiff_t k = 0; k < K; k++) {
        for (ptrdiff_t t = 0; t < M; t++) xT[k * MP + t] = x[t * ld + k];
        for (ptrdiff_t t = M; t < MP; t++) xT[k * MP + t] = 0;
    }
}

/* Both gradients of y = W x over the batch -- dX^T into dxT (K x MP), dW into dW or, with adam, W's
   update -- reading each old weight before it changes. xT is the layer's input (K x MP). */
static TARGET void FN(linear_backward)(Pool *pool, FN(Work) *w, const real *W, real *dW, ptrdiff_t N, ptrdiff_t K,
                                       const real *dyT, const real *xT, real *dxT, ptrdiff_t M,
                                       const FN(AdamArgs) *adam)
{
    if (M <= FUSED_MAX_TOKENS) {
        FN(to_token_major)(xT, w->tok_major, K, M, w->MP);
        FN(FusedArgs) f = {W, dW, N, K, M, w->MP, dyT, w->tok_major, w->dx_tok, w->g_rows, adam};
        parallel_for(pool, FN(linear_backward_fused_task), &f, K, 16);
        FN(from_token_major)(w->dx_tok, K + DX_SKEW, dxT, K, M, w->MP);
    } else {
        FN(copy_weight_input)(xT, w->tok_major, K, M, w->MP);
        FN(linear_backward_input)(pool, W, N, K, dyT, dxT, w->MP);
        FN(linear_backward_weight)(pool, dW, N, K, dyT, w->tok_major, M, w->MP, adam);
    }
}


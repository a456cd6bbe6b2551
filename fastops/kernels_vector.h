/* fastops/kernels_vector.h: the optimised kernels, written once against the vector layer (fastops/simd.h)
   and compiled for every vector instruction set: Adam on vectors, gemm's register tile, the fused
   small-batch backward pass, RMSNorm, the MLP activation and attention's lanes_combine_rows. fastops/reference.h
   has the same in plain C. */

/* Adam on one vector of gradients g for the (masked) elements at index i; divisions by bc1 and bc2
   become multiplications by their inverses. The square root and the last division are the hardware's
   (correctly rounded, as in train.py): they run on their own unit, beside the multiply-adds of the
   weight gradient that feeds this update. */
static inline __attribute__((always_inline)) TARGET void FN(adam_vector)(const FN(AdamArgs) *a, ptrdiff_t i,
                                                                         VREAL g, VMASK mask)
{
    g = VMUL(g, VSET1(a->scale));
    const VREAL m = VADD(VMUL(VSET1(a->b1), VLOAD_MASKED(mask, a->m + i)), VMUL(VSET1(a->c1), g));
    const VREAL v = VADD(VMUL(VSET1(a->b2), VLOAD_MASKED(mask, a->v + i)), VMUL(VMUL(VSET1(a->c2), g), g));
    const VREAL denom = VADD(VSQRT(VMUL(v, VSET1(a->inv_bc2))), VSET1(a->eps));
    const VREAL step = VDIV(VMUL(VSET1(a->lr), VMUL(m, VSET1(a->inv_bc1))), denom);
    if (a->store_grad) VSTORE_MASKED(a->g + i, mask, g);
    VSTORE_MASKED(a->m + i, mask, m);
    VSTORE_MASKED(a->v + i, mask, v);
    VSTORE_MASKED(a->p + i, mask, VSUB(VLOAD_MASKED(mask, a->p + i), step));
}

/* Adam on elements [begin, end) of the flat buffers; grad[j] is the gradient of element begin + j. */
static TARGET void FN(adam_update)(const FN(AdamArgs) *a, ptrdiff_t begin, ptrdiff_t end, const real *grad)
{
    ptrdiff_t i = begin;
    for (; i + VW <= end; i += VW) FN(adam_vector)(a, i, VLOAD(grad + (i - begin)), VMASK_ALL);
    if (i < end) FN(adam_vector)(a, i, VLOAD_MASKED(VMASK_FIRST(end - i), grad + (i - begin)), VMASK_FIRST(end - i));
}

#ifndef GEMM_MB_TILES
#define GEMM_MB_TILES 16
#endif
#ifndef GEMM_B_KB
#define GEMM_B_KB 256
#endif
#define GEMM_MB (GEMM_MR * GEMM_MB_TILES)   /* rows of A per cache block of a long sum */
#define GEMM_KB_COLUMNS 128                 /* the K block when A is read down its columns (and packed) */
#define GEMM_B_BYTES (GEMM_B_KB * 1024)     /* bytes of B per column block of a row-by-row pass */

/* ---- matrix product: C (M x N) = or += A (M x K) B (K x N); A[m][k] = A[m*a_rs + k*a_cs] ----
   B[k][n] = B[k*ldb + n], or, with b_panels, B in column panels of ldb = GEMM_PANEL columns (the register
   tile's width): B[k][n] = B[(n / GEMM_PANEL) b_panels + k GEMM_PANEL + n % GEMM_PANEL].
   With `adam`, C is the gradient of the parameters at the same offset: instead of being stored it is
   applied to them right away, while the tile is still in registers (one pass over the weights, not two). */
#define GEMM_PANEL (2 * VW)


/* A register tile of MR (<= GEMM_MR) rows x NR (<= 2) vectors of C, the last vector masked to the columns that
   exist. Inlined with constant MR, NR; the accumulators are named variables, not an array, so that
   they stay in registers (GCC keeps a 1 KB array of vectors in memory). */
static inline __attribute__((always_inline)) TARGET void
FN(gemm_tile)(const int MR, const int NR, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs,
              const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc, int accumulate, VMASK last,
              const FN(AdamArgs) *adam)
{
    const VMASK mask0 = NR == 1 ? last : VMASK_ALL;
    VREAL c00 = VZERO(), c10 = VZERO(), c20 = VZERO(), c30 = VZERO(), c40 = VZERO(), c50 = VZERO(),
          c60 = VZERO(), c70 = VZERO(), c01 = VZERO(), c11 = VZERO(), c21 = VZERO(), c31 = VZERO(),
          c41 = VZERO(), c51 = VZERO(), c61 = VZERO(), c71 = VZERO();
#define TILE_ROWS(DO) DO(0) DO(1) DO(2) DO(3) DO(4) DO(5) DO(6) DO(7)
#define LOAD_ROW(r) if (MR > r && accumulate) {                                                   \
        c##r##0 = VLOAD_MASKED(mask0, Cm + r * ldc);                                             \
        if (NR == 2) c##r##1 = VLOAD_MASKED(last, Cm + r * ldc + VW); }
#define FMA_ROW(r) if (MR > r) {                                                                  \
        const VREAL ar = VSET1(a[r * a_rs]);                                                     \
        c##r##0 = VFMA(ar, b0, c##r##0);                                                         \
        if (NR == 2) c##r##1 = VFMA(ar, b1, c##r##1); }
#define STORE_ROW(r) if (MR > r) {                                                                \
        if (adam) FN(adam_vector)(adam, Cm + r * ldc - adam->g, c##r##0, mask0);                 \
        else VSTORE_MASKED(Cm + r * ldc, mask0, c##r##0);                                        \
        if (NR == 2) {                                                                           \
            if (adam) FN(adam_vector)(adam, Cm + r * ldc + VW - adam->g, c##r##1, last);         \
            else VSTORE_MASKED(Cm + r * ldc + VW, last, c##r##1); } }
    TILE_ROWS(LOAD_ROW)
    for (ptrdiff_t k = 0; k < K; k++) {
        const real *b = B + k * ldb, *a = A + k * a_cs;
        const VREAL b0 = VLOAD_MASKED(mask0, b);
        const VREAL b1 = NR == 2 ? VLOAD_MASKED(last, b + VW) : b0;
        TILE_ROWS(FMA_ROW)
    }
    TILE_ROWS(STORE_ROW)
#undef TILE_ROWS
#undef LOAD_ROW
#undef FMA_ROW
#undef STORE_ROW
}

/* The tile of C at rows m0.., columns n0.. (up to GEMM_MR rows, 2 vectors), dispatched to a constant shape. */
static TARGET void FN(gemm_block)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs,
                                  ptrdiff_t a_cs, const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc,
                                  int accumulate, const FN(AdamArgs) *adam, ptrdiff_t m0, ptrdiff_t n0)
{
    const ptrdiff_t cols = N - n0 < 2 * VW ? N - n0 : 2 * VW;
    const int rows = M - m0 < GEMM_MR ? (int)(M - m0) : GEMM_MR, NR = cols > VW ? 2 : 1;
    const VMASK last = VMASK_FIRST(cols - (NR - 1) * VW);
    const real *a = A + m0 * a_rs, *b = B + n0;
    real *c = Cm + m0 * ldc + n0;
    /* Full tiles pass the constant full mask: without mask registers (lane-count masks) a variable one
       would leave a branch on every load of the k loop. */
    const int full = cols == NR * VW;
#define TILE(mr, nr) (full ? FN(gemm_tile)(mr, nr, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, VMASK_ALL, adam) \
                           : FN(gemm_tile)(mr, nr, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last, adam))
    switch (rows * 2 + NR - 1) {
    case 2: TILE(1, 1); break;  case 3: TILE(1, 2); break;
    case 4: TILE(2, 1); break;  case 5: TILE(2, 2); break;
    case 6: TILE(3, 1); break;  case 7: TILE(3, 2); break;
    case 8: TILE(4, 1); break;  case 9: TILE(4, 2); break;
    case 10: TILE(5, 1); break; case 11: TILE(5, 2); break;
    case 12: TILE(6, 1); break;
#if GEMM_MR > 6
    case 13: TILE(6, 2); break;
    case 14: TILE(7, 1); break; case 15: TILE(7, 2); break;
    case 16: TILE(8, 1); break;
#endif
    default: TILE(GEMM_MR, 2); break;
    }
#undef TILE
}

/* gemm_block with B row-major or in panels: a panel's tile is the tile at column 0 of the narrower product
   whose B is that panel and whose C starts at column n0. (gemm_block itself stays as it was: with the panel
   stride as one more argument there, small b32 float32 AVX2 steps took 1.06-1.075x the time, interleaved.) */
static inline __attribute__((always_inline)) TARGET void
FN(gemm_block_at)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs, const real *B,
                  ptrdiff_t ldb, ptrdiff_t b_panels, real *Cm, ptrdiff_t ldc, int accumulate,
                  const FN(AdamArgs) *adam, ptrdiff_t m0, ptrdiff_t n0)
{
    if (b_panels)
        FN(gemm_block)(M, N - n0 < GEMM_PANEL ? N - n0 : GEMM_PANEL, K, A, a_rs, a_cs, B + n0 / GEMM_PANEL * b_panels,
                       GEMM_PANEL, Cm + n0, ldc, accumulate, adam, m0, 0);
    else
        FN(gemm_block)(M, N, K, A, a_rs, a_cs, B, ldb, Cm, ldc, accumulate, adam, m0, n0);
}

/* Rows [m1, end) of A, k from 0 to kb, copied tile by tile: the tile of rows m0.. holds, at pack + (m0 - m1) kb,
   for each k the GEMM_MR values A[m0 + r][k] (rows past `end` left unset: no tile reads them). */
static inline TARGET void FN(pack_rows)(real *pack, const real *a, ptrdiff_t a_rs, ptrdiff_t a_cs, ptrdiff_t m1,
                                        ptrdiff_t end, ptrdiff_t kb)
{
    if (a_rs == 1) {
        /* A = W^T: the tiles' values for one k are a run of W's row k, so the copy walks along rows. Tile by
           tile, down W's columns, each value came from a new line (at K = 512 a new page), mostly a miss:
           3-4% of a medium batch-32 step went here. The full tiles' constant count makes vector copies. */
        for (ptrdiff_t k = 0; k < kb; k++) {
            const real *row = a + k * a_cs;
            ptrdiff_t m0 = m1;
            for (; m0 + GEMM_MR <= end; m0 += GEMM_MR)
                for (int r = 0; r < GEMM_MR; r++) pack[(m0 - m1) * kb + k * GEMM_MR + r] = row[m0 + r];
            for (ptrdiff_t r = 0; m0 + r < end; r++) pack[(m0 - m1) * kb + k * GEMM_MR + r] = row[m0 + r];
        }
        return;
    }
    for (ptrdiff_t m0 = m1; m0 < end; m0 += GEMM_MR)
        for (ptrdiff_t k = 0; k < kb; k++)
            for (ptrdiff_t r = 0; r < GEMM_MR && m0 + r < end; r++)
                pack[(m0 - m1) * kb + k * GEMM_MR + r] = a[(m0 + r) * a_rs + k * a_cs];
}

static TARGET void FN(gemm)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs,
                            const real *B, ptrdiff_t ldb, ptrdiff_t b_panels, real *Cm, ptrdiff_t ldc, int accumulate,
                            const FN(AdamArgs) *adam)
{
    /* Cache blocking, so that what a block reuses stays close while it is reused:
       - K in blocks: 128 when A is read down its columns (W^T, copied block by block into k-major
         tiles that fit L2; measured: 16 halves the speed, and so does no blocking at K = 384), 256 for
         long rows (K > 512: the wide MLP layer), else all of K;
       - long sums: GEMM_MB rows of A (~100-200 KB, in L2) against every column panel of B (in L1), so
         A is read from memory once, not once per panel (measured: 1.5x on (512,4,32) batch 32);
       - short sums or an Adam update: row after row, so that C and the Adam moments stream through
         memory (fetched a few tiles ahead), over blocks of B's columns that fit in L2.
       The partial sums of a K block wait in C, so every element still sums its products in k order. */
    const ptrdiff_t KB = a_cs != 1 ? GEMM_KB_COLUMNS : K > 512 ? 256 : K;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += KB) {
        const ptrdiff_t kb = K - k0 < KB ? K - k0 : KB;
        const int acc = accumulate || k0 > 0;
        const FN(AdamArgs) *upd = k0 + kb == K ? adam : NULL;
        const real *a = A + k0 * a_cs, *b = B + k0 * ldb;
        if (K <= 64 || upd) {
            /* Measured and left out here (kernel harness, AVX2/AVX-512, CPU time, 225 tokens): copying each
               panel of a token-major B into contiguous rows here and walking C down the panel, 2-19% slower
               with Adam (the backward pass now hands over B in panels, and C is still walked by rows); holding a tile's gradient back and doing its Adam a vector
               at a time inside the next tile's k loop (to hide the square roots and divisions), 6-28% slower;
               software prefetch of the Adam state 4 tiles ahead, no faster in a step (the hardware prefetchers
               keep up once the buffers sit on 2 MiB pages). */
            const ptrdiff_t NB = (GEMM_B_BYTES / (kb * (ptrdiff_t)sizeof(real))) / GEMM_PANEL * GEMM_PANEL;
            const ptrdiff_t block = NB > GEMM_PANEL ? NB : GEMM_PANEL;
            for (ptrdiff_t n1 = 0; n1 < N; n1 += block) {
                const ptrdiff_t width = N - n1 < block ? N - n1 : block;
                for (ptrdiff_t m0 = 0; m0 < M; m0 += GEMM_MR)
                    for (ptrdiff_t n0 = n1; n0 < n1 + width; n0 += GEMM_PANEL)
                        FN(gemm_block_at)(M, N, kb, a, a_rs, a_cs, b, ldb, b_panels, Cm, ldc, acc, upd, m0, n0);
            }
        } else if (a_cs != 1) {
            /* A read down its columns: each block of rows is first copied tile by tile, k-major with
               GEMM_MR values per k, so that a tile's k loop reads one stream, not a line (and, K apart,
               a page) in each of kb rows. The copy is read by every column panel of B. */
            real pack[GEMM_MB * GEMM_KB_COLUMNS];
            for (ptrdiff_t m1 = 0; m1 < M; m1 += GEMM_MB) {
                FN(pack_rows)(pack, a, a_rs, a_cs, m1, M < m1 + GEMM_MB ? M : m1 + GEMM_MB, kb);
                for (ptrdiff_t n0 = 0; n0 < N; n0 += GEMM_PANEL)
                    for (ptrdiff_t m0 = m1; m0 < M && m0 < m1 + GEMM_MB; m0 += GEMM_MR)
                        FN(gemm_block_at)(M - m0, N, kb, pack + (m0 - m1) * kb, 1, GEMM_MR, b, ldb, b_panels, Cm + m0 * ldc, ldc,
                                       acc, upd, 0, n0);
            }
        } else {
            for (ptrdiff_t m1 = 0; m1 < M; m1 += GEMM_MB)
                for (ptrdiff_t n0 = 0; n0 < N; n0 += GEMM_PANEL)
                    for (ptrdiff_t m0 = m1; m0 < M && m0 < m1 + GEMM_MB; m0 += GEMM_MR)
                        FN(gemm_block_at)(M, N, kb, a, a_rs, a_cs, b, ldb, b_panels, Cm, ldc, acc, upd, m0, n0);
        }
    }
}

/* Rows i .. i+R-1, the VW (or, masked, fewer) columns from k. dX's running sums pass through registers
   once per R rows; the R weight-gradient vectors never leave them: each goes straight into Adam (or G).
   The same columns of the next group are prefetched once per cache line: far enough ahead for memory
   to deliver. */
static inline __attribute__((always_inline)) TARGET void
FN(fused_cols)(const int R, const int first, const FN(FusedArgs) *f, ptrdiff_t i, ptrdiff_t k, VMASK mask)
{
    const ptrdiff_t K = f->K, M = f->M, MP = f->MP;
    const FN(AdamArgs) *a = f->adam;
    const real *dy = f->dyT + i * MP, *w = f->W + i * K;
    if (a && (k * (ptrdiff_t)sizeof(real)) % 64 < VW * (ptrdiff_t)sizeof(real))
        for (ptrdiff_t r = R; r < 2 * R; r++) {
            const ptrdiff_t ahead = f->W - a->p + (i + r) * K + k;
            __builtin_prefetch(a->p + ahead, 1);
            __builtin_prefetch(a->m + ahead, 1);
            __builtin_prefetch(a->v + ahead, 1);
        }
    const VREAL w0 = VLOAD_MASKED(mask, w + k);
    const VREAL w1 = R > 1 ? VLOAD_MASKED(mask, w + K + k) : w0;
    const VREAL w2 = R > 2 ? VLOAD_MASKED(mask, w + 2 * K + k) : w0;
    const VREAL w3 = R > 3 ? VLOAD_MASKED(mask, w + 3 * K + k) : w0;
    VREAL g0 = VZERO(), g1 = VZERO(), g2 = VZERO(), g3 = VZERO();
    for (ptrdiff_t t = 0; t < M; t++) {
        const VREAL x = VLOAD_MASKED(mask, f->x_tok + t * K + k);
        real *dx = f->dx_tok + t * (K + DX_SKEW) + k;
        const VREAL d0 = VSET1(dy[t]);
        VREAL acc = first ? VMUL(d0, w0) : VFMA(d0, w0, VLOAD_MASKED(mask, dx));
        g0 = VFMA(d0, x, g0);
        if (R > 1) { const VREAL d = VSET1(dy[MP + t]); acc = VFMA(d, w1, acc); g1 = VFMA(d, x, g1); }
        if (R > 2) { const VREAL d = VSET1(dy[2 * MP + t]); acc = VFMA(d, w2, acc); g2 = VFMA(d, x, g2); }
        if (R > 3) { const VREAL d = VSET1(dy[3 * MP + t]); acc = VFMA(d, w3, acc); g3 = VFMA(d, x, g3); }
        VSTORE_MASKED(dx, mask, acc);
    }
#define FUSED_DONE(r, gr) if (R > r) {                                                              \
        if (a) FN(adam_vector)(a, f->W - a->p + (i + r) * K + k, gr, mask);                       \
        else VSTORE_MASKED(f->G + (i + r) * K + k, mask, gr); }
    FUSED_DONE(0, g0) FUSED_DONE(1, g1) FUSED_DONE(2, g2) FUSED_DONE(3, g3)
#undef FUSED_DONE
}

/* Rows i .. i+R-1, columns [begin, end): whole vectors, then the masked tail. */
static inline __attribute__((always_inline)) TARGET void
FN(fused_rows)(const int R, const int first, const FN(FusedArgs) *f, ptrdiff_t i, ptrdiff_t begin, ptrdiff_t end,
               real *g_rows)
{
    (void)g_rows;
    ptrdiff_t k = begin;
    for (; k + VW <= end; k += VW) FN(fused_cols)(R, first, f, i, k, VMASK_ALL);
    if (k < end) FN(fused_cols)(R, first, f, i, k, VMASK_FIRST(end - k));
}

/* ---- per-token operations on feature-major arrays: vectors of MP contiguous token lanes ---- */

/* y = x / sqrt(mean(x^2) + eps) for every token; inv keeps 1 / sqrt(...) for the backward pass. Rows
   outer, lanes inner, the running sums in inv: each row streams through once (a lane vector walking
   down all C rows brought every line back from beyond L1 at C x MP = 512 x 128). */
static TARGET void FN(rmsnorm_forward)(const real *x, real *y, real *inv, ptrdiff_t C, ptrdiff_t MP)
{
    FOR_LANES(t, mask, MP, VSTORE_MASKED(inv + t, mask, VZERO()););
    for (ptrdiff_t j = 0; j < C; j++)
        FOR_LANES(t, mask, MP, const VREAL xj = VLOAD_MASKED(mask, x + j * MP + t);
                  VSTORE_MASKED(inv + t, mask, VFMA(xj, xj, VLOAD_MASKED(mask, inv + t))););
    const VREAL one = VSET1((real)1), n = VSET1((real)C), eps = VSET1((real)RMS_EPS);
    FOR_LANES(t, mask, MP,
              VSTORE_MASKED(inv + t, mask, VDIV(one, VSQRT(VADD(VDIV(VLOAD_MASKED(mask, inv + t), n), eps)))););
    for (ptrdiff_t j = 0; j < C; j++)
        FOR_LANES(t, mask, MP, VSTORE_MASKED(y + j * MP + t, mask,
                                             VMUL(VLOAD_MASKED(mask, x + j * MP + t), VLOAD_MASKED(mask, inv + t))););
}

/* dx (+)= inv * (dy - y * mean(y * dy)), the RMSNorm gradient written with its output y = x * inv;
   tmp (MP lanes) holds the running sums, as in rmsnorm_forward. */
static TARGET void FN(rmsnorm_backward)(const real *y, const real *inv, const real *dy, real *dx, real *tmp,
                                        ptrdiff_t C, ptrdiff_t MP, int accumulate)
{
    FOR_LANES(t, mask, MP, VSTORE_MASKED(tmp + t, mask, VZERO()););
    for (ptrdiff_t j = 0; j < C; j++)
        FOR_LANES(t, mask, MP, VSTORE_MASKED(tmp + t, mask, VFMA(VLOAD_MASKED(mask, y + j * MP + t),
                                                                 VLOAD_MASKED(mask, dy + j * MP + t),
                                                                 VLOAD_MASKED(mask, tmp + t))););
    const VREAL n = VSET1((real)C);
    FOR_LANES(t, mask, MP, VSTORE_MASKED(tmp + t, mask, VDIV(VLOAD_MASKED(mask, tmp + t), n)););
    for (ptrdiff_t j = 0; j < C; j++)
        FOR_LANES(t, mask, MP,
            const ptrdiff_t i = j * MP + t;
            /* dy - y * mean, rounded as the reference rounds it (the product first) */
            const VREAL g = VMUL(VLOAD_MASKED(mask, inv + t),
                                 VSUB(VLOAD_MASKED(mask, dy + i), VMUL(VLOAD_MASKED(mask, y + i), VLOAD_MASKED(mask, tmp + t))));
            VSTORE_MASKED(dx + i, mask, accumulate ? VADD(VLOAD_MASKED(mask, dx + i), g) : g);
        );
}

/* act = relu(u)^2 or relu(u), elementwise. */
static TARGET void FN(mlp_act_forward)(const real *u, real *act, ptrdiff_t n, int relu2)
{
    const VREAL zero = VZERO();
    if (relu2)
        FOR_LANES(i, mask, n, const VREAL x = VLOAD_MASKED(mask, u + i);
                  VSTORE_MASKED(act + i, mask, VWHERE_GT(x, zero, VMUL(x, x))););
    else
        FOR_LANES(i, mask, n, const VREAL x = VLOAD_MASKED(mask, u + i);
                  VSTORE_MASKED(act + i, mask, VWHERE_GT(x, zero, x)););
}

/* d = d * act'(u), in place: 2u for relu^2, 1 for relu, 0 where u <= 0. */
static TARGET void FN(mlp_act_backward)(const real *u, real *d, ptrdiff_t n, int relu2)
{
    const VREAL zero = VZERO(), two = VSET1((real)2);
    if (relu2)
        FOR_LANES(i, mask, n, const VREAL x = VLOAD_MASKED(mask, u + i);
                  VSTORE_MASKED(d + i, mask, VWHERE_GT(x, zero, VMUL(VMUL(two, x), VLOAD_MASKED(mask, d + i)))););
    else
        FOR_LANES(i, mask, n, const VREAL x = VLOAD_MASKED(mask, u + i);
                  VSTORE_MASKED(d + i, mask, VWHERE_GT(x, zero, VLOAD_MASKED(mask, d + i))););
}

/* ---- attention's inner products over token lanes ---- */

/* Up to 4 rows at once: y[r y_next + t] = sum_i a[r a_next + i a_stride] x[i ld + t] for r < R and the n
   lanes t (n a multiple of LANE_PAD), each sum in i order; only the first `keep` lanes of a y row are
   written (a document's own tokens in an array of the whole batch). The R x 2 accumulators are
   independent chains: one row at a time was latency-bound (a chain of 7 dependent multiply-adds per
   name-length sum), and its accumulators, a C array, stayed in memory. */
static inline __attribute__((always_inline)) TARGET void
FN(lanes_rows)(const int R, real *y, ptrdiff_t y_next, ptrdiff_t keep, const real *a, ptrdiff_t a_next,
               ptrdiff_t a_stride, const real *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n)
{
    for (ptrdiff_t t = 0; t < n && t < keep; t += 2 * VW) {
        /* lanes of the two vectors; below VW only where a vector is wider than LANE_PAD (AVX-512 float32) */
        const ptrdiff_t n0 = n - t < VW ? n - t : VW, n1 = n - t - VW < 0 ? 0 : n - t - VW < VW ? n - t - VW : VW;
        const VMASK m0 = VW <= LANE_PAD ? VMASK_ALL : VMASK_FIRST(n0);
        const VMASK m1 = VW <= LANE_PAD ? VMASK_ALL : VMASK_FIRST(n1 ? n1 : 1);
        VREAL c00 = VZERO(), c01 = VZERO(), c10 = VZERO(), c11 = VZERO(), c20 = VZERO(), c21 = VZERO(),
              c30 = VZERO(), c31 = VZERO();
        for (ptrdiff_t i = 0; i < rows; i++) {
            const real *xi = x + i * ld + t, *ai = a + i * a_stride;
            const VREAL x0 = VLOAD_MASKED(m0, xi), x1 = n1 ? VLOAD_MASKED(m1, xi + VW) : x0;
#define LANES_ROW(r) if (R > r) { const VREAL ar = VSET1(ai[r * a_next]);                           \
                                  c##r##0 = VFMA(ar, x0, c##r##0); if (n1) c##r##1 = VFMA(ar, x1, c##r##1); }
            LANES_ROW(0) LANES_ROW(1) LANES_ROW(2) LANES_ROW(3)
#undef LANES_ROW
        }
        const ptrdiff_t k0 = keep - t < n0 ? keep - t : n0, k1 = keep - t - VW < n1 ? keep - t - VW : n1;
#define LANES_STORE(r) if (R > r) {                                                                  \
            real *yr = y + r * y_next + t;                                                            \
            if (k0 == VW) VSTORE(yr, c##r##0); else VSTORE_MASKED(yr, VMASK_FIRST(k0), c##r##0);       \
            if (k1 == VW) VSTORE(yr + VW, c##r##1); else if (k1 > 0) VSTORE_MASKED(yr + VW, VMASK_FIRST(k1), c##r##1); }
        LANES_STORE(0) LANES_STORE(1) LANES_STORE(2) LANES_STORE(3)
#undef LANES_STORE
    }
}

/* lanes_rows over `count` rows, four at a time. */
static TARGET void FN(lanes_combine_rows)(real *y, ptrdiff_t y_next, ptrdiff_t keep, const real *a, ptrdiff_t a_next,
                                          ptrdiff_t a_stride, const real *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                                          ptrdiff_t count)
{
    ptrdiff_t r = 0;
    for (; r + 4 <= count; r += 4)
        FN(lanes_rows)(4, y + r * y_next, y_next, keep, a + r * a_next, a_next, a_stride, x, ld, rows, n);
    switch (count - r) {
    case 3: FN(lanes_rows)(3, y + r * y_next, y_next, keep, a + r * a_next, a_next, a_stride, x, ld, rows, n); break;
    case 2: FN(lanes_rows)(2, y + r * y_next, y_next, keep, a + r * a_next, a_next, a_stride, x, ld, rows, n); break;
    case 1: FN(lanes_rows)(1, y + r * y_next, y_next, keep, a + r * a_next, a_next, a_stride, x, ld, rows, n); break;
    default: break;
    }
}

/* fastops/dev/check_instance.h: the harness's cases for one kernel instance, included by check_kernels.c
   once per instance with SUFFIX (the instance under test, e.g. f64_avx2), REF_SUFFIX (the generic instance
   of the same dtype), `real`, DEV_F32 for float32, and DEV_TARGET (the instance's target attribute).
   Defines check_all_<SUFFIX>(const Inst *). Each case: random inputs, the reference and the instance on
   copies of them, the outputs compared, then the instance timed (unless --check-only). */

#define DEV_JOIN(name, suffix) name##_##suffix
#define DEV_EXPAND(name, suffix) DEV_JOIN(name, suffix)
#define FN(name) DEV_EXPAND(name, SUFFIX)
#define RF(name) DEV_EXPAND(name, REF_SUFFIX)

#ifdef DEV_F32
#define REL_ERR rel_err_f32
#else
#define REL_ERR rel_err_f64
#endif

/* Adam's settings in every case: train.py's betas and eps, a large enough lr that the update is not lost
   in the rounding of p, at update count 3. */
#define DEV_B1 0.9
#define DEV_B2 0.95
#define DEV_EPS 1e-8
#define DEV_LR 0.05
#define DEV_T 3
/* The whole steps' eps. With train.py's 1e-8, Adam's first update is lr sign(g) wherever |g| >> 1e-8: a
   gradient that cancels to within rounding of zero (a few of a model's parameters, in float32) flips
   sign between any two correct summation orders and moves its parameter by 2 lr. An eps near the
   gradients' size makes the update a smooth function of them; the kernels do the same work either way. */
#define DEV_STEP_EPS 1e-3
#define ADAM_INIT(P, G, Mo, Vo, SCALE, STORE)                                                       \
    {.p = (P), .g = (G), .m = (Mo), .v = (Vo), .b1 = (real)DEV_B1, .b2 = (real)DEV_B2,                \
     .c1 = (real)(1 - DEV_B1), .c2 = (real)(1 - DEV_B2), .inv_bc1 = (real)(1 / (1 - pow(DEV_B1, DEV_T))), \
     .inv_bc2 = (real)(1 / (1 - pow(DEV_B2, DEV_T))), .eps = (real)DEV_EPS, .lr = (real)DEV_LR,       \
     .scale = (real)(SCALE), .store_grad = (STORE)}

static real *FN(rand_buf)(ptrdiff_t n, double lo, double hi)
{
    real *x = xalloc((size_t)n * sizeof(real));
    for (ptrdiff_t i = 0; i < n; i++) x[i] = (real)rng_uniform(lo, hi);
    return x;
}

static real *FN(dup)(const real *x, ptrdiff_t n)
{
    real *y = xalloc((size_t)n * sizeof(real));
    memcpy(y, x, (size_t)n * sizeof(real));
    return y;
}

/* Adam state of n elements: p, g, m, v, and copies for the reference (index 0) and the instance (1).
   m and v are of the size of the gradients that will meet them (about gscale), with v >= m^2 +
   gscale^2 / 10 as a history of such gradients gives. Without that floor, a v near 0 meeting a gradient
   that cancels to near 0 turns its last-bit difference (equal in both instances' math) into a large
   difference in the step lr m / sqrt(v): Adam's conditioning, not the kernel's error. */
typedef struct { real *p[2], *g[2], *m[2], *v[2]; ptrdiff_t n; } FN(AdamBufs);

static FN(AdamBufs) FN(adam_bufs)(ptrdiff_t n, double gscale)
{
    FN(AdamBufs) a;
    real *p = FN(rand_buf)(n, -1, 1), *g = FN(rand_buf)(n, -gscale, gscale), *m = FN(rand_buf)(n, -gscale, gscale),
         *v = FN(rand_buf)(n, 0.1 * gscale * gscale, gscale * gscale);
    for (ptrdiff_t i = 0; i < n; i++) v[i] += m[i] * m[i];
    a.n = n;
    a.p[0] = p; a.g[0] = g; a.m[0] = m; a.v[0] = v;
    a.p[1] = FN(dup)(p, n); a.g[1] = FN(dup)(g, n); a.m[1] = FN(dup)(m, n); a.v[1] = FN(dup)(v, n);
    return a;
}

static double FN(adam_err)(const FN(AdamBufs) *a, int with_g)
{
    double e = max2(REL_ERR(a->p[1], a->p[0], a->n, 1), max2(REL_ERR(a->m[1], a->m[0], a->n, 1),
                                                              REL_ERR(a->v[1], a->v[0], a->n, 1)));
    return with_g ? max2(e, REL_ERR(a->g[1], a->g[0], a->n, 1)) : e;
}

static void FN(adam_free)(FN(AdamBufs) *a)
{
    for (int i = 0; i < 2; i++) { free(a->p[i]); free(a->g[i]); free(a->m[i]); free(a->v[i]); }
}

/* ---- Adam on elements [begin, n) ---- bytes: p, m, v, g read, p, m, v written (g too with store_grad) */
static void FN(case_adam)(const Inst *in, ptrdiff_t n, int clip)
{
    const char *kernel = clip ? "adam_clip" : "adam";
    if (!want(kernel)) return;
    const ptrdiff_t begin = 3;
    char shape[64];
    snprintf(shape, sizeof shape, "n=%td from %td%s", n, begin, clip ? " scale=.5 store" : "");
    rng_seed_case(kernel, shape);
    FN(AdamBufs) b = FN(adam_bufs)(n, 1e-2);
    const double scale = clip ? 0.5 : 1.0;
    RF(AdamArgs) ra = ADAM_INIT(b.p[0], b.g[0], b.m[0], b.v[0], scale, clip);
    FN(AdamArgs) ta = ADAM_INIT(b.p[1], b.g[1], b.m[1], b.v[1], scale, clip);
    RF(adam_range)(&ra, begin, n);
    FN(adam_range)(&ta, begin, n);
    const double err = FN(adam_err)(&b, clip);
    double seconds = 0;
    if (!opt.check_only) BENCH(seconds, FN(adam_range)(&ta, begin, n));
    report(in, kernel, shape, err, in->tol, seconds,
           (double)(n - begin) * (clip ? 8 : 7) * sizeof(real), "GB/s");
    FN(adam_free)(&b);
}

/* ---- the three uses of gemm, for a layer W (N x K) on M tokens ---- */
static void FN(case_gemm)(const Inst *in, ptrdiff_t N, ptrdiff_t K, ptrdiff_t M)
{
    const ptrdiff_t MP = round_up(M, LANE_PAD);
    Pool solo = {.n_threads = 1};
    char shape[64];

    /* Y^T (N x MP) = W X^T, += for the layers that add to the residual stream (N <= K: wo, fc2).
       FLOPs: 2 N K MP (the padding lanes are computed too). */
    const int acc = N <= K;
    snprintf(shape, sizeof shape, "N=%td K=%td M=%td MP=%td%s", N, K, M, MP, acc ? " +=" : "");
    if (want("gemm_fwd")) {
        rng_seed_case("gemm_fwd", shape);
        real *W = FN(rand_buf)(N * K, -1, 1), *xT = FN(rand_buf)(K * MP, -1, 1), *y0 = FN(rand_buf)(N * MP, -1, 1);
        real *y1 = FN(dup)(y0, N * MP);
        RF(linear_forward)(&solo, W, N, K, xT, y0, MP, acc);
        FN(linear_forward)(&solo, W, N, K, xT, y1, MP, acc);
        const double err = REL_ERR(y1, y0, N * MP, 1);
        double seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(linear_forward)(&solo, W, N, K, xT, y1, MP, 0));
        report(in, "gemm_fwd", shape, err, in->tol, seconds, 2.0 * N * K * MP, "GFLOP/s");
        free(W); free(xT); free(y0); free(y1);
    }

    /* dX^T (K x MP) = W^T dY^T: A = W read down its columns. FLOPs: 2 N K MP. */
    snprintf(shape, sizeof shape, "N=%td K=%td M=%td MP=%td", N, K, M, MP);
    if (want("gemm_dx")) {
        rng_seed_case("gemm_dx", shape);
        real *W = FN(rand_buf)(N * K, -1, 1), *dyT = FN(rand_buf)(N * MP, -1, 1), *d0 = FN(rand_buf)(K * MP, -1, 1);
        real *d1 = FN(dup)(d0, K * MP);
        RF(linear_backward_input)(&solo, W, N, K, dyT, d0, MP);
        FN(linear_backward_input)(&solo, W, N, K, dyT, d1, MP);
        const double err = REL_ERR(d1, d0, K * MP, 1);
        double seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(linear_backward_input)(&solo, W, N, K, dyT, d1, MP));
        report(in, "gemm_dx", shape, err, in->tol, seconds, 2.0 * N * K * MP, "GFLOP/s");
        free(W); free(dyT); free(d0); free(d1);
    }

    /* dW (N x K) = dY^T X over the M real tokens, into G or, with Adam, straight into W's update (W at an
       offset in the flat buffers, as a layer's matrix is). FLOPs: 2 N K M (Adam's not counted). */
    for (int with_adam = 0; with_adam < 2; with_adam++) {
        const char *kernel = with_adam ? "gemm_dw_adam" : "gemm_dw";
        if (!want(kernel)) continue;
        rng_seed_case(kernel, shape);
        const ptrdiff_t off = 5;
        /* X comes feature-major (the layer's input); each instance copies it into the layout its product
           reads (copy_weight_input), and the copy is part of the timed kernel */
        real *dyT = FN(rand_buf)(N * MP, -1, 1), *xT = FN(rand_buf)(K * MP, -1, 1);
        real *xp0 = FN(rand_buf)(round_up(K, 64) * MP, -1, 1), *xp1 = FN(dup)(xp0, round_up(K, 64) * MP);
#define DW(fn, g, adam) (fn(copy_weight_input)(xT, xp##g, K, M, MP), fn(linear_backward_weight)(&solo, dw##g, N, K, dyT, xp##g, M, MP, adam))
        double err, seconds = 0;
        if (!with_adam) {
            real *dw0 = FN(rand_buf)(N * K, -1, 1), *dw1 = FN(dup)(dw0, N * K);
            DW(RF, 0, NULL);
            DW(FN, 1, NULL);
            err = REL_ERR(dw1, dw0, N * K, 1);
            if (!opt.check_only) BENCH(seconds, DW(FN, 1, NULL));
            free(dw0); free(dw1);
        } else {
            FN(AdamBufs) b = FN(adam_bufs)(off + N * K, sqrt((double)M) / 3);
            RF(AdamArgs) ra = ADAM_INIT(b.p[0], b.g[0], b.m[0], b.v[0], 1.0, 0);
            FN(AdamArgs) ta = ADAM_INIT(b.p[1], b.g[1], b.m[1], b.v[1], 1.0, 0);
            real *dw0 = b.g[0] + off, *dw1 = b.g[1] + off;
            DW(RF, 0, &ra);
            DW(FN, 1, &ta);
            err = FN(adam_err)(&b, 0);
            if (!opt.check_only) BENCH(seconds, DW(FN, 1, &ta));
            FN(adam_free)(&b);
        }
#undef DW
        report(in, kernel, shape, err, in->tol, seconds, 2.0 * N * K * M, "GFLOP/s");
        free(dyT); free(xT); free(xp0); free(xp1);
    }

    /* The fused small-batch backward: dX (token-major, rows K + DX_SKEW apart) and dW into G or Adam, in
       one pass over W. Checked with the columns split as two threads would split them; the skew gaps of
       dX hold a sentinel that must survive. FLOPs: 4 N K M (dX and dW, 2 each). */
    for (int with_adam = 0; with_adam < 2 && M <= FUSED_MAX_TOKENS; with_adam++) {
        const char *kernel = with_adam ? "fused_adam" : "fused";
        if (!want(kernel)) continue;
        rng_seed_case(kernel, shape);
        const ptrdiff_t off = 7, ldx = K + DX_SKEW, n_dx = (M - 1) * ldx + K;
        real *dyT = FN(rand_buf)(N * MP, -1, 1), *x = FN(rand_buf)(M * K, -1, 1);
        real *dx0 = xalloc((size_t)n_dx * sizeof(real)), *g_rows = xalloc(2 * (size_t)K * sizeof(real));
        for (ptrdiff_t i = 0; i < n_dx; i++) dx0[i] = (real)777;
        real *dx1 = FN(dup)(dx0, n_dx);
        double err, seconds = 0;
        FN(AdamBufs) b = FN(adam_bufs)(off + N * K, sqrt((double)M) / 3);
        RF(AdamArgs) ra = ADAM_INIT(b.p[0], b.g[0], b.m[0], b.v[0], 1.0, 0);
        FN(AdamArgs) ta = ADAM_INIT(b.p[1], b.g[1], b.m[1], b.v[1], 1.0, 0);
        real *G[2] = {NULL, NULL};
        if (!with_adam) { G[0] = FN(rand_buf)(N * K, -1, 1); G[1] = FN(dup)(G[0], N * K); }
        /* without Adam W is read only: the reference's copy of p serves both */
        RF(FusedArgs) rf = {.W = b.p[0] + off, .G = G[0], .N = N, .K = K, .M = M, .MP = MP, .dyT = dyT,
                            .x_tok = x, .dx_tok = dx0, .g_rows = g_rows, .adam = with_adam ? &ra : NULL};
        FN(FusedArgs) tf = {.W = b.p[with_adam] + off, .G = G[1], .N = N, .K = K, .M = M, .MP = MP, .dyT = dyT,
                            .x_tok = x, .dx_tok = dx1, .g_rows = g_rows, .adam = with_adam ? &ta : NULL};
        RF(linear_backward_fused_task)(&rf, 0, K, 0);
        for (int t = 0; t < 2; t++) {
            ptrdiff_t begin, end;
            chunk_of(K, 16, t, 2, &begin, &end);
            if (begin < end) FN(linear_backward_fused_task)(&tf, begin, end, t);
        }
        err = REL_ERR(dx1, dx0, n_dx, 1);
        err = max2(err, with_adam ? FN(adam_err)(&b, 0) : REL_ERR(G[1], G[0], N * K, 1));
        if (!opt.check_only) BENCH(seconds, FN(linear_backward_fused_task)(&tf, 0, K, 0));
        report(in, kernel, shape, err, in->tol, seconds, 4.0 * N * K * M, "GFLOP/s");
        FN(adam_free)(&b);
        free(G[0]); free(G[1]); free(dyT); free(x); free(dx0); free(dx1); free(g_rows);
    }
}

/* ---- RMSNorm on C features x MP lanes ----
   bytes, forward: x read, y written, inv written (C MP + C MP + MP); backward: y, dy (and dx when
   accumulating) read, dx written, inv read ((3 + acc) C MP + MP) */
static void FN(case_rmsnorm)(const Inst *in, ptrdiff_t C, ptrdiff_t MP, int acc)
{
    char shape[64];
    snprintf(shape, sizeof shape, "C=%td MP=%td", C, MP);
    if (want("rmsnorm_fwd")) {
        rng_seed_case("rmsnorm_fwd", shape);
        real *x = FN(rand_buf)(C * MP, -2, 2), *y0 = FN(rand_buf)(C * MP, -1, 1), *inv0 = FN(rand_buf)(MP, -1, 1);
        real *y1 = FN(dup)(y0, C * MP), *inv1 = FN(dup)(inv0, MP);
        RF(rmsnorm_forward)(x, y0, inv0, C, MP);
        FN(rmsnorm_forward)(x, y1, inv1, C, MP);
        const double err = max2(REL_ERR(y1, y0, C * MP, 1), REL_ERR(inv1, inv0, MP, 1));
        double seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(rmsnorm_forward)(x, y1, inv1, C, MP));
        report(in, "rmsnorm_fwd", shape, err, in->tol, seconds, (2.0 * C * MP + MP) * sizeof(real), "GB/s");
        free(x); free(y0); free(y1); free(inv0); free(inv1);
    }
    snprintf(shape, sizeof shape, "C=%td MP=%td%s", C, MP, acc ? " +=" : "");
    if (want("rmsnorm_bwd")) {
        rng_seed_case("rmsnorm_bwd", shape);
        real *y = FN(rand_buf)(C * MP, -2, 2), *inv = FN(rand_buf)(MP, 0.5, 2), *dy = FN(rand_buf)(C * MP, -1, 1);
        real *dx0 = FN(rand_buf)(C * MP, -1, 1), *dx1 = FN(dup)(dx0, C * MP);
        real *tmp = xalloc((size_t)MP * sizeof(real));
        RF(rmsnorm_backward)(y, inv, dy, dx0, tmp, C, MP, acc);
        FN(rmsnorm_backward)(y, inv, dy, dx1, tmp, C, MP, acc);
        const double err = REL_ERR(dx1, dx0, C * MP, 1);
        double seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(rmsnorm_backward)(y, inv, dy, dx1, tmp, C, MP, acc));
        report(in, "rmsnorm_bwd", shape, err, in->tol, seconds, ((3.0 + acc) * C * MP + MP) * sizeof(real), "GB/s");
        free(y); free(inv); free(dy); free(dx0); free(dx1); free(tmp);
    }
}

/* ---- e^x on an array ----
   vexp is an inline function the kernels call inside their loops; this loop, compiled for the instance's
   target, is what they make of it. Rate: results per second (Gexp/s). */
static DEV_TARGET void FN(dev_vexp)(const real *x, real *y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i] = FN(vexp)(x[i]);
}

static void FN(case_vexp)(const Inst *in, ptrdiff_t n)
{
    char shape[64];
    snprintf(shape, sizeof shape, "n=%td", n);
    if (!want("vexp") && !want("vexp_libm")) return;
    rng_seed_case("vexp", shape);
    /* what the kernels pass it: x - max <= 0 down to -inf, and a little above 0 */
    real *x = FN(rand_buf)(n, -EXP_MAX_DEV - 20, 1), *y0 = xalloc((size_t)n * sizeof(real));
    real *y1 = xalloc((size_t)n * sizeof(real));
    const real special[] = {-(real)INFINITY, 0, 1, (real)-EXP_MAX_DEV, (real)(-EXP_MAX_DEV - 0.5), (real)-1e-30,
                            (real)-0.34657359, (real)0.34657359};
    for (size_t i = 0; i < sizeof special / sizeof special[0] && (ptrdiff_t)i < n; i++) x[i] = special[i];
    RF(dev_vexp)(x, y0, n);
    FN(dev_vexp)(x, y1, n);
    if (want("vexp")) {
        const double err = REL_ERR(y1, y0, n, 0);
        double seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(dev_vexp)(x, y1, n));
        report(in, "vexp", shape, err, in->tol, seconds, (double)n, "Gexp/s");
    }
    /* accuracy: against libm's exp in double, where the result is a normal number */
    if (want("vexp_libm")) {
        double worst = 0;
        for (ptrdiff_t i = 0; i < n; i++)
            if (x[i] >= (real)-EXP_MAX_DEV && x[i] <= 1) {
                const double e = exp((double)x[i]);
                worst = max2(worst, fabs((double)y1[i] - e) / e);
            }
        report(in, "vexp_libm", shape, worst, in->tol_libm, 0, 0, "");
    }
    free(x); free(y0); free(y1);
}

/* ---- causal attention of a batch's documents, all heads ----
   FLOPs per document of T tokens (TP = T rounded up to 8 lanes): forward 4 T TP C (scores and P V; the
   masked half and the softmax not counted separately), backward 8 T TP C (dP, dQ, dK, dV). */
static void FN(case_attention)(const Inst *in, int C, int H, int block, const int *lens, int n_docs)
{
    char shape[64], docs[32];
    describe_docs(docs, sizeof docs, lens, n_docs);
    snprintf(shape, sizeof shape, "C=%d H=%d block=%d docs=%s", C, H, block, docs);
    if (!want("attn_fwd") && !want("attn_bwd")) return;
    rng_seed_case("attn", shape);
    Shape s;
    shape_init(&s, 27, C, 1, H, block, 1);
    DevBatch db = make_batch(lens, n_docs, 27);
    const ptrdiff_t M = db.b.M, MP = round_up(M, LANE_PAD), TPb = round_up(block, LANE_PAD);
    double flops = 0;
    for (int d = 0; d < n_docs; d++) flops += 4.0 * lens[d] * round_up(lens[d], LANE_PAD) * C;
    const ptrdiff_t n_att = H * M * TPb;   /* the softmax weights P: exactly what the documents use */
    real *qkv = FN(rand_buf)(3 * C * MP, -1.5, 1.5), *scratch = xalloc((size_t)FN(attention_scratch)(&s) * sizeof(real));
    real *att0 = FN(rand_buf)(n_att, 0, 0), *att1 = FN(dup)(att0, n_att);
    real *o0 = FN(rand_buf)(C * MP, 0, 0), *o1 = FN(dup)(o0, C * MP);
    RF(AttnArgs) ra = {.s = &s, .b = &db.b, .MP = MP, .qkv = qkv, .att = att0, .o = o0, .scratch = scratch};
    FN(AttnArgs) ta = {.s = &s, .b = &db.b, .MP = MP, .qkv = qkv, .att = att1, .o = o1, .scratch = scratch};
    RF(attention_forward_task)(&ra, 0, n_docs, 0);
    FN(attention_forward_task)(&ta, 0, n_docs, 0);
    double err = max2(REL_ERR(att1, att0, n_att, 1), REL_ERR(o1, o0, C * MP, 1)), seconds = 0;
    if (want("attn_fwd")) {
        if (!opt.check_only) BENCH(seconds, FN(attention_forward_task)(&ta, 0, n_docs, 0));
        report(in, "attn_fwd", shape, err, in->tol, seconds, flops, "GFLOP/s");
    }
    if (want("attn_bwd")) {
        /* both from the reference's P, so that only the backward kernel differs */
        real *dO = FN(rand_buf)(C * MP, -1, 1), *dq0 = FN(rand_buf)(3 * C * MP, 0, 0), *dq1 = FN(dup)(dq0, 3 * C * MP);
        ra.att_saved = att0; ra.dO = dO; ra.dqkv = dq0;
        ta.att_saved = att0; ta.dO = dO; ta.dqkv = dq1;
        RF(attention_backward_task)(&ra, 0, n_docs, 0);
        FN(attention_backward_task)(&ta, 0, n_docs, 0);
        err = REL_ERR(dq1, dq0, 3 * C * MP, 1);
        seconds = 0;
        if (!opt.check_only) BENCH(seconds, FN(attention_backward_task)(&ta, 0, n_docs, 0));
        report(in, "attn_bwd", shape, err, in->tol, seconds, 2 * flops, "GFLOP/s");
        free(dO); free(dq0); free(dq1);
    }
    free(qkv); free(scratch); free(att0); free(att1); free(o0); free(o1); free(db.ids);
}

/* ---- cross-entropy and its gradient over V logits x MP lanes ----
   bytes: the logits read and overwritten with their gradient (2 V MP), the lanes not counted */
static void FN(case_cross_entropy)(const Inst *in, int V, const int *lens, int n_docs)
{
    char shape[64], docs[32];
    describe_docs(docs, sizeof docs, lens, n_docs);
    snprintf(shape, sizeof shape, "V=%d docs=%s", V, docs);
    if (!want("cross_entropy")) return;
    rng_seed_case("cross_entropy", shape);
    Shape s;
    shape_init(&s, V, 16, 1, 4, 16, 1);
    DevBatch db = make_batch(lens, n_docs, V);
    const ptrdiff_t M = db.b.M, MP = round_up(M, LANE_PAD);
    real *L0 = FN(rand_buf)(V * MP, -4, 4), *L1 = FN(dup)(L0, V * MP), *lanes[2][5];
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 5; j++) lanes[k][j] = FN(rand_buf)(MP, 0, 0);
    RF(Work) rw;
    FN(Work) tw;
    memset(&rw, 0, sizeof rw);
    memset(&tw, 0, sizeof tw);
    rw.MP = tw.MP = MP;
    rw.logits = L0; rw.lane_w = lanes[0][0]; rw.lane_loss = lanes[0][1];
    rw.lane_a = lanes[0][2]; rw.lane_b = lanes[0][3]; rw.lane_c = lanes[0][4];
    tw.logits = L1; tw.lane_w = lanes[1][0]; tw.lane_loss = lanes[1][1];
    tw.lane_a = lanes[1][2]; tw.lane_b = lanes[1][3]; tw.lane_c = lanes[1][4];
    for (int d = 0; d < n_docs; d++)
        for (int t = db.b.doc_start[d]; t < db.b.doc_start[d + 1]; t++)
            rw.lane_w[t] = tw.lane_w[t] = (real)(1.0 / n_docs / lens[d]);
    RF(cross_entropy)(&s, &db.b, &rw, 1);
    FN(cross_entropy)(&s, &db.b, &tw, 1);
    const double err = max2(REL_ERR(L1, L0, V * MP, 1), REL_ERR(tw.lane_loss, rw.lane_loss, MP, 1));
    double seconds = 0;
    /* timed on its own output, which is finite (a gradient): the work does not depend on the values */
    if (!opt.check_only) BENCH(seconds, FN(cross_entropy)(&s, &db.b, &tw, 1));
    report(in, "cross_entropy", shape, err, in->tol, seconds, 2.0 * V * MP * sizeof(real), "GB/s");
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 5; j++) free(lanes[k][j]);
    free(L0); free(L1); free(db.ids);
}

/* ---- whole steps on a Model built here, as fastops.GPT builds one (gpt.h: GPT_new, ensure_workspace) ---- */

typedef struct {
    Model m;
    double (*run_batch)(Model *, const Batch *, int, double, double *);
} FN(DevModel);

/* Four flat buffers of n_params (params copied from `init`, the rest zero), Adam's settings, a pool of
   `threads`, and scratch for a training batch of MP lanes, zeroed, of the exact size. */
#define DEV_MODEL_INIT(dm, SUF, shape, init, MP, threads) do {                                          \
        memset(&(dm).m, 0, sizeof (dm).m);                                                              \
        (dm).m.s = (shape);                                                                             \
        for (int b_ = 0; b_ < N_BUFS; b_++) {                                                           \
            (dm).m.buf[b_] = xalloc((size_t)(shape).n_params * sizeof(real));                           \
            if (b_ == BUF_PARAMS) memcpy((dm).m.buf[b_], (init), (size_t)(shape).n_params * sizeof(real)); \
            else memset((dm).m.buf[b_], 0, (size_t)(shape).n_params * sizeof(real));                    \
        }                                                                                               \
        (dm).m.beta1 = DEV_B1; (dm).m.beta2 = DEV_B2; (dm).m.eps = DEV_STEP_EPS;                        \
        if (pool_start(&(dm).m.pool, (threads)) < 0) {                                                  \
            fprintf(stderr, "check_kernels: %s\n", (dm).m.pool.error); exit(2); }                       \
        (dm).m.work_bytes = DEV_EXPAND(workspace_bytes, SUF)(&(shape), (MP), (shape).n_layer,           \
                                                              (dm).m.pool.n_threads);                   \
        if (posix_memalign(&(dm).m.work, 64, (dm).m.work_bytes)) (dm).m.work = NULL;                    \
        if (!(dm).m.work) { fprintf(stderr, "check_kernels: out of memory\n"); exit(2); }               \
        memset((dm).m.work, 0, (dm).m.work_bytes);                                                      \
        (dm).run_batch = DEV_EXPAND(run_batch, SUF);                                                    \
    } while (0)

static void FN(dev_model_free)(Model *m)
{
    pool_stop(&m->pool);
    for (int b = 0; b < N_BUFS; b++) free(m->buf[b]);
    free(m->work);
}

/* Back to the state before any step: params from `init`, the rest zero. */
static void FN(dev_model_reset)(Model *m, const real *init)
{
    for (int b = 0; b < N_BUFS; b++) memset(m->buf[b], 0, (size_t)m->s.n_params * sizeof(real));
    memcpy(m->buf[BUF_PARAMS], init, (size_t)m->s.n_params * sizeof(real));
    m->step = 0;
}

static double FN(buf_err)(Model *t, Model *r, int buf)
{
    return REL_ERR((const real *)t->buf[buf], (const real *)r->buf[buf], t->s.n_params, 1);
}

static double FN(loss_err)(double t, double r) { return fabs(t - r) / fabs(r); }

static void FN(case_step)(const Inst *in, int C, int L, int H, int block, const int *lens, int n_docs)
{
    char shape[64], docs[40];
    describe_docs(docs, sizeof docs, lens, n_docs);
    snprintf(shape, sizeof shape, "(%d,%d,%d,%d) docs=%s", C, L, H, block, docs);
    if (!want("step_grad") && !want("step_threads") && !want("step_eval") && !want("step_train") &&
        !want("step_clip"))
        return;
    rng_seed_case("step", shape);
    Shape s;
    shape_init(&s, 27, C, L, H, block, 1);
    DevBatch db = make_batch(lens, n_docs, 27);
    const Batch *b = &db.b;
    const ptrdiff_t MP = round_up(b->M, LANE_PAD);
    real *init = FN(rand_buf)(s.n_params, -0.15, 0.15);
    RF(DevModel) r;
    FN(DevModel) t;
    DEV_MODEL_INIT(r, REF_SUFFIX, s, init, MP, 1);
    DEV_MODEL_INIT(t, SUFFIX, s, init, MP, 1);

    /* the gradient of one batch */
    if (want("step_grad")) {
        const double lr = r.run_batch(&r.m, b, MODE_GRAD, 0.0, NULL), lt = t.run_batch(&t.m, b, MODE_GRAD, 0.0, NULL);
        report(in, "step_grad", shape, max2(FN(loss_err)(lt, lr), FN(buf_err)(&t.m, &r.m, BUF_GRADS)), in->tol_step,
               0, 0, "");
    }
    /* the same on 3 threads must give the same bits, when the step is big enough to use them */
    if (want("step_threads") && (double)s.n_params * b->M >= POOL_MIN_WORK) {
        FN(DevModel) t3;
        DEV_MODEL_INIT(t3, SUFFIX, s, init, MP, 3);
        const double l1 = t.run_batch(&t.m, b, MODE_GRAD, 0.0, NULL), l3 = t3.run_batch(&t3.m, b, MODE_GRAD, 0.0, NULL);
        const int same = l1 == l3 && !memcmp(t.m.buf[BUF_GRADS], t3.m.buf[BUF_GRADS], (size_t)s.n_params * sizeof(real));
        char shape3[80];
        snprintf(shape3, sizeof shape3, "%s 1 vs 3 thr", shape);
        report(in, "step_threads", shape3, same ? 0 : INFINITY, 0, 0, 0, "");
        FN(dev_model_free)(&t3.m);
    }
    /* loss and the last token's logits */
    if (want("step_eval")) {
        double logits[2][27];
        const double lr = r.run_batch(&r.m, b, MODE_LOSS, 0.0, NULL), lt = t.run_batch(&t.m, b, MODE_LOSS, 0.0, NULL);
        r.run_batch(&r.m, b, MODE_LOGITS, 0.0, logits[0]);
        t.run_batch(&t.m, b, MODE_LOGITS, 0.0, logits[1]);
        report(in, "step_eval", shape, max2(FN(loss_err)(lt, lr), rel_err_f64(logits[1], logits[0], 27, 1)),
               in->tol_step, 0, 0, "");
    }
    /* two updates with Adam fused into the backward pass (train_one without clipping) */
    if (want("step_train")) {
        double err = 0;
        for (int k = 0; k < 2; k++) {
            r.m.step++;
            t.m.step++;
            const double lr = r.run_batch(&r.m, b, MODE_TRAIN, 0.01, NULL), lt = t.run_batch(&t.m, b, MODE_TRAIN, 0.01, NULL);
            err = max2(err, FN(loss_err)(lt, lr));
        }
        for (int buf = 0; buf < N_BUFS; buf++)
            if (buf != BUF_GRADS) err = max2(err, FN(buf_err)(&t.m, &r.m, buf));
        double seconds = 0;
        if (!opt.check_only) {
            FN(DevModel) tt;   /* on --threads threads */
            DEV_MODEL_INIT(tt, SUFFIX, s, init, MP, opt.threads);
            BENCH(seconds, (tt.m.step++, tt.run_batch(&tt.m, b, MODE_TRAIN, 1e-4, NULL)));
            FN(dev_model_free)(&tt.m);
        }
        report(in, "step_train", shape, err, in->tol_step, seconds, step_flops(&s, b), "GFLOP/s");
    }
    /* with clipping, from the initial state: the gradient, its norm, then the Kernels table's separate Adam
       pass with a scale */
    if (want("step_clip")) {
        const Kernels *rk = &RF(kernels), *tk = &FN(kernels);
        FN(dev_model_reset)(&r.m, init);
        FN(dev_model_reset)(&t.m, init);
        r.m.step++;
        t.m.step++;
        const double lr = r.run_batch(&r.m, b, MODE_GRAD, 0.0, NULL), lt = t.run_batch(&t.m, b, MODE_GRAD, 0.0, NULL);
        const double nr = rk->grad_sq_norm(&r.m), nt = tk->grad_sq_norm(&t.m);
        rk->adam(&r.m, 0.01, 0.5);
        tk->adam(&t.m, 0.01, 0.5);
        double err = max2(FN(loss_err)(lt, lr), FN(loss_err)(nt, nr));
        for (int buf = 0; buf < N_BUFS; buf++) err = max2(err, FN(buf_err)(&t.m, &r.m, buf));
        report(in, "step_clip", shape, err, in->tol_step, 0, 0, "");
    }
    FN(dev_model_free)(&r.m);
    FN(dev_model_free)(&t.m);
    free(init);
    free(db.ids);
}

/* ---- every case ---- */
static void FN(check_all)(const Inst *in)
{
    /* Adam: a tail shorter than any vector, odd lengths, one bigger than the caches' inner levels */
    const ptrdiff_t adam_n[] = {13, 4099, 262147};
    for (int i = 0; i < 3 - opt.quick; i++) FN(case_adam)(in, adam_n[i], 0);
    FN(case_adam)(in, 4099, 1);

    /* layers (N outputs, K inputs) on M tokens: tails first, then the lab's widths (4C x C is fc1, C x 4C
       fc2; 3C x C the attention's qkv; 27 the vocabulary), with M both fused (<= 64) and not */
    static const int lin[][3] = {{1, 5, 3}, {3, 13, 5}, {7, 13, 37}, {13, 7, 70}, {27, 16, 9}, {48, 16, 16},
                                 {64, 16, 16}, {16, 64, 16}, {256, 64, 32}, {64, 256, 32}, {384, 128, 32},
                                 {512, 128, 32}, {128, 512, 32}, {512, 128, 128}, {128, 512, 128},
                                 /* the four layers of medium (128,4,32) at batch 32: 225 tokens of names */
                                 {384, 128, 225}, {128, 128, 225}, {512, 128, 225}, {128, 512, 225}};
    for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++)
        if (!opt.quick || lin[i][2] < 128) FN(case_gemm)(in, lin[i][0], lin[i][1], lin[i][2]);

    static const int norm[][2] = {{13, 8}, {16, 24}, {64, 40}, {128, 104}, {512, 128}};
    for (size_t i = 0; i < sizeof norm / sizeof norm[0]; i++) FN(case_rmsnorm)(in, norm[i][0], norm[i][1], (int)(i & 1));

    FN(case_vexp)(in, 13);
    FN(case_vexp)(in, opt.quick ? 4099 : 100003);

    /* attention: D = 3 with two documents that pad differently, then the lab's three sizes, one full document */
    static const int docs_tail[] = {5, 13}, docs8[] = {8}, docs16[] = {16}, docs32[] = {32}, docs_many[] = {7, 16, 1, 12};
    FN(case_attention)(in, 12, 4, 13, docs_tail, 2);
    FN(case_attention)(in, 16, 4, 16, docs_many, 4);
    FN(case_attention)(in, 16, 4, 8, docs8, 1);
    FN(case_attention)(in, 64, 4, 16, docs16, 1);
    FN(case_attention)(in, 128, 4, 32, docs32, 1);
    /* medium at batch 32: the token counts of the first 32 names of names.txt (each name and its end) */
    static const int docs_names[] = {5, 7, 4, 9, 7, 10, 4, 7, 7, 7, 8, 6, 10, 5, 5, 6,
                                     6, 7, 5, 9, 9, 8, 5, 6, 6, 9, 6, 6, 5, 5, 5, 8};
    FN(case_attention)(in, 128, 4, 32, docs_names, 32);

    static const int ce_a[] = {5}, ce_b[] = {16, 9, 12}, ce_c[] = {32, 32, 32, 4};
    FN(case_cross_entropy)(in, 27, ce_a, 1);
    FN(case_cross_entropy)(in, 13, ce_b, 3);
    FN(case_cross_entropy)(in, 27, ce_c, 4);

    /* steps: a tail model (D = 4, block 13), then the lab's tiny and small, small again with 70 tokens (the
       unfused backward: M > FUSED_MAX_TOKENS), and medium (unless --quick: most of the time under qemu) */
    static const int st_tail[] = {5, 13, 2}, st_tiny[] = {8, 3, 6}, st_small[] = {16, 9, 12, 16},
                     st_small70[] = {16, 16, 16, 16, 6}, st_medium[] = {32, 32, 20, 32};
    FN(case_step)(in, 12, 2, 3, 13, st_tail, 3);
    FN(case_step)(in, 16, 1, 4, 8, st_tiny, 3);
    FN(case_step)(in, 64, 2, 4, 16, st_small, 4);
    FN(case_step)(in, 64, 2, 4, 16, st_small70, 5);
    if (!opt.quick) FN(case_step)(in, 128, 4, 4, 32, st_medium, 4);
}

#undef DEV_JOIN
#undef DEV_EXPAND
#undef FN
#undef RF
#undef REL_ERR
#undef DEV_B1
#undef DEV_B2
#undef DEV_EPS
#undef DEV_LR
#undef DEV_T
#undef DEV_STEP_EPS
#undef ADAM_INIT
#undef DEV_MODEL_INIT

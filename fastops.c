/*
 * fastops: the C engine of microgpt-lab. One call trains one or many optimizer steps of the GPT of
 * train.py (forward, backward, gradient clipping, Adam) on four flat buffers that Python owns:
 * params, grads, and Adam's m and v, each in the flat layout of microgpt/params.py and shared through
 * the buffer protocol, so nothing is copied between Python and C.
 *
 * How the work is laid out
 *   - A batch is flattened to M tokens (documents back to back). Activations are stored feature-major,
 *     X[f][t] with row stride MP = M rounded up to 8, so every per-token operation (RMSNorm, softmax,
 *     attention, cross-entropy) is a loop over contiguous tokens that vectorises with no horizontal sums.
 *     Lanes M..MP-1 are padding: they hold finite junk and never reach a loss or a gradient.
 *   - Every matrix product is one routine, gemm: C = A B with A read through two strides (so W, W^T and
 *     dY^T are all just views) and B, C row-major. The forward pass is Y^T = W X^T, the input gradient
 *     dX^T = W^T dY^T, the weight gradient dW = dY^T X (X token-major, from a transpose).
 *   - Each output element of gemm is one chain of multiply-adds in k order, whatever the tiling and the
 *     thread that computes it, so results do not depend on the number of threads.
 *
 * This file is compiled in three parts:
 *   1. shared definitions (shapes, batches, the thread pool, the engine object),
 *   2. the kernels, written once for a scalar type `real` and included six times:
 *      {float64, float32} x {AVX-512, AVX2+FMA, portable C}; the best one the CPU supports is picked
 *      at run time (x86 only; other platforms build the portable version),
 *   3. the Python bindings: argument validation and the `GPT` type; then the per-op rung (one kernel
 *      per op of train.py, driven from Python by train_fast.OpsEngine) and `InferenceGPT` (sampling
 *      with int8 weights), which are small and float64/float32-only, so they stand outside the template.
 */

#ifndef FASTOPS_INSTANCE
/* ================================================================================================ */
/* 1. Shared definitions                                                                            */
/* ================================================================================================ */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HAVE_X86_DISPATCH 1
#include <immintrin.h>
#endif

#ifndef _WIN32
#define HAVE_PTHREADS 1
#include <pthread.h>
#endif

/* Under AddressSanitizer, scratch sub-buffers are separated by poisoned gaps so that an overrun from
   one into the next is reported instead of silently corrupting a neighbour. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SCRATCH_GUARD 64
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define SCRATCH_GUARD 0
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define RMS_EPS 1e-5
#define LANE_PAD 8          /* token rows of feature-major buffers are padded to a multiple of this */
#define FUSED_MAX_TOKENS 64 /* batches up to this many tokens take the fused backward pass (see fused_rows) */
#define FUSED_ROWS 4        /* weight rows it handles at once */
#define DX_SKEW 8           /* the fused backward's dX rows are this much longer than X's, so that dX[t][k] and
                               X[t+1][k] never share an address modulo 4 KiB (4K aliasing stalls loads;
                               measured 3-5% of a one-document step at (64,2,16) and (128,4,32)) */
#define MAX_DIM 65536       /* bound on every model dimension, so index arithmetic never overflows */
#define MAX_THREADS 256
#define POOL_MIN_WORK 2e6     /* parameters x tokens of a step below which threads do not pay (see run_batch) */

static ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

/* 1/k!, the Taylor coefficients of e^x (the kernels' exp uses the first 8 or 14). */
static const double EXP_TAYLOR[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                      1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600,
                                      1.0 / 6227020800.0};

/* The model's shape and where each matrix starts in the flat buffer (see microgpt/params.py). */
typedef struct {
    int vocab, C, n_layer, n_head, block, relu2;
    ptrdiff_t n_params, wte, wpe, layers, lm_head;
} Shape;

/* Within a layer (12 C^2 floats): wq, wk, wv (one 3C x C block), wo, fc1 (4C x C), fc2 (C x 4C). */
static ptrdiff_t layer_offset(const Shape *s, int l) { return s->layers + (ptrdiff_t)l * 12 * s->C * s->C; }
#define OFF_WQKV(s) 0
#define OFF_WO(s) (3 * (ptrdiff_t)(s)->C * (s)->C)
#define OFF_FC1(s) (4 * (ptrdiff_t)(s)->C * (s)->C)
#define OFF_FC2(s) (8 * (ptrdiff_t)(s)->C * (s)->C)

static void shape_init(Shape *s, int vocab, int C, int n_layer, int n_head, int block, int relu2)
{
    s->vocab = vocab; s->C = C; s->n_layer = n_layer; s->n_head = n_head; s->block = block; s->relu2 = relu2;
    s->wte = 0;
    s->wpe = (ptrdiff_t)vocab * C;
    s->layers = s->wpe + (ptrdiff_t)block * C;
    s->lm_head = layer_offset(s, n_layer);
    s->n_params = s->lm_head + (ptrdiff_t)vocab * C;
}

/* A batch of documents flattened to M tokens: token t of the batch is input[t] at position pos[t],
   predicting target[t]; document d owns tokens doc_start[d] .. doc_start[d+1]-1. */
typedef struct {
    int n_docs, M;
    const int *doc_start, *input, *target, *pos;
} Batch;

/* What run_batch computes: the loss; the loss and the gradient (in the grads buffer); the loss and an
   Adam update fused into the backward pass (no clipping); the logits of the last token. */
enum { MODE_LOSS, MODE_GRAD, MODE_TRAIN, MODE_LOGITS };

/* ---- a minimal thread pool: parallel_for splits [0, n) into one contiguous chunk per thread ---- */

typedef void (*TaskFn)(void *arg, ptrdiff_t begin, ptrdiff_t end, int thread);

typedef struct {
    int n_threads;
#ifdef HAVE_PTHREADS
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned long generation;
    int pending, shutdown, started;
    TaskFn fn;
    void *arg;
    ptrdiff_t n, grain;
#endif
} Pool;

/* Thread i's share of [0, n): whole multiples of `grain`, so vector-aligned work stays aligned. */
static void chunk_of(ptrdiff_t n, ptrdiff_t grain, int i, int n_threads, ptrdiff_t *begin, ptrdiff_t *end)
{
    ptrdiff_t units = (n + grain - 1) / grain;
    *begin = units * i / n_threads * grain;
    *end = units * (i + 1) / n_threads * grain;
    if (*begin > n) *begin = n;
    if (*end > n) *end = n;
}

#ifdef HAVE_PTHREADS
/* A step hands the pool ~50 tasks a few microseconds apart, and waking a thread from a condition
   variable takes tens of microseconds here. So each side first spins (about 50 us) on an atomic read
   of the field it waits for, and only then sleeps. The fields are still written under the mutex. */
#define POOL_SPINS 4096
#ifdef HAVE_X86_DISPATCH
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

typedef struct { Pool *pool; int index; } WorkerArg;

static void *pool_worker(void *p)
{
    Pool *pool = ((WorkerArg *)p)->pool;
    int index = ((WorkerArg *)p)->index;
    free(p);
    unsigned long seen = 0;
    for (;;) {
        for (int i = 0; i < POOL_SPINS && __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen &&
                        !__atomic_load_n(&pool->shutdown, __ATOMIC_ACQUIRE); i++)
            CPU_RELAX();
        pthread_mutex_lock(&pool->mu);
        while (pool->generation == seen && !pool->shutdown)
            pthread_cond_wait(&pool->wake, &pool->mu);
        if (pool->shutdown) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mu);
        ptrdiff_t begin, end;
        chunk_of(pool->n, pool->grain, index, pool->n_threads, &begin, &end);
        if (begin < end) pool->fn(pool->arg, begin, end, index);
        pthread_mutex_lock(&pool->mu);
        if (__atomic_sub_fetch(&pool->pending, 1, __ATOMIC_ACQ_REL) == 0) pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->mu);
    }
}
#endif

/* Starts n_threads - 1 workers (the caller is thread 0). Returns 0, or -1 with a Python exception. */
static int pool_start(Pool *pool, int n_threads)
{
    memset(pool, 0, sizeof *pool);
    pool->n_threads = 1;
    if (n_threads == 1) return 0;
#ifdef HAVE_PTHREADS
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) { PyErr_NoMemory(); return -1; }
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->started = 1;
    for (int i = 1; i < n_threads; i++) {
        WorkerArg *arg = malloc(sizeof *arg);
        if (!arg || (arg->pool = pool, arg->index = i, pthread_create(&pool->threads[i], NULL, pool_worker, arg))) {
            free(arg);
            PyErr_Format(PyExc_OSError, "cannot start thread %d of %d", i + 1, n_threads);
            return -1;
        }
        pool->n_threads = i + 1;
    }
    return 0;
#else
    PyErr_SetString(PyExc_ValueError, "threads > 1 needs pthreads, which this platform's build lacks");
    return -1;
#endif
}

static void pool_stop(Pool *pool)
{
#ifdef HAVE_PTHREADS
    if (!pool->started) return;
    pthread_mutex_lock(&pool->mu);
    __atomic_store_n(&pool->shutdown, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool->threads);
    pool->started = 0;
#endif
    pool->n_threads = 1;
}

/* Runs fn over [0, n) on every thread and returns when all chunks are done. */
static void parallel_for(Pool *pool, TaskFn fn, void *arg, ptrdiff_t n, ptrdiff_t grain)
{
    if (n <= 0) return;
#ifdef HAVE_PTHREADS
    if (pool->n_threads > 1 && n > grain) {
        pthread_mutex_lock(&pool->mu);
        pool->fn = fn; pool->arg = arg; pool->n = n; pool->grain = grain;
        __atomic_store_n(&pool->pending, pool->n_threads - 1, __ATOMIC_RELAXED);
        __atomic_store_n(&pool->generation, pool->generation + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mu);
        ptrdiff_t begin, end;
        chunk_of(n, grain, 0, pool->n_threads, &begin, &end);
        if (begin < end) fn(arg, begin, end, 0);
        for (int i = 0; i < POOL_SPINS && __atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0; i++) CPU_RELAX();
        pthread_mutex_lock(&pool->mu);
        while (pool->pending > 0) pthread_cond_wait(&pool->done, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
        return;
    }
#endif
    fn(arg, 0, n, 0);
}

/* ---- the engine object ---- */

typedef struct GPTObject GPTObject;

/* One instantiation of the kernels (a dtype on an instruction set). */
typedef struct {
    const char *isa;
    size_t (*workspace_bytes)(const Shape *s, ptrdiff_t MP, int saved_layers, int n_threads);
    double (*run_batch)(GPTObject *g, const Batch *b, int mode, double lr, double *logits_out);
    double (*grad_sq_norm)(GPTObject *g);
    void (*adam)(GPTObject *g, double lr, double grad_scale);
} Kernels;

enum { BUF_PARAMS, BUF_GRADS, BUF_M, BUF_V, N_BUFS };
static const char *const BUF_NAMES[N_BUFS] = {"params", "grads", "m", "v"};

struct GPTObject {
    PyObject_HEAD
    Shape s;
    int is_f32;
    Py_buffer views[N_BUFS];
    int n_views;
    void *buf[N_BUFS];              /* params, grads, m, v */
    double beta1, beta2, eps, grad_clip;
    long long step;                 /* Adam's update count t */
    const Kernels *k;
    Pool pool;
    void *work;                     /* scratch memory: activations of one batch, grown on demand */
    size_t work_bytes;
    int *ids;                       /* parsed documents: input, target, pos per token, doc starts */
    size_t ids_cap;
    int busy;                       /* set while a call runs without the GIL */
};

#endif /* part 1 */

#ifdef FASTOPS_INSTANCE
/* ================================================================================================ */
/* 2. Kernels for one scalar type `real` on one instruction set. FN(x) names x for this instance.   */
/* ================================================================================================ */

/* The instance is chosen by FASTOPS_F32 (else float64) and FASTOPS_AVX512 / FASTOPS_AVX2 (else
   portable); TARGET lets the compiler use that instruction set in these functions only. */
#ifdef FASTOPS_F32
#define real float
#define UINT uint32_t
#define R_SQRT sqrtf
#define R_LOG logf
#define EXP_MAX 87.0f                /* |x| beyond which e^x leaves the normal floats */
#define EXP_SHIFTER 0x1.8p23f
#define EXP_BIAS 127u
#define EXP_MANTISSA 23
#define EXP_DEGREE 7                 /* Taylor terms for e^r, |r| <= ln2/2: error < 2^-26 */
#else
#define real double
#define UINT uint64_t
#define R_SQRT sqrt
#define R_LOG log
#define EXP_MAX 708.0
#define EXP_SHIFTER 0x1.8p52
#define EXP_BIAS 1023u
#define EXP_MANTISSA 52
#define EXP_DEGREE 13                /* error < 2^-56 */
#endif

#if defined(FASTOPS_AVX512)
#define TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define ISA_NAME "avx512"
#ifdef FASTOPS_F32
#define VREAL __m512
#define VMASK __mmask16
#define VW 16
#define VMASK_ALL ((__mmask16)0xFFFF)
#define VMASK_FIRST(n) ((__mmask16)((1u << (n)) - 1u))
#define VSUFFIX(op) op##_ps
#else
#define VREAL __m512d
#define VMASK __mmask8
#define VW 8
#define VMASK_ALL ((__mmask8)0xFF)
#define VMASK_FIRST(n) ((__mmask8)((1u << (n)) - 1u))
#define VSUFFIX(op) op##_pd
#endif
#define VZERO() VSUFFIX(_mm512_setzero)()
#define VLOAD(p) VSUFFIX(_mm512_loadu)(p)
#define VLOAD_MASKED(mask, p) VSUFFIX(_mm512_maskz_loadu)(mask, p)
#define VSTORE(p, x) VSUFFIX(_mm512_storeu)(p, x)
#define VSTORE_MASKED(p, mask, x) VSUFFIX(_mm512_mask_storeu)(p, mask, x)
#define VSET1(x) VSUFFIX(_mm512_set1)(x)
#define VADD(a, b) VSUFFIX(_mm512_add)(a, b)
#define VSUB(a, b) VSUFFIX(_mm512_sub)(a, b)
#define VMUL(a, b) VSUFFIX(_mm512_mul)(a, b)
#define VFMA(a, b, c) VSUFFIX(_mm512_fmadd)(a, b, c)
#define VSQRT(x) VSUFFIX(_mm512_sqrt)(x)
#define VDIV(a, b) VSUFFIX(_mm512_div)(a, b)
#elif defined(FASTOPS_AVX2)
#define TARGET __attribute__((target("avx2,fma")))
#define ISA_NAME "avx2"
#else
#define TARGET
#define ISA_NAME "generic"
#endif

/* Per-thread attention scratch: tiles of q, k, v, dO (C rows each), three TPb x TPb tiles, one row. */
static ptrdiff_t FN(attention_scratch)(const Shape *s)
{
    const ptrdiff_t TPb = round_up(s->block, LANE_PAD);
    return (4 * (ptrdiff_t)s->C + 3 * TPb + 1) * TPb;
}

/* Scratch of one batch. Feature-major arrays have rows of MP token lanes; per-layer arrays hold
   n_saved layers back to back (all layers when training, one reused layer when only evaluating). */
typedef struct {
    ptrdiff_t MP;
    real *x, *y0, *inv0;                                        /* residual stream; first RMSNorm */
    real *h1, *inv1, *qkv, *att, *o, *h2, *inv2, *u, *act;      /* per layer */
    real *logits, *lane_w, *lane_loss, *lane_a, *lane_b, *lane_c;
    real *dx, *dbig, *dsmall, *tok_major, *dx_tok, *g_rows;      /* backward temporaries */
    real *att_scratch;                                          /* per thread */
} FN(Work);

static size_t FN(carve)(FN(Work) *w, const Shape *s, ptrdiff_t MP, int n_saved, int n_threads, char *base)
{
    const ptrdiff_t C = s->C, F = 4 * C, L = n_saved, TPb = round_up(s->block, LANE_PAD);
    const ptrdiff_t big = (3 * C > F ? 3 * C : F) > s->vocab ? (3 * C > F ? 3 * C : F) : s->vocab;
    size_t used = 0;
#define TAKE(field, count) do { w->field = (real *)(base ? base + used : NULL); \
                                used += (size_t)round_up((count), 16) * sizeof(real); \
                                if (base) POISON(base + used, SCRATCH_GUARD); \
                                used += SCRATCH_GUARD; } while (0)
    w->MP = MP;
    TAKE(x, C * MP); TAKE(y0, C * MP); TAKE(inv0, MP);
    TAKE(h1, L * C * MP); TAKE(inv1, L * MP); TAKE(qkv, L * 3 * C * MP); TAKE(att, L * s->n_head * TPb * MP);
    TAKE(o, L * C * MP); TAKE(h2, L * C * MP); TAKE(inv2, L * MP); TAKE(u, L * F * MP); TAKE(act, L * F * MP);
    TAKE(logits, s->vocab * MP); TAKE(lane_w, MP); TAKE(lane_loss, MP);
    TAKE(lane_a, MP); TAKE(lane_b, MP); TAKE(lane_c, MP);
    TAKE(dx, C * MP); TAKE(dbig, big * MP); TAKE(dsmall, C * MP); TAKE(tok_major, F * MP); TAKE(dx_tok, (F + DX_SKEW) * MP);
    TAKE(g_rows, n_threads * F);
    TAKE(att_scratch, n_threads * FN(attention_scratch)(s));
#undef TAKE
    return used;
}

static size_t FN(workspace_bytes)(const Shape *s, ptrdiff_t MP, int saved_layers, int n_threads)
{
    FN(Work) w;
    return FN(carve)(&w, s, MP, saved_layers, n_threads, NULL);
}

/* ---- Adam with bias correction, as train.py writes it ----
   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m / bc1) / (sqrt(v / bc2) + eps),
   after scaling g by `scale` (gradient clipping). Elementwise, so any split over threads or tiles
   gives the same bits. */
typedef struct {
    real *p, *g, *m, *v;
    real b1, b2, c1, c2, inv_bc1, inv_bc2, eps, lr, scale;
    int store_grad;         /* also write the scaled gradient back to g */
} FN(AdamArgs);

#ifdef FASTOPS_AVX512
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
#endif

/* Adam on elements [begin, end) of the flat buffers; grad[j] is the gradient of element begin + j. */
static TARGET void FN(adam_update)(const FN(AdamArgs) *a, ptrdiff_t begin, ptrdiff_t end, const real *grad)
{
#ifdef FASTOPS_AVX512
    for (ptrdiff_t i = begin; i < end; i += VW) {
        const VMASK mask = end - i >= VW ? VMASK_ALL : VMASK_FIRST(end - i);
        FN(adam_vector)(a, i, VLOAD_MASKED(mask, grad + (i - begin)), mask);
    }
#else
    real *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
    for (ptrdiff_t i = begin; i < end; i++) {
        const real gi = grad[i - begin] * a->scale;
        if (a->store_grad) a->g[i] = gi;
        m[i] = a->b1 * m[i] + a->c1 * gi;
        v[i] = a->b2 * v[i] + a->c2 * gi * gi;
        p[i] -= a->lr * (m[i] * a->inv_bc1) / (R_SQRT(v[i] * a->inv_bc2) + a->eps);
    }
#endif
}

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

static TARGET FN(AdamArgs) FN(adam_args)(GPTObject *g, double lr, double grad_scale)
{
    const double bc1 = 1.0 - pow(g->beta1, (double)g->step), bc2 = 1.0 - pow(g->beta2, (double)g->step);
    FN(AdamArgs) a = {g->buf[BUF_PARAMS], g->buf[BUF_GRADS], g->buf[BUF_M], g->buf[BUF_V],
                      (real)g->beta1, (real)g->beta2, (real)(1.0 - g->beta1), (real)(1.0 - g->beta2),
                      (real)(1.0 / bc1), (real)(1.0 / bc2), (real)g->eps, (real)lr,
                      (real)grad_scale, grad_scale != 1.0};
    return a;
}

/* One Adam update of every parameter from the gradients in the grads buffer. */
static TARGET void FN(adam)(GPTObject *g, double lr, double grad_scale)
{
    FN(AdamArgs) a = FN(adam_args)(g, lr, grad_scale);
    parallel_for(&g->pool, FN(adam_task), &a, g->s.n_params, 4096);
}

/* ---- matrix product: C (M x N) = or += A (M x K) B (K x N); A[m][k] = A[m*a_rs + k*a_cs] ----
   With `adam`, C is the gradient of the parameters at the same offset: instead of being stored it is
   applied to them right away, while the tile is still in registers (one pass over the weights, not two). */

#ifdef FASTOPS_AVX512
/* A register tile of MR (<= 8) rows x NR (<= 2) vectors of C, the last vector masked to the columns that
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

/* The tile of C at rows m0.., columns n0.. (up to 8 rows, 2 vectors), dispatched to a constant shape. */
static TARGET void FN(gemm_block)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs,
                                  ptrdiff_t a_cs, const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc,
                                  int accumulate, const FN(AdamArgs) *adam, ptrdiff_t m0, ptrdiff_t n0)
{
    const ptrdiff_t cols = N - n0 < 2 * VW ? N - n0 : 2 * VW;
    const int rows = M - m0 < 8 ? (int)(M - m0) : 8, NR = cols > VW ? 2 : 1;
    const VMASK last = VMASK_FIRST(cols - (NR - 1) * VW);
    const real *a = A + m0 * a_rs, *b = B + n0;
    real *c = Cm + m0 * ldc + n0;
#define TILE(mr, nr) FN(gemm_tile)(mr, nr, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last, adam)
    switch (rows * 2 + NR - 1) {
    case 2: TILE(1, 1); break;  case 3: TILE(1, 2); break;
    case 4: TILE(2, 1); break;  case 5: TILE(2, 2); break;
    case 6: TILE(3, 1); break;  case 7: TILE(3, 2); break;
    case 8: TILE(4, 1); break;  case 9: TILE(4, 2); break;
    case 10: TILE(5, 1); break; case 11: TILE(5, 2); break;
    case 12: TILE(6, 1); break; case 13: TILE(6, 2); break;
    case 14: TILE(7, 1); break; case 15: TILE(7, 2); break;
    case 16: TILE(8, 1); break; default: TILE(8, 2); break;
    }
#undef TILE
}

/* Asks for the Adam state (p, m, v) of the tile at rows m0.., columns n0.. of C, a tile or more before its
   update: the hardware prefetchers do not follow a tile's short row segments. */
static inline TARGET void FN(prefetch_adam_tile)(const FN(AdamArgs) *a, const real *Cm, ptrdiff_t ldc, ptrdiff_t M,
                                                 ptrdiff_t m0, ptrdiff_t n0)
{
    for (ptrdiff_t r = m0; r < m0 + 8 && r < M; r++) {
        const ptrdiff_t i = (Cm - a->g) + r * ldc + n0;
        for (int line = 0; line < (int)(2 * VW * sizeof(real)); line += 64) {
            __builtin_prefetch((const char *)(a->p + i) + line, 1);
            __builtin_prefetch((const char *)(a->m + i) + line, 1);
            __builtin_prefetch((const char *)(a->v + i) + line, 1);
        }
    }
}

static TARGET void FN(gemm)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs,
                            const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc, int accumulate,
                            const FN(AdamArgs) *adam)
{
    /* When A is read down its columns (W^T), a tile's k loop touches one cache line in each of K rows;
       blocks of 128 k keep those lines in L1 for the next tiles (measured: 16 halves the speed, and so
       does no blocking at K = 384). The partial sums wait in C, so every element still sums its
       products in k order. */
    const ptrdiff_t KB = a_cs == 1 ? K : 128;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += KB) {
        const ptrdiff_t kb = K - k0 < KB ? K - k0 : KB;
        const int acc = accumulate || k0 > 0;
        const FN(AdamArgs) *upd = k0 + kb == K ? adam : NULL;
        const real *a = A + k0 * a_cs, *b = B + k0 * ldb;
        if (K <= 64 || upd) {
            /* short sums, or an Adam update: row after row, so that C and the Adam moments stream
               through memory (fetched a few tiles ahead) while A's rows stay in L1, and B too when
               the sums are short (the tokens of one or two documents) */
            for (ptrdiff_t m0 = 0; m0 < M; m0 += 8)
                for (ptrdiff_t n0 = 0; n0 < N; n0 += 2 * VW) {
                    if (upd && M * N >= 65536) FN(prefetch_adam_tile)(upd, Cm, ldc, M, m0, n0 + 8 * VW);
                    FN(gemm_block)(M, N, kb, a, a_rs, a_cs, b, ldb, Cm, ldc, acc, upd, m0, n0);
                }
        } else {
            /* long sums: column panel after column panel, so that B's panel stays in cache */
            for (ptrdiff_t n0 = 0; n0 < N; n0 += 2 * VW)
                for (ptrdiff_t m0 = 0; m0 < M; m0 += 8)
                    FN(gemm_block)(M, N, kb, a, a_rs, a_cs, b, ldb, Cm, ldc, acc, upd, m0, n0);
        }
    }
}
#else
/* Portable version: row by row, the inner loop over contiguous columns for the compiler to vectorise. */
static TARGET void FN(gemm)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs, ptrdiff_t a_cs,
                            const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc, int accumulate,
                            const FN(AdamArgs) *adam)
{
    for (ptrdiff_t m = 0; m < M; m++) {
        real *restrict c = Cm + m * ldc;
        if (!accumulate)
            for (ptrdiff_t n = 0; n < N; n++) c[n] = 0;
        for (ptrdiff_t k = 0; k < K; k++) {
            const real a = A[m * a_rs + k * a_cs];
            const real *restrict b = B + k * ldb;
            for (ptrdiff_t n = 0; n < N; n++) c[n] += a * b[n];
        }
        if (adam) FN(adam_range)(adam, c - adam->g, c - adam->g + N);
    }
}
#endif

/* gemm spread over the pool's threads by blocks of rows of C. */
typedef struct {
    ptrdiff_t N, K, a_rs, a_cs, ldb, ldc;
    const real *A, *B;
    real *C;
    int accumulate;
    const FN(AdamArgs) *adam;
} FN(GemmArgs);

static TARGET void FN(gemm_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    const FN(GemmArgs) *g = p;
    (void)thread;
    FN(gemm)(end - begin, g->N, g->K, g->A + begin * g->a_rs, g->a_rs, g->a_cs, g->B, g->ldb,
             g->C + begin * g->ldc, g->ldc, g->accumulate, g->adam);
}

static TARGET void FN(pgemm)(Pool *pool, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const real *A, ptrdiff_t a_rs,
                             ptrdiff_t a_cs, const real *B, ptrdiff_t ldb, real *Cm, ptrdiff_t ldc, int accumulate,
                             const FN(AdamArgs) *adam)
{
    FN(GemmArgs) g = {N, K, a_rs, a_cs, ldb, ldc, A, B, Cm, accumulate, adam};
    parallel_for(pool, FN(gemm_task), &g, M, 8);
}

/* The linear layer y = W x for all tokens at once, and its two gradients. W is (N x K) row-major. */

/* Y^T (N x MP) = W X^T, X^T (K x MP) feature-major. */
static TARGET void FN(linear_forward)(Pool *pool, const real *W, ptrdiff_t N, ptrdiff_t K, const real *xT, real *yT,
                                      ptrdiff_t MP, int accumulate)
{
    FN(pgemm)(pool, N, MP, K, W, K, 1, xT, MP, yT, MP, accumulate, NULL);
}

/* dX^T (K x MP) = W^T dY^T: row i of W^T is column i of W, hence the strides (1, K). */
static TARGET void FN(linear_backward_input)(Pool *pool, const real *W, ptrdiff_t N, ptrdiff_t K, const real *dyT,
                                             real *dxT, ptrdiff_t MP)
{
    FN(pgemm)(pool, K, MP, N, W, 1, K, dyT, MP, dxT, MP, 0, NULL);
}

/* dW (N x K) = dY^T X over the M real tokens; X token-major (M x K). Overwrites dW: each weight
   matrix gets its whole gradient from this one product. With `adam`, updates W instead (see gemm). */
static TARGET void FN(linear_backward_weight)(Pool *pool, real *dW, ptrdiff_t N, ptrdiff_t K, const real *dyT,
                                              const real *x_tok, ptrdiff_t M, ptrdiff_t MP,
                                              const FN(AdamArgs) *adam)
{
    FN(pgemm)(pool, N, K, M, dyT, MP, 1, x_tok, K, dW, K, 0, adam);
}

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

#ifdef FASTOPS_AVX512
/* Rows i .. i+R-1, columns [begin, end). dX's running sums pass through registers once per R rows; the
   R weight-gradient vectors never leave them: each goes straight into Adam (or G). */
static inline __attribute__((always_inline)) TARGET void
FN(fused_rows)(const int R, const int first, const FN(FusedArgs) *f, ptrdiff_t i, ptrdiff_t begin, ptrdiff_t end,
               real *g_rows)
{
    const ptrdiff_t K = f->K, M = f->M, MP = f->MP;
    const FN(AdamArgs) *a = f->adam;
    const real *dy = f->dyT + i * MP, *w = f->W + i * K;
    (void)g_rows;
    for (ptrdiff_t k = begin; k < end; k += VW) {
        const VMASK mask = end - k >= VW ? VMASK_ALL : VMASK_FIRST(end - k);
        if (a)   /* the same columns of the next group: far enough ahead for memory to deliver */
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
}
#else
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
#endif

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

/* Token-major copy (M x K) of a feature-major array (K x MP). */
static TARGET void FN(to_token_major)(const real *xT, real *x, ptrdiff_t K, ptrdiff_t M, ptrdiff_t MP)
{
    for (ptrdiff_t t0 = 0; t0 < M; t0 += 8)
        for (ptrdiff_t k = 0; k < K; k++) {
            __builtin_prefetch(xT + k * MP + t0 + 16);   /* the next block's line of this row, usually in memory */
            for (ptrdiff_t t = t0; t < t0 + 8 && t < M; t++) x[t * K + k] = xT[k * MP + t];
        }
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
    FN(to_token_major)(xT, w->tok_major, K, M, w->MP);
    if (M <= FUSED_MAX_TOKENS) {
        FN(FusedArgs) f = {W, dW, N, K, M, w->MP, dyT, w->tok_major, w->dx_tok, w->g_rows, adam};
        parallel_for(pool, FN(linear_backward_fused_task), &f, K, 16);
        FN(from_token_major)(w->dx_tok, K + DX_SKEW, dxT, K, M, w->MP);
    } else {
        FN(linear_backward_input)(pool, W, N, K, dyT, dxT, w->MP);
        FN(linear_backward_weight)(pool, dW, N, K, dyT, w->tok_major, M, w->MP, adam);
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

/* e^x within about an ulp, in plain arithmetic that the compiler vectorises (libm's exp is one call
   per element): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series, 2^n written straight into
   the exponent bits. Exactly 0 below the smallest normal result, as for the masked scores (-inf). */
static inline TARGET real FN(vexp)(real x)
{
    const real xc = x > EXP_MAX ? EXP_MAX : x < -EXP_MAX ? -EXP_MAX : x;
    const real shifted = xc * (real)1.4426950408889634 + EXP_SHIFTER;   /* round(x / ln2) in the low bits */
    const real n = shifted - EXP_SHIFTER;
    const real r = (xc - n * (real)0.693145751953125) - n * (real)1.4286068203094173e-06;
    real p = (real)EXP_TAYLOR[EXP_DEGREE];
    for (int k = EXP_DEGREE - 1; k >= 0; k--) p = p * r + (real)EXP_TAYLOR[k];
    UINT bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits + EXP_BIAS) << EXP_MANTISSA;   /* (n + bias) in the exponent field */
    real scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -EXP_MAX ? 0 : p * scale;
}

/* ---- causal self-attention of one document, all heads ----
   Query positions are vector lanes: the document's T tokens are copied into local tiles padded with
   zeros to TP = T rounded up to LANE_PAD lanes, and every loop runs over whole groups of lanes. For key
   j and query lane t, P[j][t] is the softmax weight (0 for j > t); it is kept for the backward pass. */

typedef struct {
    const Shape *s;
    const Batch *b;
    ptrdiff_t MP;
    const real *qkv, *dO, *att_saved;
    real *att, *o, *dqkv, *scratch;
} FN(AttnArgs);

/* y[t] = sum_i a[i * a_stride] x[i * ld + t] for n lanes (n a multiple of LANE_PAD), summed in i order.
   Each group of LANE_PAD lanes is one register accumulator, so the sum never round-trips memory. */
static inline TARGET void FN(lanes_combine)(real *restrict y, const real *a, ptrdiff_t a_stride, const real *x,
                                            ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n)
{
    for (ptrdiff_t t0 = 0; t0 < n; t0 += LANE_PAD) {
        real acc[LANE_PAD] = {0};
        for (ptrdiff_t i = 0; i < rows; i++)
            for (int t = 0; t < LANE_PAD; t++) acc[t] += a[i * a_stride] * x[i * ld + t0 + t];
        memcpy(y + t0, acc, sizeof acc);
    }
}

/* Copies rows of a feature-major array (T lanes from s0) into a tile with TP lanes, zero-padded. */
static TARGET void FN(load_tile)(real *tile, ptrdiff_t ld_tile, const real *src, ptrdiff_t rows, ptrdiff_t MP,
                                 ptrdiff_t s0, ptrdiff_t T, ptrdiff_t TP)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        for (ptrdiff_t t = 0; t < T; t++) tile[r * ld_tile + t] = src[r * MP + s0 + t];
        for (ptrdiff_t t = T; t < TP; t++) tile[r * ld_tile + t] = 0;
    }
}

/* Transposes the T x T corner of a (T x TP lanes) tile into another, zero-padding its lanes. */
static TARGET void FN(transpose_tile)(real *out, const real *in, ptrdiff_t ld, ptrdiff_t T, ptrdiff_t TP)
{
    for (ptrdiff_t t = 0; t < T; t++) {
        for (ptrdiff_t j = 0; j < T; j++) out[t * ld + j] = in[j * ld + t];
        for (ptrdiff_t j = T; j < TP; j++) out[t * ld + j] = 0;
    }
}

static TARGET void FN(attention_forward_doc)(const FN(AttnArgs) *a, int doc, real *scratch)
{
    const ptrdiff_t C = a->s->C, H = a->s->n_head, D = C / H, MP = a->MP, TPb = round_up(a->s->block, LANE_PAD);
    const ptrdiff_t s0 = a->b->doc_start[doc], T = a->b->doc_start[doc + 1] - s0, TP = round_up(T, LANE_PAD);
    const real scale = (real)1 / R_SQRT((real)D);
    real *q = scratch, *k = q + C * TPb, *v = k + C * TPb, *acc = v + C * TPb + 3 * TPb * TPb;
    FN(load_tile)(q, TPb, a->qkv, 3 * C, MP, s0, T, TP);   /* q, k, v tiles are consecutive */
    for (ptrdiff_t h = 0; h < H; h++) {
        const real *qh = q + h * D * TPb, *kh = k + h * D * TPb, *vh = v + h * D * TPb;
        real *P = a->att + (s0 * H + h * T) * TPb;
        /* scores s_j[t] = q[t] . k_j / sqrt(D), -inf where j > t */
        for (ptrdiff_t j = 0; j < T; j++) {
            real *Pj = P + j * TPb;
            FN(lanes_combine)(Pj, kh + j, TPb, qh, TPb, D, TP);
            for (ptrdiff_t t = 0; t < TP; t++) Pj[t] = t >= j ? Pj[t] * scale : -(real)INFINITY;
        }
        /* softmax over j, max-subtracted, lane by lane */
        for (ptrdiff_t t0 = 0; t0 < TP; t0 += LANE_PAD) {
            real top[LANE_PAD], total[LANE_PAD] = {0};
            memcpy(top, P + t0, sizeof top);
            for (ptrdiff_t j = 1; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) top[t] = P[j * TPb + t0 + t] > top[t] ? P[j * TPb + t0 + t] : top[t];
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) {
                    const real e = FN(vexp)(P[j * TPb + t0 + t] - top[t]);   /* 0 for the masked j > t */
                    P[j * TPb + t0 + t] = e;
                    total[t] += e;
                }
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) P[j * TPb + t0 + t] /= total[t];
        }
        /* o[t] = sum_j P_j[t] v_j */
        for (ptrdiff_t d = 0; d < D; d++) {
            FN(lanes_combine)(acc, vh + d * TPb, 1, P, TPb, T, TP);
            memcpy(a->o + (h * D + d) * MP + s0, acc, (size_t)T * sizeof(real));
        }
    }
}

/* Gradients of one document's attention: dQ, dK, dV into dqkv from dO and the saved weights P. */
static TARGET void FN(attention_backward_doc)(const FN(AttnArgs) *a, int doc, real *scratch)
{
    const ptrdiff_t C = a->s->C, H = a->s->n_head, D = C / H, MP = a->MP, TPb = round_up(a->s->block, LANE_PAD);
    const ptrdiff_t s0 = a->b->doc_start[doc], T = a->b->doc_start[doc + 1] - s0, TP = round_up(T, LANE_PAD);
    const real scale = (real)1 / R_SQRT((real)D);
    real *q = scratch, *k = q + C * TPb, *v = k + C * TPb, *dO = v + C * TPb;
    real *dS = dO + C * TPb, *PT = dS + TPb * TPb, *dST = PT + TPb * TPb, *acc = dST + TPb * TPb;
    FN(load_tile)(q, TPb, a->qkv, 3 * C, MP, s0, T, TP);
    FN(load_tile)(dO, TPb, a->dO, C, MP, s0, T, TP);
    for (ptrdiff_t h = 0; h < H; h++) {
        const real *qh = q + h * D * TPb, *kh = k + h * D * TPb, *vh = v + h * D * TPb, *dOh = dO + h * D * TPb;
        const real *P = a->att_saved + (s0 * H + h * T) * TPb;
        /* through o = sum_j P_j v_j:  dP_j[t] = dO[t] . v_j */
        for (ptrdiff_t j = 0; j < T; j++) FN(lanes_combine)(dS + j * TPb, vh + j, TPb, dOh, TPb, D, TP);
        /* through the softmax: dS_j = P_j (dP_j - sum_i P_i dP_i) / sqrt(D); padding lanes t >= T get 0 */
        for (ptrdiff_t t0 = 0; t0 < TP; t0 += LANE_PAD) {
            real mean[LANE_PAD] = {0};
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) mean[t] += P[j * TPb + t0 + t] * dS[j * TPb + t0 + t];
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) {
                    const ptrdiff_t i = j * TPb + t0 + t;
                    dS[i] = t0 + t < T ? P[i] * (dS[i] - mean[t]) * scale : 0;
                }
        }
        /* through s_j = q . k_j:  dq[t] = sum_j dS_j[t] k_j */
        for (ptrdiff_t d = 0; d < D; d++) {
            FN(lanes_combine)(acc, kh + d * TPb, 1, dS, TPb, T, TP);
            memcpy(a->dqkv + (h * D + d) * MP + s0, acc, (size_t)T * sizeof(real));
        }
        /* dv_j = sum_t P_j[t] dO[t] and dk_j = sum_t dS_j[t] q[t]: keys become the lanes */
        FN(transpose_tile)(PT, P, TPb, T, TP);
        FN(transpose_tile)(dST, dS, TPb, T, TP);
        for (ptrdiff_t d = 0; d < D; d++) {
            FN(lanes_combine)(acc, dOh + d * TPb, 1, PT, TPb, T, TP);
            memcpy(a->dqkv + (2 * C + h * D + d) * MP + s0, acc, (size_t)T * sizeof(real));
            FN(lanes_combine)(acc, qh + d * TPb, 1, dST, TPb, T, TP);
            memcpy(a->dqkv + (C + h * D + d) * MP + s0, acc, (size_t)T * sizeof(real));
        }
    }
}

/* Asks for a document's segment of `rows` feature-major rows (one or two cache lines each): a document
   touches a few lanes of hundreds of rows, a pattern no hardware prefetcher follows. */
static TARGET void FN(prefetch_doc)(const FN(AttnArgs) *a, const real *base, ptrdiff_t rows, int doc, int write)
{
    const ptrdiff_t s0 = a->b->doc_start[doc], last = a->b->doc_start[doc + 1] - 1;
    for (ptrdiff_t r = 0; r < rows; r++) {
        if (write) {
            __builtin_prefetch(base + r * a->MP + s0, 1);
            __builtin_prefetch(base + r * a->MP + last, 1);
        } else {
            __builtin_prefetch(base + r * a->MP + s0);
            __builtin_prefetch(base + r * a->MP + last);
        }
    }
}

/* Documents begin .. end-1 one after another, forward or backward; while one computes, the rows of the
   next are fetched. */
static TARGET void FN(attention_docs)(const FN(AttnArgs) *a, ptrdiff_t begin, ptrdiff_t end, int thread, int backward)
{
    const ptrdiff_t C = a->s->C;
    real *scratch = a->scratch + thread * FN(attention_scratch)(a->s);
    for (ptrdiff_t doc = begin; doc < end; doc++) {
        if (doc + 1 < end) {
            FN(prefetch_doc)(a, a->qkv, 3 * C, (int)doc + 1, 0);
            if (backward) {
                FN(prefetch_doc)(a, a->dO, C, (int)doc + 1, 0);
                FN(prefetch_doc)(a, a->dqkv, 3 * C, (int)doc + 1, 1);
            } else {
                FN(prefetch_doc)(a, a->o, C, (int)doc + 1, 1);
            }
        }
        if (backward) FN(attention_backward_doc)(a, (int)doc, scratch);
        else FN(attention_forward_doc)(a, (int)doc, scratch);
    }
}

static TARGET void FN(attention_forward_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    FN(attention_docs)(p, begin, end, thread, 0);
}

static TARGET void FN(attention_backward_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    FN(attention_docs)(p, begin, end, thread, 1);
}

/* ---- the whole model on one batch ---- */

/* Loss of every token lane and, with want_grad, dloss/dlogits in place of the logits: each token is
   weighted by lane_w = 1 / (n_docs * its document's length), padding lanes by 0. */
static TARGET void FN(cross_entropy)(const Shape *s, const Batch *b, FN(Work) *w, int want_grad)
{
    const ptrdiff_t V = s->vocab, MP = w->MP, M = b->M;
    real *L = w->logits, *top = w->lane_a, *total = w->lane_b, *picked = w->lane_c;
    for (ptrdiff_t t = 0; t < MP; t++) { top[t] = L[t]; total[t] = 0; picked[t] = 0; }
    for (ptrdiff_t v = 1; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) top[t] = L[v * MP + t] > top[t] ? L[v * MP + t] : top[t];
    for (ptrdiff_t t = 0; t < M; t++) picked[t] = L[b->target[t] * MP + t];
    for (ptrdiff_t v = 0; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) {
            const real e = FN(vexp)(L[v * MP + t] - top[t]);
            L[v * MP + t] = e;
            total[t] += e;
        }
    for (ptrdiff_t t = 0; t < MP; t++) w->lane_loss[t] = top[t] + R_LOG(total[t]) - picked[t];
    if (!want_grad) return;
    /* softmax - onehot(target), times the token's weight */
    for (ptrdiff_t t = 0; t < MP; t++) picked[t] = w->lane_w[t] / total[t];
    for (ptrdiff_t v = 0; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) L[v * MP + t] *= picked[t];
    for (ptrdiff_t t = 0; t < M; t++) L[b->target[t] * MP + t] -= w->lane_w[t];
}

/* Forward pass over a batch, then (MODE_GRAD, MODE_TRAIN) the backward pass. Returns the sum over
   documents of each document's mean token loss (the caller divides by n_docs); with MODE_LOGITS writes
   the last token's logits to logits_out instead. MODE_TRAIN updates the parameters with learning rate
   lr as each weight gradient is computed (g->step must already count this update). */
static TARGET double FN(run_batch)(GPTObject *g, const Batch *b, int mode, double lr, double *logits_out)
{
    const Shape *s = &g->s;
    const ptrdiff_t C = s->C, F = 4 * C, V = s->vocab, H = s->n_head, M = b->M, MP = round_up(M, LANE_PAD);
    const ptrdiff_t TPb = round_up(s->block, LANE_PAD);
    const int train = mode == MODE_GRAD || mode == MODE_TRAIN;
    /* Small steps run on the calling thread: each of a step's ~50 kernels would cost less than handing
       it to the pool (measured: (16,1,8) one document, 9 us on one thread, 13 us on two). The results
       are the same bits either way. */
    Pool solo = {.n_threads = 1};
    Pool *pool = (double)s->n_params * M < POOL_MIN_WORK ? &solo : &g->pool;
    const real *P = g->buf[BUF_PARAMS];
    FN(Work) w;
    UNPOISON(g->work, g->work_bytes);   /* the gaps move with the batch size */
    FN(carve)(&w, s, MP, train ? s->n_layer : 1, pool->n_threads, g->work);
    FN(AttnArgs) attn = {s, b, MP, NULL, NULL, NULL, NULL, NULL, NULL, w.att_scratch};

    /* x = rmsnorm(wte[token] + wpe[position]); padding lanes start (and stay) finite */
    real *x0 = w.dsmall;
    for (ptrdiff_t t = 0; t < MP; t++)
        for (ptrdiff_t j = 0; j < C; j++)
            x0[j * MP + t] = t < M ? P[s->wte + b->input[t] * C + j] + P[s->wpe + b->pos[t] * C + j] : 0;
    FN(rmsnorm_forward)(x0, w.y0, w.inv0, C, MP);
    memcpy(w.x, w.y0, (size_t)(C * MP) * sizeof(real));

    for (int l = 0; l < s->n_layer; l++) {
        const real *W = P + layer_offset(s, l);
        const ptrdiff_t sl = train ? l : 0;
        real *h1 = w.h1 + sl * C * MP, *inv1 = w.inv1 + sl * MP, *qkv = w.qkv + sl * 3 * C * MP;
        real *att = w.att + sl * H * TPb * MP, *o = w.o + sl * C * MP, *h2 = w.h2 + sl * C * MP;
        real *inv2 = w.inv2 + sl * MP, *u = w.u + sl * F * MP, *act = w.act + sl * F * MP;
        /* x = x + Wo attention(rmsnorm(x)) */
        FN(rmsnorm_forward)(w.x, h1, inv1, C, MP);
        FN(linear_forward)(pool, W + OFF_WQKV(s), 3 * C, C, h1, qkv, MP, 0);
        attn.qkv = qkv; attn.att = att; attn.o = o;
        parallel_for(pool, FN(attention_forward_task), &attn, b->n_docs, 1);
        for (ptrdiff_t f = 0; f < C; f++)
            for (ptrdiff_t t = M; t < MP; t++) o[f * MP + t] = 0;
        FN(linear_forward)(pool, W + OFF_WO(s), C, C, o, w.x, MP, 1);
        /* x = x + W2 act(W1 rmsnorm(x)) */
        FN(rmsnorm_forward)(w.x, h2, inv2, C, MP);
        FN(linear_forward)(pool, W + OFF_FC1(s), F, C, h2, u, MP, 0);
        FN(mlp_act_forward)(u, act, F * MP, s->relu2);
        FN(linear_forward)(pool, W + OFF_FC2(s), C, F, act, w.x, MP, 1);
    }
    FN(linear_forward)(pool, P + s->lm_head, V, C, w.x, w.logits, MP, 0);

    if (mode == MODE_LOGITS) {
        for (ptrdiff_t v = 0; v < V; v++) logits_out[v] = (double)w.logits[v * MP + M - 1];
        return 0.0;
    }
    for (ptrdiff_t t = 0; t < MP; t++) w.lane_w[t] = 0;
    for (int d = 0; d < b->n_docs; d++) {
        const int T = b->doc_start[d + 1] - b->doc_start[d];
        for (int t = b->doc_start[d]; t < b->doc_start[d + 1]; t++) w.lane_w[t] = (real)(1.0 / b->n_docs / T);
    }
    FN(cross_entropy)(s, b, &w, train);
    double loss = 0.0;
    for (int d = 0; d < b->n_docs; d++) {
        double doc_loss = 0.0;
        for (int t = b->doc_start[d]; t < b->doc_start[d + 1]; t++) doc_loss += (double)w.lane_loss[t];
        loss += doc_loss / (b->doc_start[d + 1] - b->doc_start[d]);
    }
    if (!train) return loss;

    /* Backward. dx is the gradient of the residual stream, feature-major like x. Each weight matrix
       is read for its input gradient before its own gradient (and, in MODE_TRAIN, its update). */
    real *G = g->buf[BUF_GRADS], *dlogits = w.logits;
    const FN(AdamArgs) update = FN(adam_args)(g, lr, 1.0), *adam = mode == MODE_TRAIN ? &update : NULL;
    FN(linear_backward)(pool, &w, P + s->lm_head, G + s->lm_head, V, C, dlogits, w.x, w.dx, M, adam);
    for (int l = s->n_layer - 1; l >= 0; l--) {
        const real *W = P + layer_offset(s, l);
        real *dW = G + layer_offset(s, l);
        const real *h1 = w.h1 + l * C * MP, *inv1 = w.inv1 + l * MP, *qkv = w.qkv + l * 3 * C * MP;
        const real *att = w.att + l * H * TPb * MP, *o = w.o + l * C * MP, *h2 = w.h2 + l * C * MP;
        const real *inv2 = w.inv2 + l * MP, *u = w.u + l * F * MP, *act = w.act + l * F * MP;
        real *dact = w.dbig, *dqkv = w.dbig, *dh = w.dsmall, *dO = w.dsmall;
        /* MLP */
        FN(linear_backward)(pool, &w, W + OFF_FC2(s), dW + OFF_FC2(s), C, F, w.dx, act, dact, M, adam);
        FN(mlp_act_backward)(u, dact, F * MP, s->relu2);
        FN(linear_backward)(pool, &w, W + OFF_FC1(s), dW + OFF_FC1(s), F, C, dact, h2, dh, M, adam);
        FN(rmsnorm_backward)(h2, inv2, dh, w.dx, w.lane_a, C, MP, 1);
        /* attention */
        FN(linear_backward)(pool, &w, W + OFF_WO(s), dW + OFF_WO(s), C, C, w.dx, o, dO, M, adam);
        attn.qkv = qkv; attn.att_saved = att; attn.dO = dO; attn.dqkv = dqkv;
        parallel_for(pool, FN(attention_backward_task), &attn, b->n_docs, 1);
        FN(linear_backward)(pool, &w, W + OFF_WQKV(s), dW + OFF_WQKV(s), 3 * C, C, dqkv, h1, dh, M, adam);
        FN(rmsnorm_backward)(h1, inv1, dh, w.dx, w.lane_a, C, MP, 1);
    }
    /* the first RMSNorm, then scatter into the embedding rows the batch used */
    real *dx0 = w.dsmall;
    FN(rmsnorm_backward)(w.y0, w.inv0, w.dx, dx0, w.lane_a, C, MP, 0);
    memset(G + s->wte, 0, (size_t)(s->layers - s->wte) * sizeof(real));
    for (ptrdiff_t t = 0; t < M; t++)
        for (ptrdiff_t j = 0; j < C; j++) {
            G[s->wte + b->input[t] * C + j] += dx0[j * MP + t];
            G[s->wpe + b->pos[t] * C + j] += dx0[j * MP + t];
        }
    if (adam) FN(adam_range)(adam, s->wte, s->layers);
    return loss;
}

/* Sum of squared gradients, in double and in buffer order. */
static TARGET double FN(grad_sq_norm)(GPTObject *g)
{
    const real *G = g->buf[BUF_GRADS];
    double sum = 0.0;
    for (ptrdiff_t i = 0; i < g->s.n_params; i++) sum += (double)G[i] * (double)G[i];
    return sum;
}

static const Kernels FN(kernels) = {ISA_NAME, FN(workspace_bytes), FN(run_batch), FN(grad_sq_norm), FN(adam)};

#undef real
#undef UINT
#undef R_SQRT
#undef R_LOG
#undef EXP_MAX
#undef EXP_SHIFTER
#undef EXP_BIAS
#undef EXP_MANTISSA
#undef EXP_DEGREE
#undef TARGET
#undef ISA_NAME
#ifdef FASTOPS_AVX512
#undef VREAL
#undef VMASK
#undef VW
#undef VMASK_ALL
#undef VMASK_FIRST
#undef VSUFFIX
#undef VZERO
#undef VLOAD
#undef VLOAD_MASKED
#undef VSTORE
#undef VSTORE_MASKED
#undef VSET1
#undef VADD
#undef VSUB
#undef VMUL
#undef VFMA
#undef VSQRT
#undef VDIV
#endif
#endif /* part 2 */

#ifndef FASTOPS_INSTANCE
/* ================================================================================================ */
/* 3. Instantiation and Python bindings                                                             */
/* ================================================================================================ */

#define FASTOPS_INSTANCE
#define FN_JOIN(name, suffix) name##_##suffix
#define FN_EXPAND(name, suffix) FN_JOIN(name, suffix)
#define FN(name) FN_EXPAND(name, SUFFIX)

/* portable C */
#define SUFFIX f64_generic
#include __FILE__
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_generic
#include __FILE__
#undef SUFFIX
#undef FASTOPS_F32

#ifdef HAVE_X86_DISPATCH
/* AVX2 + FMA: the portable code, auto-vectorised for 256-bit registers */
#define FASTOPS_AVX2
#define SUFFIX f64_avx2
#include __FILE__
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_avx2
#include __FILE__
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_AVX2

/* AVX-512: register-tiled gemm and Adam with intrinsics, the rest auto-vectorised for 512-bit registers */
#define FASTOPS_AVX512
#define SUFFIX f64_avx512
#include __FILE__
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_avx512
#include __FILE__
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_AVX512
#endif /* HAVE_X86_DISPATCH */
#undef FASTOPS_INSTANCE

/* Instruction sets, best first, and each one's kernels for float64 and float32. */
typedef struct { const char *name; const Kernels *f64, *f32; } Isa;
static const Isa ISAS[] = {
#ifdef HAVE_X86_DISPATCH
    {"avx512", &kernels_f64_avx512, &kernels_f32_avx512},
    {"avx2", &kernels_f64_avx2, &kernels_f32_avx2},
#endif
    {"generic", &kernels_f64_generic, &kernels_f32_generic},
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))

static int cpu_supports(const char *isa)
{
#ifdef HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(isa, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return !strcmp(isa, "generic");
}

/* ---- argument parsing ---- */

/* Acquires a writable C-contiguous float64/float32 buffer of exactly n values. */
static int get_flat_buffer(PyObject *obj, Py_buffer *view, const char *name, ptrdiff_t n, int *is_f32)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a writable contiguous buffer of float64 or float32 "
                     "(array('d'), array('f') or a numpy array), not %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
    if (!strcmp(f, "d") && view->itemsize == 8) *is_f32 = 0;
    else if (!strcmp(f, "f") && view->itemsize == 4) *is_f32 = 1;
    else {
        PyErr_Format(PyExc_TypeError, "%s must hold float64 ('d') or float32 ('f') values, not format '%s'",
                     name, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->len / view->itemsize != n) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd values; this model's flat layout needs %zd",
                     name, view->len / view->itemsize, (Py_ssize_t)n);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

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
    if (overflow || id < 0 || id >= g->s.vocab) {
        PyErr_Format(PyExc_ValueError, "%sdocument %zd, token %zd: id %S is out of range for vocab_size %d",
                     where, doc, i, item, g->s.vocab);
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
    if (n_docs == 0 || n_docs > INT_MAX / (g->s.block + 1)) {
        PyErr_Format(PyExc_ValueError, "%sa batch needs 1 to %d documents, got %zd", where,
                     INT_MAX / (g->s.block + 1), n_docs);
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
        if (len < 2 || len > g->s.block + 1) {
            PyErr_Format(PyExc_ValueError, "%sdocument %zd has %zd token ids; each needs 2 to block_size + 1 = %d "
                         "([BOS] + tokens + [BOS], cut to block_size + 1)", where, d, len, g->s.block + 1);
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
        if (len < 2 || len > g->s.block + 1) {   /* a sequence may change length between the passes */
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

/* Makes the scratch memory hold a batch of M tokens (zeroed when it grows). */
static int ensure_workspace(GPTObject *g, ptrdiff_t M, int mode)
{
    const ptrdiff_t MP = round_up(M, LANE_PAD);
    const int saved = mode == MODE_GRAD ? g->s.n_layer : 1;
    const double estimate = (double)MP * (saved * (14.0 * g->s.C + (double)g->s.n_head * (g->s.block + LANE_PAD)) +
                                          16.0 * g->s.C + g->s.vocab);
    if (estimate * 8.0 > 1e13) {
        PyErr_Format(PyExc_MemoryError, "a batch of %zd tokens needs too much scratch memory", (Py_ssize_t)M);
        return -1;
    }
    size_t bytes = g->k->workspace_bytes(&g->s, MP, saved, g->pool.n_threads);
    if (bytes <= g->work_bytes) return 0;
    free(g->work);
    g->work = NULL;
    g->work_bytes = 0;
    void *p = NULL;
#ifdef _WIN32
    p = _aligned_malloc(bytes, 64);
#else
    if (posix_memalign(&p, 64, bytes)) p = NULL;
#endif
    if (!p) { PyErr_NoMemory(); return -1; }
    memset(p, 0, bytes);
    g->work = p;
    g->work_bytes = bytes;
    return 0;
}

static void free_workspace(GPTObject *g)
{
#ifdef _WIN32
    _aligned_free(g->work);
#else
    free(g->work);
#endif
    g->work = NULL;
    g->work_bytes = 0;
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
    pool_stop(&g->pool);
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
    const Isa *chosen = NULL;
    for (int i = 0; i < N_ISAS && !chosen; i++)
        if (isa && strcmp(isa, "auto") ? !strcmp(isa, ISAS[i].name) : cpu_supports(ISAS[i].name)) chosen = &ISAS[i];
    if (!chosen || !cpu_supports(chosen->name)) {
        PyErr_Format(PyExc_ValueError, "isa '%s' is not available on this CPU or build (try fastops.available_isas())",
                     isa ? isa : "auto");
        return NULL;
    }

    GPTObject *g = (GPTObject *)type->tp_alloc(type, 0);
    if (!g) return NULL;
    shape_init(&g->s, vocab, C, n_layer, n_head, block, !strcmp(mlp_act, "relu2"));
    g->pool.n_threads = 1;
    for (int i = 0; i < N_BUFS; i++) {
        int is_f32;
        if (get_flat_buffer(objs[i], &g->views[i], BUF_NAMES[i], g->s.n_params, &is_f32) < 0) goto fail;
        g->n_views = i + 1;
        g->buf[i] = g->views[i].buf;
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
    g->beta1 = beta1; g->beta2 = beta2; g->eps = eps; g->grad_clip = grad_clip;
    g->k = g->is_f32 ? chosen->f32 : chosen->f64;
    if (pool_start(&g->pool, threads) < 0) goto fail;
    return (PyObject *)g;
fail:
    Py_DECREF(g);
    return NULL;
}

/* One optimizer step on a parsed batch. Runs without the GIL. Clipping needs the whole gradient's norm
   before any update, so only then is the gradient stored and applied in a second pass. */
static double train_one(GPTObject *g, const Batch *b, double lr)
{
    g->step++;
    if (g->grad_clip <= 0) return g->k->run_batch(g, b, MODE_TRAIN, lr, NULL) / b->n_docs;
    const double loss = g->k->run_batch(g, b, MODE_GRAD, 0.0, NULL) / b->n_docs;
    const double norm = sqrt(g->k->grad_sq_norm(g));
    g->k->adam(g, lr, norm > g->grad_clip ? g->grad_clip / norm : 1.0);
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
    loss = g->k->run_batch(g, &b, mode, 0.0, NULL) / b.n_docs;
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
    if (n < 1 || n > g->s.block) {
        PyErr_Format(PyExc_ValueError, "logits needs 1 to block_size = %d token ids, got %zd", g->s.block, n);
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
    out = PyMem_Malloc((size_t)g->s.vocab * sizeof(double));
    if (!out) { PyErr_NoMemory(); goto leave; }
    Py_BEGIN_ALLOW_THREADS
    g->k->run_batch(g, &b, MODE_LOGITS, 0.0, out);
    Py_END_ALLOW_THREADS
    result = PyList_New(g->s.vocab);
    for (int v = 0; result && v < g->s.vocab; v++) {
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

static PyObject *GPT_get_step(GPTObject *g, void *closure) { (void)closure; return PyLong_FromLongLong(g->step); }

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
    g->step = step;
    return 0;
}

static PyObject *GPT_get_isa(GPTObject *g, void *closure) { (void)closure; return PyUnicode_FromString(g->k->isa); }
static PyObject *GPT_get_dtype(GPTObject *g, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(g->is_f32 ? "float32" : "float64");
}
static PyObject *GPT_get_threads(GPTObject *g, void *closure) { (void)closure; return PyLong_FromLong(g->pool.n_threads); }
static PyObject *GPT_get_n_params(GPTObject *g, void *closure) { (void)closure; return PyLong_FromSsize_t(g->s.n_params); }

static PyGetSetDef GPT_getset[] = {
    {"step", (getter)GPT_get_step, (setter)GPT_set_step, "Adam's update count t (train_steps increments it)", NULL},
    {"isa", (getter)GPT_get_isa, NULL, "instruction set of the kernels in use", NULL},
    {"dtype", (getter)GPT_get_dtype, NULL, "'float64' or 'float32', from the buffers", NULL},
    {"threads", (getter)GPT_get_threads, NULL, "threads used for batches", NULL},
    {"n_params", (getter)GPT_get_n_params, NULL, "length of each flat buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef GPT_methods[] = {
    {"train_steps", (PyCFunction)GPT_train_steps, METH_VARARGS, train_steps_doc},
    {"loss_and_grad", (PyCFunction)GPT_loss_and_grad, METH_O, loss_and_grad_doc},
    {"eval_loss", (PyCFunction)GPT_eval_loss, METH_O, eval_loss_doc},
    {"logits", (PyCFunction)GPT_logits, METH_O, logits_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(GPT_doc,
"GPT(params, grads, m, v, vocab_size, n_embd, n_layer, n_head, block_size, mlp_act='relu2',\n"
"    beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=0.0, threads=1, isa=None)\n\n"
"The model of train.py computed in C on four flat buffers in the layout of microgpt/params.py,\n"
"shared (not copied) through the buffer protocol: all float64 or all float32, writable, contiguous.\n"
"isa picks the kernels ('avx512', 'avx2', 'generic'; None for the best this CPU runs).");

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

/* ---- the per-op rung: one kernel per op of train.py, float64, driven from Python ----
   Each function does what one op of train.py does for one token (forward or backward), on array('d')
   vectors and on the flat params/grads buffers at a matrix's offset. train_fast.OpsEngine strings them
   together exactly as train.py strings its ops; the difference to the fused GPT is the per-op cost of
   crossing from Python to C. Arguments are checked like everywhere else: wrong sizes, offsets or types
   raise ValueError / TypeError. */

#define MAX_VEC_ARGS 10

typedef struct {
    Py_buffer views[MAX_VEC_ARGS];
    int n;
} VecArgs;

/* A contiguous float64 vector argument (writable if asked); its data and length in *out, *len. */
static int vec_arg(VecArgs *va, PyObject *obj, const char *name, int writable, double **out, Py_ssize_t *len)
{
    Py_buffer *view = &va->views[va->n];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a %scontiguous float64 buffer (array('d')), not %.100s",
                     name, writable ? "writable " : "", Py_TYPE(obj)->tp_name);
        return -1;
    }
    va->n++;
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
    if (strcmp(f, "d") || view->itemsize != 8) {
        PyErr_Format(PyExc_TypeError, "%s must hold float64 ('d') values, not format '%s'", name,
                     view->format ? view->format : "B");
        return -1;
    }
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

/* ---- inference with int8 weights ----
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
    if (PyObject_GetBuffer(po, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Format(PyExc_TypeError, "params must be a contiguous float64 or float32 buffer, not %.100s",
                     Py_TYPE(po)->tp_name);
        Py_DECREF(m);
        return NULL;
    }
    const char *f = view.format ? view.format : "B";
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
    if ((strcmp(f, "d") || view.itemsize != 8) && (strcmp(f, "f") || view.itemsize != 4)) {
        PyErr_Format(PyExc_TypeError, "params must hold float64 ('d') or float32 ('f') values, not format '%s'",
                     view.format ? view.format : "B");
        goto fail;
    }
    is_f32 = view.itemsize == 4;
    if (view.len / view.itemsize != m->s.n_params) {
        PyErr_Format(PyExc_ValueError, "params holds %zd values; this model's flat layout needs %zd",
                     view.len / view.itemsize, (Py_ssize_t)m->s.n_params);
        goto fail;
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
fail:
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

static PyObject *available_isas(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < N_ISAS; i++)
        if (cpu_supports(ISAS[i].name)) {
            PyObject *name = PyUnicode_FromString(ISAS[i].name);
            if (!name || PyList_Append(list, name) < 0) Py_CLEAR(list);
            Py_XDECREF(name);
        }
    return list;
}

static PyMethodDef module_methods[] = {
    {"available_isas", available_isas, METH_NOARGS, "Instruction sets this CPU and build can run, best first."},
    {"embedding", op_embedding, METH_VARARGS, op_embedding_doc},
    {"embedding_backward", op_embedding_backward, METH_VARARGS, op_embedding_backward_doc},
    {"rmsnorm", op_rmsnorm, METH_VARARGS, op_rmsnorm_doc},
    {"rmsnorm_backward", op_rmsnorm_backward, METH_VARARGS, op_rmsnorm_backward_doc},
    {"linear", op_linear, METH_VARARGS, op_linear_doc},
    {"linear_backward", op_linear_backward, METH_VARARGS, op_linear_backward_doc},
    {"relu_act", op_relu_act, METH_VARARGS, op_relu_act_doc},
    {"relu_act_backward", op_relu_act_backward, METH_VARARGS, op_relu_act_backward_doc},
    {"attention", op_attention, METH_VARARGS, op_attention_doc},
    {"attention_backward", op_attention_backward, METH_VARARGS, op_attention_backward_doc},
    {"cross_entropy", op_cross_entropy, METH_VARARGS, op_cross_entropy_doc},
    {"cross_entropy_backward", op_cross_entropy_backward, METH_VARARGS, op_cross_entropy_backward_doc},
    {"add", op_add, METH_VARARGS, op_add_doc},
    {"axpy", op_axpy, METH_VARARGS, op_axpy_doc},
    {"sum_squares", op_sum_squares, METH_O, op_sum_squares_doc},
    {"adam", op_adam, METH_VARARGS, op_adam_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastops_module = {
    PyModuleDef_HEAD_INIT, "fastops", "microgpt-lab's C engine: the GPT of train.py on flat buffers.", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_fastops(void)
{
    if (PyType_Ready(&GPTType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastops_module);
    if (!m) return NULL;
    Py_INCREF(&GPTType);
    if (PyModule_AddObject(m, "GPT", (PyObject *)&GPTType) < 0) {
        Py_DECREF(&GPTType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyType_Ready(&InferType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&InferType);
    if (PyModule_AddObject(m, "InferenceGPT", (PyObject *)&InferType) < 0) {
        Py_DECREF(&InferType);
        Py_DECREF(m);
        return NULL;
    }
    /* batches of at most this many tokens train with the fused backward pass (benchmarks and tests) */
    if (PyModule_AddIntConstant(m, "FUSED_MAX_TOKENS", FUSED_MAX_TOKENS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

#endif /* part 3 */

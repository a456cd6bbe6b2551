/* fastops/common.h: what every part of the C engine shares -- the model's shape and flat layout, a
   batch of documents, the engine's state, and the table of kernels one instruction set provides.
   Nothing here needs Python, so the kernel harness (fastops/dev/) builds the kernels without it. */
#ifndef FASTOPS_COMMON_H
#define FASTOPS_COMMON_H

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
#if (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
#define HAVE_NEON 1
#include <arm_neon.h>
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

static inline ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

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
static inline ptrdiff_t layer_offset(const Shape *s, int l) { return s->layers + (ptrdiff_t)l * 12 * s->C * s->C; }
#define OFF_WQKV(s) 0
#define OFF_WO(s) (3 * (ptrdiff_t)(s)->C * (s)->C)
#define OFF_FC1(s) (4 * (ptrdiff_t)(s)->C * (s)->C)
#define OFF_FC2(s) (8 * (ptrdiff_t)(s)->C * (s)->C)

static inline void shape_init(Shape *s, int vocab, int C, int n_layer, int n_head, int block, int relu2)
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

#include "pool.h"
#include "profile.h"

enum { BUF_PARAMS, BUF_GRADS, BUF_M, BUF_V, N_BUFS };

/* The trainer's state as the kernels see it: the four flat buffers (params, grads, Adam's m and v,
   owned by the caller), Adam's settings and update count, the threads, and scratch memory. */
typedef struct {
    Shape s;
    void *buf[N_BUFS];
    double beta1, beta2, eps, grad_clip;
    long long step;                 /* Adam's update count t */
    Pool pool;
    void *work;                     /* scratch memory: activations of one batch, grown on demand */
    size_t work_bytes;
    PhaseProfile profile;           /* cycles per phase of the step (MICROGPT_PROFILE builds only) */
} Model;

/* One instantiation of the kernels (a dtype on an instruction set). */
typedef struct {
    const char *isa;
    size_t (*workspace_bytes)(const Shape *s, ptrdiff_t MP, int saved_layers, int n_threads);
    double (*run_batch)(Model *g, const Batch *b, int mode, double lr, double *logits_out);
    double (*grad_sq_norm)(Model *g);
    void (*adam)(Model *g, double lr, double grad_scale);
} Kernels;

#endif

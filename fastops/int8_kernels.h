/* fastops/int8_kernels.h: the matrix-vector kernels of fastops.InferenceGPT (fastops/int8.h) -- inference
   with int8 weights. No Python: a harness can build them alone.
   Sampling runs one token at a time with a KV cache, so each weight matrix is used for a matrix-vector
   product. InferenceGPT keeps every matrix of the layers and lm_head either as float32 or quantised per
   row (symmetric: q = round(w / s), s = max|row| / 127) and computes y = W x with 8-bit integer dot
   products; the input vector is quantised the same way on the fly (x_q in [-127, 127]). Embeddings stay
   float32 (lookups).

   Both formats pack 16 rows side by side, whatever the vector width, so that every kernel reads the
   same packing (a 512-bit register holds the 16 rows, 256 bits 8 of them, 128 bits 4):
     float32: block[k][16]              y[16] += x[k] * block[k][0..15]
     int8:    block[k/4][16][4]         y[16] += dot4(x[k..k+3], block[k/4][r][0..3])
   The kernels, best first (InferenceGPT's isa= picks one; model.isa names it):
     avx512-vnni  vpdpbusd: 16 rows x 4 bytes per instruction. It multiplies unsigned by signed bytes, so
                  x goes in as x_q + 128 and each row's 128 * sum(q) is subtracted afterwards.
     avx2-vnni    the same on 256 bits (AVX-VNNI, e.g. Alder Lake).
     avx2, sse    no VNNI: vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16 with
                  signed saturation. With x_q + 128 a pair reaches 2 * 255 * 127 = 64770 > 32767, so
                  instead |x_q| is the unsigned operand and x_q's sign moves onto the weights (vpsignb:
                  q * sign(x_q); |q| <= 127 so the negation cannot overflow): a pair is at most
                  2 * 127 * 127 = 32258 and never saturates. vpmaddwd then adds int16 pairs into int32.
     neon         vmull_s8 (int16 products, exact) + vpadalq_s16; vdotq_s32 where the build has dotprod
                  (reported as neon-dotprod).
     generic      plain C.
   Every int8 kernel computes each row's dot product sum(x_q * q) exactly in int32 (for up to
   2^31 / 127^2 = 133,144 columns; Infer_new checks), and turns it into y[r] = (s_x * s_r) * (float)dot
   in that order, so int8 logits are identical bit for bit on every instruction set. The float32
   kernels keep each row's multiply-adds in column order too (FMA in the vector kernels, so they agree
   with each other exactly and with the generic one to rounding). */

#ifndef FASTOPS_INT8_KERNELS_H
#define FASTOPS_INT8_KERNELS_H

#define INT8_MAX_COLS 133144   /* 127 * 127 * cols stays below 2^31 */

/* AVX-VNNI's intrinsics and target name came with GCC 11 and clang 12 */
#if defined(HAVE_X86_DISPATCH) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define HAVE_AVXVNNI 1
#endif

typedef struct {
    int rows, cols, blocks, groups;   /* blocks of 16 rows; groups of 4 columns (int8) */
    float *w;                         /* float32 packing, or NULL */
    int8_t *q;                        /* int8 packing, or NULL */
    float *scale;                     /* per row (int8) */
    int32_t *bias;                    /* per row: 128 * sum of the row's q (int8, for the VNNI kernels) */
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

/* The input vector in int8 form, in the shapes the kernels multiply: x_q itself, |x_q| (the unsigned
   operand of vpmaddubsw) and x_q + 128 (of vpdpbusd). Padding columns hold x_q = 0. */
typedef struct {
    int8_t *s;
    uint8_t *a, *u;
} QuantInput;
enum { XQ_S = 1, XQ_A = 2, XQ_U = 4 };   /* which of them a kernel reads */

/* Fills the `forms` of xq for x[0 .. cols-1] and returns the scale that undoes the quantisation (0 for an
   all-zero x). Inlined into each kernel, so it vectorises for the kernel's instruction set; every step
   is exact or one IEEE operation (x / s, a division, cannot be fused with the add that rounds it, as
   x * (1 / s) could be on FMA targets), so x_q is the same on every instruction set. */
static inline __attribute__((always_inline)) float quantize_input(const float *restrict x, int cols,
                                                                  const QuantInput *xq, int groups, const int forms)
{
    uint32_t top = 0;   /* the largest |x| as bits: for non-negative floats the integer order is the float order */
    for (int c = 0; c < cols; c++) {
        uint32_t bits;
        memcpy(&bits, x + c, 4);
        bits &= 0x7fffffffu;
        top = bits > top ? bits : top;
    }
    float amax;
    memcpy(&amax, &top, 4);
    const float s = amax / 127.0f;
    int8_t *restrict xs = xq->s;
    uint8_t *restrict xa = xq->a, *restrict xu = xq->u;
    for (int c = 0; c < cols; c++) {
        const float v = s > 0 ? x[c] / s : 0.0f;                 /* in [-127, 127] */
        const int q = (int)(v + copysignf(0.5f, v));             /* rounded half away from zero */
        if (forms & XQ_S) xs[c] = (int8_t)q;
        if (forms & XQ_A) xa[c] = (uint8_t)(q < 0 ? -q : q);
        if (forms & XQ_U) xu[c] = (uint8_t)(q + 128);
    }
    for (int c = cols; c < groups * 4; c++) {
        if (forms & XQ_S) xs[c] = 0;
        if (forms & XQ_A) xa[c] = 0;
        if (forms & XQ_U) xu[c] = 128;
    }
    return s;
}

typedef void (*MatvecFn)(const PackedMatrix *pm, const float *x, float *y, const QuantInput *xq);

static void matvec_f32_generic(const PackedMatrix *pm, const float *x, float *y, const QuantInput *xq)
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

static void matvec_i8_generic(const PackedMatrix *pm, const float *x, float *y, const QuantInput *xq)
{
    const float sx = quantize_input(x, pm->cols, xq, pm->groups, XQ_S);
    for (int b = 0; b < pm->blocks; b++) {
        int32_t acc[16] = {0};
        const int8_t *q = pm->q + (size_t)b * pm->groups * 64;
        for (int g = 0; g < pm->groups; g++)
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 4; j++) acc[i] += (int32_t)xq->s[g * 4 + j] * q[(g * 16 + i) * 4 + j];
        for (int i = 0; i < 16 && b * 16 + i < pm->rows; i++)
            y[b * 16 + i] = sx * pm->scale[b * 16 + i] * (float)acc[i];
    }
}

static inline int32_t load4(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- The vector kernels, each written once (MATVEC_F32 and MATVEC_I8 below) against helpers that every
   instruction set defines:
     MV_FL                 lanes of a float vector MV_VF (16, 8 or 4); MV_VI holds as many int32
     mv_zero(), mv_set1(f), mv_load(p), mv_fma(a, b, c) = a * b + c (one rounding), mv_mul(a, b)
     mv_store_first(p, v, n)   the first min(n, MV_FL) lanes of v (none if n <= 0)
     mv_iload(p), mv_isub(a, b), mv_itof(v)        int32 vectors, and their conversion to float
     MV_ACC, mv_acc_zero() an int8 accumulator of MV_FL rows; mv_acc_sum(acc) -> its int32 dot products
     MV_X, mv_x(xq, g)     input columns 4g .. 4g+3, ready for mv_dot4
     mv_dot4(acc, x, q)    acc += for each of the MV_FL rows, the dot product of its 4 weights at q with x
     MV_BIASED             1 where mv_dot4 multiplies x_q + 128 (VNNI): the row's 128 * sum(q) is subtracted
     MV_XQ                 the forms of the input mv_x reads (XQ_S, XQ_A, XQ_U)
     MV_TARGET_F32, MV_TARGET_I8   the instruction set, for the compiler
   A pass computes `nb` blocks of 16 rows at once, each row still one chain of multiply-adds in column
   order: nb independent chains hide the multiply-add latency, which one block at a time waited on
   (measured per token on one core of an AVX-512/AMX Xeon: (128,4,32) avx512-vnni 22 -> 17 us, (64,2,16) float32
   avx512 8.2 -> 6.8 us). Passes take MV_PASS = MV_FL / 2 blocks, so 8 vector accumulators, then 4, 2, 1
   for the remainder; nb is a constant in each call, so the passes' loops unroll and the accumulators
   live in registers. */

#define MV_NV (16 / MV_FL)    /* vectors per block of 16 rows */
#define MV_PASS (MV_FL / 2)
#define MV_PASSES(pass, in)                                                                    \
    int b = 0;                                                                                 \
    if (MV_PASS >= 8) for (; b + 8 <= pm->blocks; b += 8) pass(pm, in, y, xq, b, 8);           \
    if (MV_PASS >= 4) for (; b + 4 <= pm->blocks; b += 4) pass(pm, in, y, xq, b, 4);           \
    for (; b + 2 <= pm->blocks; b += 2) pass(pm, in, y, xq, b, 2);                             \
    for (; b < pm->blocks; b++) pass(pm, in, y, xq, b, 1);

#define MATVEC_F32(isa)                                                                                        \
    MV_TARGET_F32 static inline __attribute__((always_inline)) void f32_pass_##isa(                              \
        const PackedMatrix *pm, const float *x, float *y, const QuantInput *xq, int b, const int nb)            \
    {                                                                                                          \
        (void)xq;                                                                                              \
        MV_VF acc[MV_PASS][MV_NV];                                                                             \
        const size_t next = (size_t)pm->cols * 16;   /* floats from one block to the next */                   \
        const float *w = pm->w + (size_t)b * next;                                                             \
        for (int j = 0; j < nb; j++)                                                                           \
            for (int v = 0; v < MV_NV; v++) acc[j][v] = mv_zero();                                             \
        for (int c = 0; c < pm->cols; c++) {                                                                   \
            const MV_VF xc = mv_set1(x[c]);                                                                    \
            for (int j = 0; j < nb; j++)                                                                       \
                for (int v = 0; v < MV_NV; v++)                                                                \
                    acc[j][v] = mv_fma(xc, mv_load(w + j * next + c * 16 + v * MV_FL), acc[j][v]);             \
        }                                                                                                      \
        for (int j = 0; j < nb; j++)                                                                           \
            for (int v = 0; v < MV_NV; v++) {                                                                  \
                const int r = (b + j) * 16 + v * MV_FL;                                                        \
                mv_store_first(y + r, acc[j][v], pm->rows - r);                                                \
            }                                                                                                  \
    }                                                                                                          \
    MV_TARGET_F32 static void matvec_f32_##isa(const PackedMatrix *pm, const float *x, float *y,                \
                                              const QuantInput *xq)                                            \
    {                                                                                                          \
        MV_PASSES(f32_pass_##isa, x)                                                                           \
    }

#define MATVEC_I8(isa)                                                                                         \
    MV_TARGET_I8 static inline __attribute__((always_inline)) void i8_pass_##isa(                                \
        const PackedMatrix *pm, float sx, float *y, const QuantInput *xq, int b, const int nb)                  \
    {                                                                                                          \
        MV_ACC acc[MV_PASS][MV_NV];                                                                            \
        const size_t next = (size_t)pm->groups * 64;   /* bytes from one block to the next */                  \
        const int8_t *q = pm->q + (size_t)b * next;                                                            \
        for (int j = 0; j < nb; j++)                                                                           \
            for (int v = 0; v < MV_NV; v++) acc[j][v] = mv_acc_zero();                                         \
        for (int g = 0; g < pm->groups; g++) {                                                                 \
            const MV_X xg = mv_x(xq, g);                                                                       \
            for (int j = 0; j < nb; j++)                                                                       \
                for (int v = 0; v < MV_NV; v++)                                                                \
                    acc[j][v] = mv_dot4(acc[j][v], xg, q + j * next + g * 64 + v * MV_FL * 4);                 \
        }                                                                                                      \
        const MV_VF vsx = mv_set1(sx);                                                                         \
        for (int j = 0; j < nb; j++)                                                                           \
            for (int v = 0; v < MV_NV; v++) {                                                                  \
                const int r = (b + j) * 16 + v * MV_FL;                                                        \
                MV_VI dot = mv_acc_sum(acc[j][v]);                                                             \
                if (MV_BIASED) dot = mv_isub(dot, mv_iload(pm->bias + r));                                     \
                mv_store_first(y + r, mv_mul(mv_mul(vsx, mv_load(pm->scale + r)), mv_itof(dot)), pm->rows - r); \
            }                                                                                                  \
    }                                                                                                          \
    MV_TARGET_I8 static void matvec_i8_##isa(const PackedMatrix *pm, const float *x, float *y,                  \
                                            const QuantInput *xq)                                              \
    {                                                                                                          \
        const float sx = quantize_input(x, pm->cols, xq, pm->groups, MV_XQ);                                   \
        MV_PASSES(i8_pass_##isa, sx)                                                                           \
    }

#ifdef HAVE_X86_DISPATCH
/* -- AVX-512: float32, and int8 with VNNI */
#define MV_TARGET_F32 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define MV_TARGET_I8 __attribute__((target("avx512f,avx512vl,avx2,fma,avx512vnni")))
#define MV_FL 16
#define MV_VF __m512
#define MV_VI __m512i
#define mv_zero() _mm512_setzero_ps()
#define mv_set1(f) _mm512_set1_ps(f)
#define mv_load(p) _mm512_loadu_ps(p)
#define mv_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define mv_mul(a, b) _mm512_mul_ps(a, b)
#define mv_store_first(p, v, n) do {                                                                       \
        const int n_ = (n);                                                                              \
        if (n_ >= 16) _mm512_storeu_ps(p, v);                                                            \
        else if (n_ > 0) _mm512_mask_storeu_ps(p, (__mmask16)((1u << n_) - 1u), v);                      \
    } while (0)
#define mv_iload(p) _mm512_loadu_si512(p)
#define mv_isub(a, b) _mm512_sub_epi32(a, b)
#define mv_itof(v) _mm512_cvtepi32_ps(v)
#define MV_ACC __m512i
#define mv_acc_zero() _mm512_setzero_si512()
#define mv_acc_sum(acc) (acc)
#define MV_X __m512i
#define mv_x(xq, g) _mm512_set1_epi32(load4((xq)->u + 4 * (g)))
#define mv_dot4(acc, x, q) _mm512_dpbusd_epi32(acc, x, mv_iload(q))
#define MV_BIASED 1
#define MV_XQ XQ_U
MATVEC_F32(avx512)
MATVEC_I8(avx512vnni)
#include "int8_end.h"

/* -- AVX2 + FMA (256 bits) and SSE4.1 + FMA (128 bits): float32, and int8 through vpmaddubsw with the
   sign of x_q moved onto the weights (see the top of this file); AVX-VNNI on 256 bits where the CPU has
   it. The helpers are written once for both widths: MV_OP(op) is _mm256_op or _mm_op. */
typedef struct { __m256i s, a; } MvSigned256;   /* x_q and |x_q| of 4 columns, repeated across the vector */
typedef struct { __m128i s, a; } MvSigned128;
#define mv_zero() MV_OP(setzero_ps)()
#define mv_set1(f) MV_OP(set1_ps)(f)
#define mv_load(p) MV_OP(loadu_ps)(p)
#define mv_fma(a, b, c) MV_OP(fmadd_ps)(a, b, c)
#define mv_mul(a, b) MV_OP(mul_ps)(a, b)
#define mv_store_first(p, v, n) do {                                                                       \
        const int n_ = (n);                                                                              \
        float lanes_[MV_FL];                                                                             \
        if (n_ >= MV_FL) MV_OP(storeu_ps)(p, v);                                                         \
        else if (n_ > 0) { MV_OP(storeu_ps)(lanes_, v); memcpy(p, lanes_, (size_t)n_ * sizeof(float)); } \
    } while (0)
#define mv_isub(a, b) MV_OP(sub_epi32)(a, b)
#define mv_itof(v) MV_OP(cvtepi32_ps)(v)
#define mv_acc_sum(acc) (acc)
#define MV_X_SIGNED(T, xq, g) \
    ((T){MV_OP(set1_epi32)(load4((xq)->s + 4 * (g))), MV_OP(set1_epi32)(load4((xq)->a + 4 * (g)))})
/* |x_q| (unsigned) times q * sign(x_q) (signed), pairs added in int16 (at most 2 * 127 * 127, so no
   saturation), then pairs of those added into int32 */
#define MV_DOT4_SIGNED(acc, x, q) \
    MV_OP(add_epi32)(acc, MV_OP(madd_epi16)(MV_OP(maddubs_epi16)((x).a, MV_OP(sign_epi8)(mv_iload(q), (x).s)), \
                                            MV_OP(set1_epi16)(1)))

#define MV_OP(op) _mm256_##op
#define MV_FL 8
#define MV_VF __m256
#define MV_VI __m256i
#define MV_ACC __m256i
#define mv_iload(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define mv_acc_zero() _mm256_setzero_si256()
#define MV_TARGET_F32 __attribute__((target("avx2,fma")))
#define MV_TARGET_I8 MV_TARGET_F32
#define MV_X MvSigned256
#define mv_x(xq, g) MV_X_SIGNED(MvSigned256, xq, g)
#define mv_dot4 MV_DOT4_SIGNED
#define MV_BIASED 0
#define MV_XQ (XQ_S | XQ_A)
MATVEC_F32(avx2)
MATVEC_I8(avx2)
#undef MV_TARGET_I8
#undef MV_X
#undef mv_x
#undef mv_dot4
#undef MV_BIASED
#undef MV_XQ
/* AVX-VNNI: vpdpbusd on 256 bits, as the AVX-512 kernel uses it */
#ifdef HAVE_AVXVNNI
#define MV_TARGET_I8 __attribute__((target("avx2,fma,avxvnni")))
#define MV_X __m256i
#define mv_x(xq, g) _mm256_set1_epi32(load4((xq)->u + 4 * (g)))
#define mv_dot4(acc, x, q) _mm256_dpbusd_avx_epi32(acc, x, mv_iload(q))
#define MV_BIASED 1
#define MV_XQ XQ_U
MATVEC_I8(avx2vnni)
#endif
#include "int8_width_end.h"

#define MV_OP(op) _mm_##op
#define MV_FL 4
#define MV_VF __m128
#define MV_VI __m128i
#define MV_ACC __m128i
#define mv_iload(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define mv_acc_zero() _mm_setzero_si128()
/* FMA needs the VEX encoding, so the compiler could widen plain loops to 256 bits: keep it at 128 */
#define MV_TARGET_F32 __attribute__((target("sse4.1,fma,prefer-vector-width=128")))
#define MV_TARGET_I8 MV_TARGET_F32
#define MV_X MvSigned128
#define mv_x(xq, g) MV_X_SIGNED(MvSigned128, xq, g)
#define mv_dot4 MV_DOT4_SIGNED
#define MV_BIASED 0
#define MV_XQ (XQ_S | XQ_A)
MATVEC_F32(sse)
MATVEC_I8(sse)
#include "int8_end.h"
#endif

#ifdef HAVE_NEON
/* -- NEON (AArch64: every CPU has it): float32, and int8 as vdotq_s32 where the build targets the
   dot-product extension (-march=armv8.2-a+dotprod, or a CPU that has it), else vmull_s8 (exact int16
   products, 127 * 127 at most) and vpadalq_s16 (pairs of them added into int32). */
#define MV_TARGET_F32
#define MV_TARGET_I8
#define MV_FL 4
#define MV_VF float32x4_t
#define MV_VI int32x4_t
#define mv_zero() vdupq_n_f32(0.0f)
#define mv_set1(f) vdupq_n_f32(f)
#define mv_load(p) vld1q_f32(p)
#define mv_fma(a, b, c) vfmaq_f32(c, a, b)   /* c + a b, one rounding */
#define mv_mul(a, b) vmulq_f32(a, b)
#define mv_store_first(p, v, n) do {                                                                       \
        const int n_ = (n);                                                                              \
        float lanes_[4];                                                                                 \
        if (n_ >= 4) vst1q_f32(p, v);                                                                    \
        else if (n_ > 0) { vst1q_f32(lanes_, v); memcpy(p, lanes_, (size_t)n_ * sizeof(float)); }       \
    } while (0)
#define mv_iload(p) vld1q_s32(p)
#define mv_isub(a, b) vsubq_s32(a, b)
#define mv_itof(v) vcvtq_f32_s32(v)
#define MV_X int8x16_t
#define mv_x(xq, g) vreinterpretq_s8_s32(vdupq_n_s32(load4((xq)->s + 4 * (g))))
#define MV_BIASED 0
#define MV_XQ XQ_S
#ifdef __ARM_FEATURE_DOTPROD
#define NEON_I8_NAME "neon-dotprod"
#define MV_ACC int32x4_t
#define mv_acc_zero() vdupq_n_s32(0)
#define mv_dot4(acc, x, q) vdotq_s32(acc, vld1q_s8(q), x)
#define mv_acc_sum(acc) (acc)
#else
#define NEON_I8_NAME "neon"
/* 4 rows as pairs of half dot products: lo holds rows 0, 1 (columns 0+1 and 2+3 of each), hi rows 2, 3 */
typedef struct { int32x4_t lo, hi; } MvPairs;
static inline __attribute__((always_inline)) MvPairs mv_dot4_pairs(MvPairs acc, int8x16_t x, const int8_t *q)
{
    const int8x16_t w = vld1q_s8(q);
    acc.lo = vpadalq_s16(acc.lo, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    acc.hi = vpadalq_s16(acc.hi, vmull_high_s8(w, x));
    return acc;
}
#define MV_ACC MvPairs
#define mv_acc_zero() ((MvPairs){vdupq_n_s32(0), vdupq_n_s32(0)})
#define mv_dot4(acc, x, q) mv_dot4_pairs(acc, x, q)
#define mv_acc_sum(acc) vpaddq_s32((acc).lo, (acc).hi)
#endif
MATVEC_F32(neon)
MATVEC_I8(neon)
#include "int8_end.h"
#endif

#ifdef HAVE_AVXVNNI
#include <cpuid.h>
static int cpu_has_avxvnni(void)
{
    unsigned a, b, c, d;   /* CPUID leaf 7, subleaf 1: EAX bit 4 (the OS keeps AVX state: checked with avx2) */
    return cpu_supports("avx2") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1u);
}
#endif

/* The kernels InferenceGPT runs, best first. isa= takes `isa`, or for int8 also the kernel's name
   (model.isa); avx2-vnni is int8 only (float32 on that CPU is avx2's). */
typedef struct {
    const char *isa, *i8_name;
    MatvecFn i8, f32;
} InferIsa;
static const InferIsa INFER_ISAS[] = {
#ifdef HAVE_X86_DISPATCH
    {"avx512", "avx512-vnni", matvec_i8_avx512vnni, matvec_f32_avx512},
#ifdef HAVE_AVXVNNI
    {"avx2-vnni", "avx2-vnni", matvec_i8_avx2vnni, NULL},
#endif
    {"avx2", "avx2", matvec_i8_avx2, matvec_f32_avx2},
    {"sse", "sse", matvec_i8_sse, matvec_f32_sse},
#endif
#ifdef HAVE_NEON
    {"neon", NEON_I8_NAME, matvec_i8_neon, matvec_f32_neon},
#endif
    {"generic", "generic", matvec_i8_generic, matvec_f32_generic},
};
#define N_INFER_ISAS ((int)(sizeof INFER_ISAS / sizeof INFER_ISAS[0]))

static int infer_isa_runs(const InferIsa *k, int int8)
{
    if (!(int8 ? k->i8 : k->f32)) return 0;
#ifdef HAVE_X86_DISPATCH
    if (!strcmp(k->isa, "avx512")) return cpu_supports("avx512") && (!int8 || __builtin_cpu_supports("avx512vnni"));
#ifdef HAVE_AVXVNNI
    if (!strcmp(k->isa, "avx2-vnni")) return cpu_has_avxvnni();
#endif
#endif
    return cpu_supports(k->isa);
}

/* The kernel isa= names (NULL or "auto": the best this CPU runs), or NULL if this CPU or build lacks it. */
static const InferIsa *find_infer_isa(const char *isa, int int8)
{
    for (int i = 0; i < N_INFER_ISAS; i++) {
        const InferIsa *k = &INFER_ISAS[i];
        if (!isa || !strcmp(isa, "auto")) {
            if (infer_isa_runs(k, int8)) return k;
        } else if (!strcmp(isa, k->isa) || (int8 && !strcmp(isa, k->i8_name)))
            return infer_isa_runs(k, int8) ? k : NULL;
    }
    return NULL;
}


#endif

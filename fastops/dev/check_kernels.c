/* fastops/dev/check_kernels.c: the kernel harness, in the spirit of llm.c's dev/cuda. One translation unit
   with every kernel instance of this build (../instances.h), no Python. For each instance the CPU runs and
   each dtype, every optimised kernel is run on random inputs beside the portable instance (reference.h,
   the same dtype), the outputs are compared, and the kernel is timed:

     adam            Adam on a range of the flat buffers (adam_range), plain and with clipping's scale
     gemm_fwd        Y^T = W X^T                            (linear_forward; += for the residual layers)
     gemm_dx         dX^T = W^T dY^T, W read down columns   (linear_backward_input: a_rs = 1, a_cs = K)
     gemm_dw         dW = dY^T X, and gemm_dw_adam with Adam fused in  (copy_weight_input + linear_backward_weight)
     fused / fused_adam   the small-batch backward (linear_backward_fused_task), columns split as two threads
     rmsnorm_fwd / rmsnorm_bwd, vexp (and vexp_libm: its accuracy against libm), cross_entropy
     attn_fwd / attn_bwd  causal attention of a batch's documents (attention_*_task)
     step_grad       run_batch MODE_GRAD on a small Model built here: loss and every gradient
     step_train      two MODE_TRAIN steps (Adam fused into the backward pass): loss, params, m, v
     step_clip       MODE_GRAD, grad_sq_norm, then the Kernels table's adam with a clipping scale
     step_eval       MODE_LOSS and MODE_LOGITS
     step_threads    MODE_GRAD on 1 and on 3 threads: the same bits (the engine's promise)

   Shapes mix widths no vector divides (K = 13, N = 7, M = 5 tokens padded to MP = 8) with the lab's
   standard widths (16, 64, 128 and 4x those for the MLP). Every buffer is allocated with its exact size,
   so that a build with -fsanitize=address reports any tail that reads or writes past its end.

   Errors: max over elements of |x - r| / max(|r|, rms(r)), r the reference: relative where values are of
   typical size, and against the output's RMS where a sum cancels to near zero (an elementwise relative
   error is unbounded there for any two correct summation orders). vexp's outputs, spread over hundreds
   of orders of magnitude, are compared purely elementwise. Tolerances: see the TOL_* macros below.

   Usage: check_kernels [--check-only] [--quick] [--isa NAME] [--kernel SUBSTRING] [--threads N] [--min-time S] [--seed N]
   --check-only skips the timing (for qemu); --quick leaves out the largest shapes and the medium model
   (for qemu and sanitizer builds). Exit status 1 if any check fails, 2 on bad arguments. */

#include "../instances.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

/* ---- tolerances ----
   Vector and reference kernels sum every product in the same k order; they differ in rounding only:
   fused multiply-adds (one rounding) against a multiply and an add (two), and whatever else the
   compiler contracts under the instance's target. Each such difference is an ulp-sized perturbation
   per operation, so the gap grows like u sqrt(n) for a chain of n operations (u = 2^-53 or 2^-24).
   Measured maxima over 8 seeds on AVX-512/AVX2/SSE (NEON matches the generic instance exactly): float64
   2.4e-15 per kernel and 3.9e-13 per step, float32 1.2e-6 and 1.3e-4. The bounds keep a margin of
   about 250-400x above that for float64 and about 8x for float32; a wrong kernel errs by O(1):
     single kernels:  float64 1e-12, float32 1e-5 (longest sums here: 512 products)
     a whole step:    float64 1e-10, float32 1e-3 -- a step chains ~20 kernels per layer, the softmaxes and
                      RMSNorms amplify relative input errors, and float32's u sqrt(n) is already 1e-6;
                      what it guards against is a wrong kernel, whose error is O(1). */
#define TOL_F64 1e-12
#define TOL_F32 1e-5
#define TOL_STEP_F64 1e-10
#define TOL_STEP_F32 1e-3
/* vexp against libm's exp (in double): the kernels' own accuracy claim, "within about an ulp" --
   2^-56 from the Taylor series plus the rounding of 14 multiply-adds in float64, of 8 in float32. */
#define TOL_LIBM_F64 1e-15
#define TOL_LIBM_F32 1e-6

/* ---- options, random numbers, buffers, timing ---- */

typedef struct {
    int check_only, quick, threads;
    const char *isa, *kernel;
    double min_time;
    uint64_t seed;
} Options;

static Options opt = {0, 0, 1, NULL, NULL, 0.01, 12345};
static int n_checks, n_failures;

static uint64_t rng_state;

static uint64_t rng_next(void)   /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(double lo, double hi) { return lo + (hi - lo) * (double)(rng_next() >> 11) * 0x1p-53; }

/* Every case draws from its own stream (seed and case name), so --kernel and --isa never change inputs. */
static void rng_seed_case(const char *kernel, const char *shape)
{
    uint64_t h = opt.seed * 0x100000001b3ull + 14695981039346656037ull;
    for (const char *p = kernel; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    for (const char *p = shape; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    rng_state = h;
}

/* Exact-size allocations (ASan reports a byte past the end); never zero bytes. */
static void *xalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) { fprintf(stderr, "check_kernels: out of memory (%zu bytes)\n", bytes); exit(2); }
    return p;
}

/* -DDEV_CLOCK=CLOCK_THREAD_CPUTIME_ID times on-CPU time only: steadier for A/B runs on a busy machine */
#ifndef DEV_CLOCK
#define DEV_CLOCK CLOCK_MONOTONIC
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(DEV_CLOCK, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds per run of `stmt`: repetitions doubled until one batch takes min_time / 4, then the best of
   three batches. The empty asm tells the compiler that memory is read, so no run is optimised away. */
#define BENCH(seconds, stmt) do {                                                                  \
        long reps_ = 1;                                                                            \
        double dt_;                                                                                \
        for (;;) {                                                                                 \
            const double t0_ = now_s();                                                            \
            for (long r_ = 0; r_ < reps_; r_++) { stmt; __asm__ __volatile__("" ::: "memory"); }   \
            dt_ = now_s() - t0_;                                                                   \
            if (dt_ >= opt.min_time / 4 || reps_ >= (1L << 30)) break;                             \
            reps_ *= 2;                                                                            \
        }                                                                                          \
        double best_ = dt_ / (double)reps_;                                                        \
        for (int trial_ = 0; trial_ < 3; trial_++) {                                               \
            const double t0_ = now_s();                                                            \
            for (long r_ = 0; r_ < reps_; r_++) { stmt; __asm__ __volatile__("" ::: "memory"); }   \
            const double d_ = (now_s() - t0_) / (double)reps_;                                     \
            if (d_ < best_) best_ = d_;                                                            \
        }                                                                                          \
        (seconds) = best_;                                                                         \
    } while (0)

/* max_i |x_i - r_i| / max(|r_i|, floor), floor = rms(r) (or 0: purely elementwise). NaN or a mismatched
   infinity counts as an infinite error; equal infinities as none. */
#define DEFINE_REL_ERR(name, T)                                                                    \
    static double name(const T *x, const T *r, ptrdiff_t n, int rms_floor)                         \
    {                                                                                              \
        double sq = 0, worst = 0;                                                                  \
        for (ptrdiff_t i = 0; i < n; i++)                                                          \
            if (isfinite((double)r[i])) sq += (double)r[i] * (double)r[i];                         \
        const double floor = rms_floor && n ? sqrt(sq / (double)n) : 0;                            \
        for (ptrdiff_t i = 0; i < n; i++) {                                                        \
            const double a = x[i], b = r[i];                                                       \
            double e;                                                                              \
            if (a == b) e = 0;                                                                     \
            else if (!isfinite(a) || !isfinite(b)) e = INFINITY;                                   \
            else {                                                                                 \
                const double d = fabs(b) > floor ? fabs(b) : floor;                                \
                e = d > 0 ? fabs(a - b) / d : INFINITY;                                            \
            }                                                                                      \
            if (e > worst || e != e) worst = e;                                                    \
        }                                                                                          \
        return worst;                                                                              \
    }
DEFINE_REL_ERR(rel_err_f64, double)
DEFINE_REL_ERR(rel_err_f32, float)

static double max2(double a, double b) { return a > b || b != b ? a : b; }

/* What one instance is checked as. */
typedef struct {
    const char *isa, *dtype;
    int is_ref;            /* the reference itself: its checks compare it with itself (ASan still looks) */
    double tol, tol_step, tol_libm;
} Inst;

static int want(const char *kernel) { return !opt.kernel || strstr(kernel, opt.kernel); }

/* One line of results. amount is the FLOPs or bytes of one run (see each case), unit names its rate. */
static void report(const Inst *in, const char *kernel, const char *shape, double err, double tol, double seconds,
                   double amount, const char *unit)
{
    const int ok = err <= tol;
    n_checks++;
    if (!ok) n_failures++;
    const char *verdict = !ok ? "FAIL" : in->is_ref ? "ref" : "PASS";
    printf("%-7s %-4s %-13s %-34s %9.2e %7.0e ", in->isa, in->dtype, kernel, shape, err, tol);
    if (seconds > 0) printf("%-4s %10.2f us %8.2f %s\n", verdict, seconds * 1e6, amount / seconds * 1e-9, unit);
    else printf("%s\n", verdict);
    fflush(stdout);
}

/* A batch of documents of the given lengths (tokens each, i.e. len + 1 ids with BOS around), random ids. */
typedef struct {
    Batch b;
    int *ids;
} DevBatch;

static DevBatch make_batch(const int *lens, int n_docs, int vocab)
{
    DevBatch d;
    int M = 0;
    for (int i = 0; i < n_docs; i++) M += lens[i];
    d.ids = xalloc((3 * (size_t)M + (size_t)n_docs + 1) * sizeof(int));
    int *input = d.ids, *target = input + M, *pos = target + M, *doc_start = pos + M;
    int t = 0;
    for (int i = 0; i < n_docs; i++) {
        doc_start[i] = t;
        /* ids: BOS, lens[i] - 1 random tokens, BOS; inputs are all but the last, targets all but the first */
        int prev = vocab - 1;
        for (int j = 0; j < lens[i]; j++) {
            const int next = j == lens[i] - 1 ? vocab - 1 : (int)(rng_next() % (uint64_t)(vocab - 1));
            input[t + j] = prev;
            pos[t + j] = j;
            target[t + j] = next;
            prev = next;
        }
        t += lens[i];
    }
    doc_start[n_docs] = t;
    Batch b = {n_docs, M, doc_start, input, target, pos};
    d.b = b;
    return d;
}

static void describe_docs(char *out, size_t size, const int *lens, int n_docs)
{
    size_t used = 0;
    if (n_docs > 4) {   /* a batch: its size and token count */
        int tokens = 0;
        for (int i = 0; i < n_docs; i++) tokens += lens[i];
        snprintf(out, size, "%dx~%d", n_docs, (tokens + n_docs / 2) / n_docs);
        return;
    }
    for (int i = 0; i < n_docs && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%d", i ? "," : "", lens[i]);
}

/* FLOPs of a training step: 3 x forward, forward = 2 (params of the linear layers) per token, plus attention
   (4 T TP C forward, 8 backward, per layer and document). Norms, softmaxes and Adam not counted. */
static double step_flops(const Shape *s, const Batch *b)
{
    const double linear = 12.0 * s->C * s->C * s->n_layer + (double)s->vocab * s->C;
    double attn = 0;
    for (int d = 0; d < b->n_docs; d++) {
        const int T = b->doc_start[d + 1] - b->doc_start[d];
        attn += 12.0 * T * round_up(T, LANE_PAD) * s->C * s->n_layer;
    }
    return 6.0 * linear * b->M + attn;
}

/* Which x86 instances the harness checks: all by default. -DDEV_AVX512=0 (or DEV_AVX2, DEV_SSE) leaves one
   out, and the compiler then drops its kernels, which no one else calls: the sanitizer build takes minutes
   for all of them. */
#ifndef DEV_AVX512
#define DEV_AVX512 1
#endif
#ifndef DEV_AVX2
#define DEV_AVX2 1
#endif
#ifndef DEV_SSE
#define DEV_SSE 1
#endif

/* ---- the instances: each is checked by check_instance.h, written once against `real` ----
   DEV_TARGET repeats the instance's TARGET from ../simd.h (simd_end.h forgets it), for the harness's own
   vexp loop; the generic instances come first, since every other one calls their functions. */

#define real double
#define EXP_MAX_DEV 708.0   /* EXP_MAX of ../simd.h: vexp's clamp */
#define REF_SUFFIX f64_generic
#define DEV_TARGET
#define SUFFIX f64_generic
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#ifdef HAVE_X86_DISPATCH
#if DEV_AVX512
#define DEV_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define SUFFIX f64_avx512
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#if DEV_AVX2
#define DEV_TARGET __attribute__((target("avx2,fma")))
#define SUFFIX f64_avx2
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#if DEV_SSE
#define DEV_TARGET __attribute__((target("sse4.1,fma,prefer-vector-width=128")))
#define SUFFIX f64_sse
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#endif
#ifdef HAVE_NEON
#define DEV_TARGET
#define SUFFIX f64_neon
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#undef REF_SUFFIX
#undef EXP_MAX_DEV
#undef real

#define real float
#define EXP_MAX_DEV 87.0
#define DEV_F32
#define REF_SUFFIX f32_generic
#define DEV_TARGET
#define SUFFIX f32_generic
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#ifdef HAVE_X86_DISPATCH
#if DEV_AVX512
#define DEV_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define SUFFIX f32_avx512
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#if DEV_AVX2
#define DEV_TARGET __attribute__((target("avx2,fma")))
#define SUFFIX f32_avx2
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#if DEV_SSE
#define DEV_TARGET __attribute__((target("sse4.1,fma,prefer-vector-width=128")))
#define SUFFIX f32_sse
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#endif
#ifdef HAVE_NEON
#define DEV_TARGET
#define SUFFIX f32_neon
#include "check_instance.h"
#undef SUFFIX
#undef DEV_TARGET
#endif
#undef REF_SUFFIX
#undef DEV_F32
#undef EXP_MAX_DEV
#undef real

typedef struct { const char *isa; void (*f64)(const Inst *), (*f32)(const Inst *); } DevIsa;
static const DevIsa DEV_ISAS[] = {
#if defined(HAVE_X86_DISPATCH) && DEV_AVX512
    {"avx512", check_all_f64_avx512, check_all_f32_avx512},
#endif
#if defined(HAVE_X86_DISPATCH) && DEV_AVX2
    {"avx2", check_all_f64_avx2, check_all_f32_avx2},
#endif
#if defined(HAVE_X86_DISPATCH) && DEV_SSE
    {"sse", check_all_f64_sse, check_all_f32_sse},
#endif
#ifdef HAVE_NEON
    {"neon", check_all_f64_neon, check_all_f32_neon},
#endif
    {"generic", check_all_f64_generic, check_all_f32_generic},
};
#define N_DEV_ISAS ((int)(sizeof DEV_ISAS / sizeof DEV_ISAS[0]))
#ifdef HAVE_X86_DISPATCH
#define DEV_LEFT_OUT (3 - DEV_AVX512 - DEV_AVX2 - DEV_SSE)
#else
#define DEV_LEFT_OUT 0
#endif
_Static_assert(N_DEV_ISAS + DEV_LEFT_OUT == N_ISAS,
               "../instances.h has an instance this harness does not check: add it to check_kernels.c");

static void usage(FILE *f)
{
    fprintf(f, "usage: check_kernels [--check-only] [--quick] [--isa NAME] [--kernel SUBSTRING] [--threads N] [--min-time S] "
               "[--seed N]\n  ISAs of this build:");
    for (int i = 0; i < N_DEV_ISAS; i++) fprintf(f, " %s", DEV_ISAS[i].isa);
    fprintf(f, "\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--check-only")) opt.check_only = 1;
        else if (!strcmp(a, "--quick")) opt.quick = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (val && !strcmp(a, "--isa")) { opt.isa = val; i++; }
        else if (val && !strcmp(a, "--kernel")) { opt.kernel = val; i++; }
        else if (val && !strcmp(a, "--threads")) {
            opt.threads = (int)strtol(val, &end, 10); i++;
            if (*end || opt.threads < 1 || opt.threads > MAX_THREADS) { usage(stderr); return 2; }
        } else if (val && !strcmp(a, "--min-time")) {
            opt.min_time = strtod(val, &end); i++;
            if (*end || !(opt.min_time > 0)) { usage(stderr); return 2; }
        } else if (val && !strcmp(a, "--seed")) {
            errno = 0;
            opt.seed = strtoull(val, &end, 10); i++;
            if (*end || errno) { usage(stderr); return 2; }
        } else {
            fprintf(stderr, "check_kernels: unknown argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    int found = !opt.isa;
    for (int i = 0; i < N_DEV_ISAS; i++) found |= opt.isa && !strcmp(opt.isa, DEV_ISAS[i].isa);
    if (!found) {
        fprintf(stderr, "check_kernels: this build has no ISA %s\n", opt.isa);
        usage(stderr);
        return 2;
    }
    printf("fastops kernel harness: each instance against the generic one (reference.h), %s; seed %llu\n",
           opt.check_only ? "checks only" : "then timed on one thread", (unsigned long long)opt.seed);
    printf("error = max |x - ref| / max(|ref|, rms(ref)); rates: GFLOP/s for products, GB/s of minimal traffic "
           "for streaming kernels\n");
    printf("%-7s %-4s %-13s %-34s %9s %7s %-4s %13s %s\n", "isa", "type", "kernel", "shape", "max_err", "tol",
           "ok", "time", "rate");
    for (int i = 0; i < N_DEV_ISAS; i++) {
        const char *name = DEV_ISAS[i].isa;
        if (opt.isa && strcmp(opt.isa, name)) continue;
        if (!cpu_supports(name)) { printf("%-7s skipped: this CPU lacks it\n", name); continue; }
        const int ref = !strcmp(name, "generic");
        const Inst f64 = {name, "f64", ref, TOL_F64, TOL_STEP_F64, TOL_LIBM_F64};
        const Inst f32 = {name, "f32", ref, TOL_F32, TOL_STEP_F32, TOL_LIBM_F32};
        DEV_ISAS[i].f64(&f64);
        DEV_ISAS[i].f32(&f32);
    }
    printf("%d checks, %d failed\n", n_checks, n_failures);
    return n_failures ? 1 : 0;
}

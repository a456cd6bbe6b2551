/* _ceilings: micro-kernels that measure this machine's peak FLOP/s and memory bandwidth.
 *
 * Every probe runs on `threads` threads of the C engine's pool (fastops/pool.h; the calling thread is
 * thread 0) pinned one per allowed CPU, does one untimed warm-up repetition (page faults, cache fill,
 * clock ramp-up), then `repeats` timed repetitions separated by a barrier, and reports the best one
 * (as STREAM and the Empirical Roofline Toolkit do): noise from other processes only ever makes a run
 * slower, so the fastest run is the closest to the ceiling.
 * A repetition's time is from the first thread's start to the last thread's finish.
 *
 * The kernels are written once against the C engine's vector layer, fastops/simd.h (VREAL vectors of
 * VW `real`s, VLOAD, VSTORE, VFMA, VADD, VSET1, VZERO, and TARGET, the function attribute that lets the
 * compiler use the instruction set), and compiled once per instruction set and scalar type by
 * including this file's first part again (CEILINGS_INSTANCE), as fastops.c does with
 * fastops/instance.h: AVX-512, AVX2+FMA and 128-bit SSE+FMA on x86-64, NEON on AArch64. The variant
 * is chosen at run time with __builtin_cpu_supports, so the module builds with the project's plain -O3
 * flags and still runs on a CPU without AVX-512 (asking for a missing ISA is a ValueError, not a
 * SIGILL); "scalar" is plain C with one FMA per instruction, and measures memory where no vector
 * instruction set was built.
 *
 * Checked against likwid-bench (tests/test_ceilings_vs_likwid.py): the triad follows likwid's
 * stream_*_fma kernels (4 vectors per step, all passes inside one call, nothing between passes but a
 * compiler barrier), and the arrays of a working set lie next to each other, as small heap arrays do,
 * instead of at the same offsets of three separate huge mappings.
 */
#ifdef CEILINGS_INSTANCE
/* ---------------------------------------------------------------------------------------------
 * One instance: the probe kernels of one scalar type (FASTOPS_F32 or float64) on one instruction
 * set (FASTOPS_ISA_*), with SUFFIX naming it: FN(triad) becomes triad_f64_avx2.
 * ------------------------------------------------------------------------------------------- */
#define FN_JOIN(name, suffix) name##_##suffix
#define FN_EXPAND(name, suffix) FN_JOIN(name, suffix)
#define FN(name) FN_EXPAND(name, SUFFIX)
#include "../fastops/simd.h"

/* Peak FLOP/s: NACC independent FMA chains per thread. One FMA has a latency of ~4 cycles and a
 * core issues 2 per cycle (4 on Apple's cores), so at least 8 (16) chains must be in flight; 12 of
 * 16 registers (AVX2, SSE) or 24 of 32 (AVX-512, NEON) leave margin without spilling. acc = acc * mul
 * + add with mul just below 1 converges to add / (1 - mul), so values stay normal (no denormal slow
 * path). The chains must be fully unrolled so the accumulators live in registers: left as an array,
 * gcc keeps them in memory and the probe measures load/store ports instead of the FMA units. */
#if defined(FASTOPS_ISA_AVX512) || defined(FASTOPS_ISA_NEON)
#define NACC 24
#else
#define NACC 12
#endif

static TARGET double FN(fma_peak)(long iters, double mul, double add)
{
    VREAL m = VSET1((real)mul), a = VSET1((real)add), acc[NACC];
    _Pragma("GCC unroll 32") for (int k = 0; k < NACC; k++) acc[k] = VSET1((real)(1.0 + 0.01 * k));
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 32") for (int k = 0; k < NACC; k++) acc[k] = VFMA(acc[k], m, a);
    _Pragma("GCC unroll 32") for (int k = 1; k < NACC; k++) acc[0] = VADD(acc[0], acc[k]);
    real out[VW];
    VSTORE(out, acc[0]);
    return (double)out[0];
}

#ifndef FASTOPS_F32
/* Memory kernels, float64. n is a multiple of STEP (16 vectors of the widest ISA); `passes` sweeps
 * run back to back in one call, so a tiny (L1) working set is not timed together with a call, a
 * dispatch and a horizontal sum per pass; the compiler barrier between passes keeps the compiler
 * from proving a pass redundant and skipping it. */

/* Triad a[i] = b[i] + s * c[i]: 4 vectors per step, as likwid-bench's stream_*_fma kernels. */
static TARGET double FN(triad)(real *restrict a, const real *restrict b, const real *restrict c, size_t n,
                               long passes, double s)
{
    VREAL vs = VSET1((real)s);
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i += 4 * VW) {
            VSTORE(a + i, VFMA(vs, VLOAD(c + i), VLOAD(b + i)));
            VSTORE(a + i + VW, VFMA(vs, VLOAD(c + i + VW), VLOAD(b + i + VW)));
            VSTORE(a + i + 2 * VW, VFMA(vs, VLOAD(c + i + 2 * VW), VLOAD(b + i + 2 * VW)));
            VSTORE(a + i + 3 * VW, VFMA(vs, VLOAD(c + i + 3 * VW), VLOAD(b + i + 3 * VW)));
        }
        COMPILER_BARRIER();
    }
    return (double)a[n / 2];
}

/* Read: every element of a loaded once and consumed, two loaded vectors per instruction (acc += x * y,
 * 8 accumulators): with one add per loaded vector the vector ALUs, which execute only 2 of them per
 * cycle on most cores (512-bit ones on ports 0 and 5 of Intel's), would limit the loads instead of
 * the L1, ~25% below likwid-bench's load kernel, which discards what it loads. */
/* The sum of 8 vector accumulators' lanes: what a memory probe returns, so its loads cannot be dropped. */
static inline TARGET double FN(sum_of)(VREAL acc[8])
{
    _Pragma("GCC unroll 8") for (int k = 1; k < 8; k++) acc[0] = VADD(acc[0], acc[k]);
    real out[VW], sum = 0;
    VSTORE(out, acc[0]);
    for (int k = 0; k < VW; k++) sum += out[k];
    return (double)sum;
}

static TARGET double FN(read)(const real *restrict a, size_t n, long passes)
{
    VREAL acc[8];
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] = VZERO();
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i += 16 * VW)
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                acc[k] = VFMA(VLOAD(a + i + 2 * k * VW), VLOAD(a + i + (2 * k + 1) * VW), acc[k]);
        COMPILER_BARRIER();
    }
    return FN(sum_of)(acc);
}

/* Known-intensity kernel for checking the roofline itself: reads a[i] and applies `fmas` dependent
 * FMAs to it (8 vectors in flight), so it does 2 * fmas + 1 FLOPs per 8 bytes read. */
static TARGET double FN(intensity)(const real *restrict a, size_t n, long passes, long fmas)
{
    VREAL m = VSET1((real)0.999999), add = VSET1((real)1e-6), acc[8];
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] = VZERO();
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i += 8 * VW) {
            VREAL y[8];
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) y[k] = VLOAD(a + i + k * VW);
            for (long f = 0; f < fmas; f++)
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) y[k] = VFMA(y[k], m, add);
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] = VADD(acc[k], y[k]);
        }
        COMPILER_BARRIER();
    }
    return FN(sum_of)(acc);
}

static const probe_kernels FN(kernels) = {FN(fma_peak), VW, NACC, FN(triad), FN(read), FN(intensity)};
#else
static const probe_kernels FN(kernels) = {FN(fma_peak), VW, NACC, NULL, NULL, NULL};
#endif

#undef NACC
#include "../fastops/simd_end.h"
#undef FN_JOIN
#undef FN_EXPAND
#undef FN

#else /* !CEILINGS_INSTANCE: the module */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../fastops/pool.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define X86 1
#include <immintrin.h>
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
#define ARM64 1
#include <arm_neon.h>
#endif

#define MAX_THREADS 256
#define MAX_REPEATS 1000
#define COMPILER_BARRIER() __asm__ volatile("" ::: "memory")
#define STEP 128 /* the memory kernels' n is a multiple of this: 16 vectors of 8 float64 */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef double (*fma_fn)(long iters, double mul, double add);
typedef double (*triad_fn)(double *restrict a, const double *restrict b, const double *restrict c, size_t n,
                           long passes, double s);
typedef double (*read_fn)(const double *restrict a, size_t n, long passes);
typedef double (*intensity_fn)(const double *restrict a, size_t n, long passes, long fmas);

/* One instance's probes: FMA chains of `lanes` lanes (nacc of them), and for float64 the memory kernels. */
typedef struct {
    fma_fn fma;
    int lanes, nacc;
    triad_fn triad;
    read_fn read;
    intensity_fn intensity;
} probe_kernels;

/* ---------------------------------------------------------------------------------------------
 * The instances, each the first part of this file compiled for one scalar type and instruction set.
 * ------------------------------------------------------------------------------------------- */
#define CEILINGS_INSTANCE
#define INSTANCE_FILE "../microgpt/ceilings.c"   /* relative to fastops/, where each_instance.h includes it */
#include "../fastops/each_instance.h"
#undef INSTANCE_FILE
#undef CEILINGS_INSTANCE

/* ---------------------------------------------------------------------------------------------
 * Scalar: one lane per FMA instruction (vfmadd231sd, fmadd d), the ceiling for code the compiler
 * did not vectorise. The compiler must not pack the 12 chains into vectors: gcc is told not to
 * vectorise the function, clang that each chain lives in an FP register of its own (an empty asm).
 * The memory kernels in plain C stand in where no vector instruction set was built.
 * ------------------------------------------------------------------------------------------- */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#define ONE_REGISTER(x, reg) ((void)0) /* an asm operand would keep gcc's array in memory */
#else
#define NO_VECTORIZE
#define ONE_REGISTER(x, reg) __asm__("" : reg(x))
#endif
#if defined(X86)
#define SCALAR_TARGET __attribute__((target("fma"))) NO_VECTORIZE
#define FP_REG "+x"
#elif defined(ARM64)
#define SCALAR_TARGET NO_VECTORIZE
#define FP_REG "+w"
#endif

#ifdef FP_REG
#define SCALAR_FMA(name, type, fmafn)                                                             \
    SCALAR_TARGET static double name(long iters, double mul, double add)                          \
    {                                                                                             \
        type m = (type)mul, a = (type)add, acc[12];                                               \
        _Pragma("GCC unroll 12") for (int k = 0; k < 12; k++) acc[k] = (type)(1.0 + 0.01 * k);    \
        for (long i = 0; i < iters; i++)                                                          \
            _Pragma("GCC unroll 12") for (int k = 0; k < 12; k++) {                               \
                acc[k] = fmafn(acc[k], m, a);                                                     \
                ONE_REGISTER(acc[k], FP_REG);                                                     \
            }                                                                                     \
        for (int k = 1; k < 12; k++) acc[0] += acc[k];                                            \
        return (double)acc[0];                                                                    \
    }
SCALAR_FMA(fma_scalar_f64, double, __builtin_fma)
SCALAR_FMA(fma_scalar_f32, float, __builtin_fmaf)
#endif

static double triad_plain(double *restrict a, const double *restrict b, const double *restrict c, size_t n,
                          long passes, double s)
{
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        COMPILER_BARRIER();
    }
    return a[n / 2];
}

static double read_plain(const double *restrict a, size_t n, long passes)
{
    double acc[8] = {0};
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i += 16)
            for (int k = 0; k < 8; k++) acc[k] += a[i + 2 * k] * a[i + 2 * k + 1];
        COMPILER_BARRIER();
    }
    return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

#ifdef FP_REG
static const probe_kernels kernels_f64_scalar = {fma_scalar_f64, 1, 12, triad_plain, read_plain, NULL};
static const probe_kernels kernels_f32_scalar = {fma_scalar_f32, 1, 12, NULL, NULL, NULL};
#else
static const probe_kernels kernels_f64_scalar = {NULL, 1, 12, triad_plain, read_plain, NULL};
static const probe_kernels kernels_f32_scalar = {NULL, 1, 12, NULL, NULL, NULL};
#endif

/* __builtin_cpu_supports needs a string literal, hence one tiny function per ISA; the checks match
 * fastops' (simd.h's AVX-512 TARGET also lets the compiler use AVX-512VL, AVX2 and FMA). */
#ifdef X86
static int has_scalar_fma(void) { return __builtin_cpu_supports("fma"); }
static int has_sse(void) { return __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("fma"); }
static int has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int has_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && has_avx2();
}
#elif defined(ARM64)
static int has_scalar_fma(void) { return 1; }
static int has_neon(void) { return 1; }
#else
static int has_scalar_fma(void) { return 0; }
#endif
static int not_built(void) { return 0; }

typedef struct {
    const char *name;
    int (*supported)(void);
    const probe_kernels *f64, *f32;
} isa_entry;

/* Widest first: the memory probes use the first supported vector ISA. Every name is listed on every
 * machine, so asking for one this build or CPU lacks is "not supported", not "unknown". */
static const isa_entry ISAS[] = {
#ifdef X86
    {"avx512", has_avx512, &kernels_f64_avx512, &kernels_f32_avx512},
    {"avx2", has_avx2, &kernels_f64_avx2, &kernels_f32_avx2},
    {"sse", has_sse, &kernels_f64_sse, &kernels_f32_sse},
    {"neon", not_built, NULL, NULL},
#elif defined(ARM64)
    {"avx512", not_built, NULL, NULL},
    {"avx2", not_built, NULL, NULL},
    {"neon", has_neon, &kernels_f64_neon, &kernels_f32_neon},
    {"sse", not_built, NULL, NULL},
#else
    {"avx512", not_built, NULL, NULL},
    {"avx2", not_built, NULL, NULL},
    {"sse", not_built, NULL, NULL},
    {"neon", not_built, NULL, NULL},
#endif
    {"scalar", has_scalar_fma, &kernels_f64_scalar, &kernels_f32_scalar},
};
#define NUM_ISAS (sizeof(ISAS) / sizeof(ISAS[0]))
#define ISA_NAMES "avx512, avx2, sse, neon, scalar"

static const isa_entry *find_isa(const char *name)
{
    for (size_t i = 0; i < NUM_ISAS; i++)
        if (strcmp(ISAS[i].name, name) == 0) return &ISAS[i];
    return NULL;
}

/* The ISA whose kernels measure memory: the widest supported one, or plain C ("scalar", which needs
 * no FMA for this). */
static const isa_entry *memory_isa(void)
{
    for (size_t i = 0; i + 1 < NUM_ISAS; i++)
        if (ISAS[i].supported()) return &ISAS[i];
    return &ISAS[NUM_ISAS - 1];
}

/* Parses the optional isa argument of the memory probes; NULL with an error set if unusable. */
static const isa_entry *memory_isa_arg(const char *name)
{
    if (!name) return memory_isa();
    const isa_entry *e = find_isa(name);
    if (!e) return PyErr_Format(PyExc_ValueError, "isa must be one of " ISA_NAMES " (got '%s')", name), NULL;
    if (e != &ISAS[NUM_ISAS - 1] && !e->supported())
        return PyErr_Format(PyExc_ValueError, "this CPU or build does not support %s", name), NULL;
    return e;
}

/* ---------------------------------------------------------------------------------------------
 * Where the arrays lie. Every thread owns one region of the buffer (first-touched by that thread,
 * so its pages sit on its NUMA node) and puts the arrays of a working set next to each other at its
 * start, as a program's small heap arrays are: a at the region's start (4 KiB aligned), b at the
 * first address past a's end that is SKEW bytes past a 4 KiB boundary, c likewise 2 SKEW past one.
 * Arrays at the same offset of separate huge mappings (as a single allocation per array gives) sit
 * in the same L1 sets at distances that the core's predictors (memory disambiguation by the low 12
 * address bits, AMD's L1 way predictor by a hash of the linear address) may confuse; the skew puts
 * the 4 KiB alias of the newest loads of b and c 3.5 and 3 KiB behind the stores to a, further back
 * than a store queue reaches (64 entries of 32 bytes on Zen 3/4), and keeps every vector aligned.
 * ------------------------------------------------------------------------------------------- */
#define PAGE 4096
#define SKEW 512

/* Smallest offset >= after that is skew bytes past a PAGE boundary. */
static size_t place(size_t after, size_t skew) { return (after + PAGE - 1 - skew) / PAGE * PAGE + skew; }

/* Byte offsets of b and c from a for n elements per array; returns the bytes the arrays span. */
static size_t layout(size_t n, int arrays, size_t *off_b, size_t *off_c)
{
    size_t bytes = n * sizeof(double);
    *off_b = arrays > 1 ? place(bytes, SKEW) : 0;
    *off_c = arrays > 2 ? place(*off_b + bytes, 2 * SKEW) : 0;
    return (arrays > 2 ? *off_c : *off_b) + bytes;
}

/* ---------------------------------------------------------------------------------------------
 * Thread harness: one job description shared by all threads; each thread works in its own region.
 * A job runs as one parallel_for on a pool of `threads` threads, thread i taking index i.
 * ------------------------------------------------------------------------------------------- */

enum job_kind { JOB_FMA, JOB_TRIAD, JOB_READ, JOB_INTENSITY };

typedef struct {
    enum job_kind kind;
    int threads, repeats;
    /* The pool's threads are pinned one per allowed CPU when there are enough CPUs (pinned), and meet
     * at a barrier before every repetition. Pinned threads spin there, so they start a repetition
     * within ~0.1 us of each other instead of one wake-up apart (tens of us, as long as a whole L1
     * repetition); oversubscribed ones sleep. */
    Pool pool;
    int pinned;
    PoolBarrier barrier;
    /* FMA */
    fma_fn fma;
    long iters;
    /* memory: each thread's region of `region` bytes holds its arrays of n_per_thread elements each */
    const probe_kernels *k;
    char *buf;
    size_t region, n_per_thread, off_b, off_c;
    int first_touch;
    long passes, fmas;
    /* results: start/end of every repetition (index 0 = warm-up) for every thread */
    double *t_start, *t_end;
    double sink[MAX_THREADS];
} job;

static double run_once(job *j, int id, long rep)
{
    if (j->kind == JOB_FMA) return j->fma(j->iters, 0.999999, 1e-6);
    char *base = j->buf + (size_t)id * j->region;
    double *a = (double *)base, *b = (double *)(base + j->off_b), *c = (double *)(base + j->off_c);
    size_t n = j->n_per_thread;
    switch (j->kind) {
    case JOB_TRIAD: /* a different scalar every repetition: no repetition can be proven redundant */
        return j->k->triad(a, b, c, n, j->passes, 1.0 + 1e-9 * (double)rep);
    case JOB_READ:
        return j->k->read(a, n, j->passes);
    default:
        return j->k->intensity(a, n, j->passes, j->fmas);
    }
}

/* One thread's part of a job: parallel_for over [0, threads) with grain 1 hands thread i the one index i. */
static void job_task(void *arg, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    (void)end;
    (void)thread;
    job *j = (job *)arg;
    int id = (int)begin;
    if (j->first_touch) { /* first touch of the whole region by the thread that will use it */
        double *r = (double *)(j->buf + (size_t)id * j->region);
        for (size_t i = 0; i < j->region / sizeof(double); i++) r[i] = 1.0;
    }
    for (int r = 0; r <= j->repeats; r++) { /* r = 0 is the untimed warm-up */
        pool_barrier_wait(&j->barrier);
        double t0 = now_seconds();
        j->sink[id] += run_once(j, id, r);
        double t1 = now_seconds();
        j->t_start[r * j->threads + id] = t0;
        j->t_end[r * j->threads + id] = t1;
    }
}

/* Starts the job's pool of j->threads threads and pins them one per allowed CPU if there are enough
 * (pool_pin pins the calling thread too; job_stop gives it back its affinity). Returns 0, or -1 with a
 * Python error set. */
static int job_start(job *j)
{
    if (pool_start(&j->pool, j->threads) < 0) {
        PyErr_Format(PyExc_OSError, "could only start %d of %d threads: %s", j->pool.n_threads, j->threads,
                     j->pool.error);
        pool_stop(&j->pool);
        return -1;
    }
    j->pinned = pool_pin(&j->pool) == 1;
    return 0;
}

static void job_stop(job *j) { pool_stop(&j->pool); }

/* Runs the job on its started pool; returns the best repetition's wall time in seconds, or -1 with a
 * Python error set. */
static double run_job(job *j)
{
    size_t slots = (size_t)(j->repeats + 1) * (size_t)j->threads;
    j->t_start = calloc(slots, sizeof(double));
    j->t_end = calloc(slots, sizeof(double));
    if (!j->t_start || !j->t_end) {
        free(j->t_start);
        free(j->t_end);
        PyErr_NoMemory();
        return -1.0;
    }
    pool_barrier_init(&j->barrier, j->threads, j->threads > 1 && j->pinned ? -1 : 0);
    Py_BEGIN_ALLOW_THREADS
    parallel_for(&j->pool, job_task, j, j->threads, 1);
    Py_END_ALLOW_THREADS
    pool_barrier_destroy(&j->barrier);

    double best = -1.0;
    for (int r = 1; r <= j->repeats; r++) {
        double t0 = j->t_start[r * j->threads], t1 = j->t_end[r * j->threads];
        for (int t = 1; t < j->threads; t++) {
            if (j->t_start[r * j->threads + t] < t0) t0 = j->t_start[r * j->threads + t];
            if (j->t_end[r * j->threads + t] > t1) t1 = j->t_end[r * j->threads + t];
        }
        if (best < 0 || t1 - t0 < best) best = t1 - t0;
    }
    free(j->t_start);
    free(j->t_end);
    return best > 0 ? best : 1e-9;
}

static int check_threads_repeats(int threads, int repeats)
{
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, %d] (got %d)", MAX_THREADS, threads);
        return -1;
    }
    if (repeats < 1 || repeats > MAX_REPEATS) {
        PyErr_Format(PyExc_ValueError, "repeats must be in [1, %d] (got %d)", MAX_REPEATS, repeats);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Python API
 * ------------------------------------------------------------------------------------------- */

static PyObject *py_isa_supported(PyObject *self, PyObject *args)
{
    (void)self;
    const char *isa;
    if (!PyArg_ParseTuple(args, "s", &isa)) return NULL;
    const isa_entry *e = find_isa(isa);
    if (!e) return PyErr_Format(PyExc_ValueError, "isa must be one of " ISA_NAMES " (got '%s')", isa);
    return PyBool_FromLong(e->supported());
}

static PyObject *py_memory_isa(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyUnicode_FromString(memory_isa()->name);
}

static PyObject *py_peak_flops(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"isa", "dtype", "threads", "iters", "repeats", NULL};
    const char *isa, *dtype;
    int threads = 1, repeats = 20;
    long iters = 250000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|ili", names, &isa, &dtype, &threads, &iters, &repeats))
        return NULL;
    const isa_entry *e = find_isa(isa);
    if (!e) return PyErr_Format(PyExc_ValueError, "isa must be one of " ISA_NAMES " (got '%s')", isa);
    if (!e->supported()) return PyErr_Format(PyExc_ValueError, "this CPU or build does not support %s", isa);
    int f32 = strcmp(dtype, "f32") == 0;
    if (!f32 && strcmp(dtype, "f64") != 0)
        return PyErr_Format(PyExc_ValueError, "dtype must be f64 or f32 (got '%s')", dtype);
    if (iters < 1) return PyErr_Format(PyExc_ValueError, "iters must be >= 1 (got %ld)", iters);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;

    const probe_kernels *k = f32 ? e->f32 : e->f64;
    job j = {.kind = JOB_FMA, .threads = threads, .repeats = repeats, .fma = k->fma, .iters = iters};
    if (job_start(&j) < 0) return NULL;
    double seconds = run_job(&j);
    job_stop(&j);
    if (seconds < 0) return NULL;
    double flops = 2.0 * (double)k->lanes * k->nacc * (double)iters * threads; /* an FMA is 2 FLOPs */
    return PyFloat_FromDouble(flops / seconds);
}

/* Elements per thread and array for a working set of nbytes over `arrays` arrays (the working set
 * is all arrays of all threads, as likwid-bench's -W size): a multiple of STEP (one unrolled step of
 * every kernel), at least STEP. */
static size_t slice_elems(Py_ssize_t nbytes, int arrays, int threads)
{
    size_t n = (size_t)nbytes / (sizeof(double) * (size_t)arrays) / (size_t)threads / STEP * STEP;
    return n ? n : STEP;
}

/* Parses a sequence of working-set sizes in bytes; returns a new reference to a list of ints or NULL. */
static PyObject *parse_sizes(PyObject *seq, Py_ssize_t *largest)
{
    PyObject *list = PySequence_List(seq);
    if (!list) return NULL;
    *largest = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        Py_ssize_t size = PyNumber_AsSsize_t(PyList_GET_ITEM(list, i), PyExc_OverflowError);
        if (size == -1 && PyErr_Occurred()) break;
        if (size < 1024 || size > ((Py_ssize_t)1 << 40)) {
            PyErr_Format(PyExc_ValueError, "working-set sizes must be in [1 KiB, 1 TiB] bytes (got %zd)", size);
            break;
        }
        if (size > *largest) *largest = size;
    }
    if (PyErr_Occurred() || PyList_GET_SIZE(list) == 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "sizes must not be empty");
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* Runs the memory job once per size, all sizes sharing one allocation made for the largest (page
 * faults cost as much as a DRAM pass; paying them once keeps a full sweep short). Each size moves at
 * least min_bytes per repetition: tiny working sets need many passes to be timed. Returns a list of
 * bytes/s or NULL with an error set. Bytes are program bytes, bytes_per_element per element: the
 * triad's 2 loads and 1 store (24), a read's 8. A write-allocate cache also reads a's line before
 * writing it (32 bytes move per triad element), and like STREAM and likwid-bench (its "Data volume"
 * is 24 bytes per stream-triad element too) we do not count that: the FLOP/byte model
 * (microgpt/flops.py) counts program bytes as well. */
static PyObject *sweep(job *j, PyObject *sizes_arg, int arrays, long min_bytes, double bytes_per_element)
{
    Py_ssize_t largest;
    PyObject *sizes = parse_sizes(sizes_arg, &largest);
    if (!sizes) return NULL;
    size_t off_b, off_c;
    size_t n_max = slice_elems(largest, arrays, j->threads);
    j->region = (layout(n_max, arrays, &off_b, &off_c) + PAGE - 1) / PAGE * PAGE;
    j->buf = aligned_alloc(PAGE, j->region * (size_t)j->threads);
    if (!j->buf) {
        Py_DECREF(sizes);
        return PyErr_NoMemory();
    }
    PyObject *out = PyList_New(0);
    int started = out && job_start(j) == 0;
    /* The largest size first, so its threads first-touch their own regions. */
    j->n_per_thread = n_max;
    layout(n_max, arrays, &j->off_b, &j->off_c);
    j->first_touch = 1;
    j->passes = 1;
    int saved_repeats = j->repeats;
    j->repeats = 1;
    double ok = started ? run_job(j) : -1.0;
    j->repeats = saved_repeats;
    j->first_touch = 0;
    for (Py_ssize_t i = 0; ok >= 0 && i < PyList_GET_SIZE(sizes); i++) {
        j->n_per_thread = slice_elems(PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i)), arrays, j->threads);
        layout(j->n_per_thread, arrays, &j->off_b, &j->off_c);
        double pass_bytes = bytes_per_element * (double)(j->n_per_thread * (size_t)j->threads);
        j->passes = (long)((double)min_bytes / pass_bytes) + 1;
        double seconds = run_job(j);
        PyObject *value = seconds < 0 ? NULL : PyFloat_FromDouble((double)j->passes * pass_bytes / seconds);
        if (!value || PyList_Append(out, value) < 0) ok = -1.0;
        Py_XDECREF(value);
    }
    job_stop(j);
    free(j->buf);
    Py_DECREF(sizes);
    if (ok < 0) Py_CLEAR(out);
    return out;
}

static PyObject *py_bandwidth(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"kind", "sizes", "threads", "repeats", "min_bytes", "isa", NULL};
    const char *kind, *isa = NULL;
    PyObject *sizes;
    int threads = 1, repeats = 5;
    long min_bytes = 64L << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|iilz", names, &kind, &sizes, &threads, &repeats, &min_bytes,
                                     &isa))
        return NULL;
    int triad = strcmp(kind, "triad") == 0;
    if (!triad && strcmp(kind, "read") != 0)
        return PyErr_Format(PyExc_ValueError, "kind must be triad or read (got '%s')", kind);
    if (min_bytes < 1) return PyErr_Format(PyExc_ValueError, "min_bytes must be >= 1 (got %ld)", min_bytes);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;
    const isa_entry *e = memory_isa_arg(isa);
    if (!e) return NULL;

    job j = {.kind = triad ? JOB_TRIAD : JOB_READ, .threads = threads, .repeats = repeats, .k = e->f64};
    return sweep(&j, sizes, triad ? 3 : 1, min_bytes, triad ? 24.0 : 8.0);
}

static PyObject *py_intensity_probe(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"nbytes", "fmas", "threads", "repeats", "min_bytes", "isa", NULL};
    Py_ssize_t nbytes;
    long fmas, min_bytes = 64L << 20;
    int threads = 1, repeats = 5;
    const char *isa = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nl|iilz", names, &nbytes, &fmas, &threads, &repeats, &min_bytes,
                                     &isa))
        return NULL;
    const isa_entry *e = memory_isa_arg(isa);
    if (!e) return NULL;
    if (!e->f64->intensity)
        return PyErr_Format(PyExc_ValueError, "the intensity probe needs a vector instruction set (got %s)", e->name);
    if (fmas < 0 || fmas > 100000) return PyErr_Format(PyExc_ValueError, "fmas must be in [0, 100000] (got %ld)", fmas);
    if (min_bytes < 1) return PyErr_Format(PyExc_ValueError, "min_bytes must be >= 1 (got %ld)", min_bytes);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;

    job j = {.kind = JOB_INTENSITY, .threads = threads, .repeats = repeats, .fmas = fmas, .k = e->f64};
    PyObject *size = Py_BuildValue("(n)", nbytes);
    PyObject *bw = size ? sweep(&j, size, 1, min_bytes, 8.0) : NULL;
    Py_XDECREF(size);
    if (!bw) return NULL;
    /* per 8-byte element: 2 FLOPs per FMA, plus the add into the accumulator */
    double flop_per_byte = (2.0 * (double)fmas + 1.0) / 8.0;
    double rate = PyFloat_AsDouble(PyList_GET_ITEM(bw, 0)) * flop_per_byte;
    Py_DECREF(bw);
    return Py_BuildValue("(dd)", rate, flop_per_byte);
}

/* Cycles per second from a chain of dependent integer adds: each add waits for the previous one, so
 * the chain runs at one add per core clock (x86 since the Pentium Pro, ARM64 alike). The addend is a
 * register the compiler cannot see into: Intel's cores since Golden Cove fold add-immediate chains
 * at register renaming (x += 1 measured a "22 GHz" clock on a Granite-Rapids-class Xeon), but not
 * register-register adds. The empty asm statements tell the compiler x and one may change between
 * adds, so it cannot fold them into one. */
static PyObject *py_clock_hz(PyObject *self, PyObject *args)
{
    (void)self;
    long iters = 10000000;
    if (!PyArg_ParseTuple(args, "|l", &iters)) return NULL;
    if (iters < 1000) return PyErr_Format(PyExc_ValueError, "iters must be >= 1000 (got %ld)", iters);
    double best = 0.0;
    Py_BEGIN_ALLOW_THREADS
    /* r = 0 ramps the clock up; keep the fastest of the rest. Many short runs rather than a few long
     * ones: on a shared machine some of them run without being preempted. */
    for (int r = 0; r <= 20; r++) {
        uint64_t x = 0, one = 1;
        __asm__ volatile("" : "+r"(one));
        double t0 = now_seconds();
        for (long i = 0; i < iters; i += 8)
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
                x += one;
                __asm__ volatile("" : "+r"(x));
            }
        double hz = (double)x / (now_seconds() - t0);
        if (r > 0 && hz > best) best = hz;
    }
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(best);
}

static PyMethodDef ceilings_methods[] = {
    {"isa_supported", py_isa_supported, METH_VARARGS,
     "isa_supported(isa) -> bool: can this CPU and build run the variant (" ISA_NAMES ")?"},
    {"memory_isa", py_memory_isa, METH_NOARGS,
     "memory_isa() -> the instruction set the memory probes use unless told otherwise: the widest supported."},
    {"peak_flops", (PyCFunction)(void (*)(void))py_peak_flops, METH_VARARGS | METH_KEYWORDS,
     "peak_flops(isa, dtype, threads=1, iters=250000, repeats=20) -> FLOP/s of the best repetition."},
    {"bandwidth", (PyCFunction)(void (*)(void))py_bandwidth, METH_VARARGS | METH_KEYWORDS,
     "bandwidth(kind, sizes, threads=1, repeats=5, min_bytes=64MiB, isa=None) -> [bytes/s] of the best "
     "repetition of 'triad' (24 program bytes per element) or 'read' (8) over each working set size in bytes "
     "(all arrays of all threads), with the kernels of `isa` (default: memory_isa())."},
    {"intensity_probe", (PyCFunction)(void (*)(void))py_intensity_probe, METH_VARARGS | METH_KEYWORDS,
     "intensity_probe(nbytes, fmas, threads=1, repeats=5, min_bytes=64MiB, isa=None) -> (FLOP/s, FLOP/byte) of "
     "a read kernel doing `fmas` FMAs per element."},
    {"clock_hz", py_clock_hz, METH_VARARGS, "clock_hz(iters=1e7) -> core cycles per second, best of 20 runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ceilings_module = {PyModuleDef_HEAD_INIT, "_ceilings", "Roofline ceiling probes.", -1,
                                             ceilings_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ceilings(void) { return PyModule_Create(&ceilings_module); }
#endif /* CEILINGS_INSTANCE */

/* _ceilings: micro-kernels that measure this machine's peak FLOP/s and memory bandwidth.
 *
 * Every probe runs on `threads` pthreads pinned one per allowed CPU, does one untimed warm-up
 * repetition (page faults, cache fill, clock ramp-up), then `repeats` timed repetitions separated by
 * a barrier, and reports the best one (as STREAM and the Empirical Roofline Toolkit do): noise from
 * other processes only ever makes a run slower, so the fastest run is the closest to the ceiling.
 * A repetition's time is from the first thread's start to the last thread's finish.
 *
 * ISA variants are compiled with per-function target attributes and chosen at run time with
 * __builtin_cpu_supports, so the module builds with the project's plain -O3 flags and still runs on
 * a CPU without AVX-512 (asking for a missing ISA is a ValueError, not a SIGILL). The FMA probes are
 * x86-only; elsewhere the module still builds, reports no ISA, and measures memory with plain C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define X86 1
#include <immintrin.h>
#endif
#ifdef __linux__
#include <sched.h>
#endif

#define MAX_THREADS 256
#define MAX_REPEATS 1000

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------------------------
 * Peak FLOP/s: NACC independent FMA chains per thread. One FMA has a latency of ~4 cycles and a
 * core issues up to 2 per cycle, so at least 8 chains must be in flight; 12 (16 registers: AVX2,
 * scalar) and 24 (32 registers: AVX-512) leave margin without spilling. acc = acc * mul + add with
 * mul just below 1 converges to add / (1 - mul), so values stay normal (no denormal slow path).
 * The chains must be fully unrolled so the accumulators live in registers: left as an array, gcc
 * keeps them in memory and the probe measures load/store ports instead of the FMA units.
 * ------------------------------------------------------------------------------------------- */

typedef double (*fma_fn)(long, double, double);

typedef struct {
    const char *isa;
    int (*supported)(void);
    fma_fn f64, f32;
    int f64_lanes, f32_lanes, nacc;
} isa_entry;

#ifdef X86
#define FMA_KERNEL(fname, tgt, vtype, set1, fmadd, addv, nacc)                             \
    __attribute__((target(tgt))) static double fname(long iters, double mul, double add) {  \
        vtype m = set1(mul), a = set1(add), acc[nacc];                                         \
        _Pragma("GCC unroll 32") for (int k = 0; k < nacc; k++) acc[k] = set1(1.0 + 0.01 * k); \
        for (long i = 0; i < iters; i++)                                                       \
            _Pragma("GCC unroll 32") for (int k = 0; k < nacc; k++) acc[k] = fmadd(acc[k], m, a); \
        for (int k = 1; k < nacc; k++) acc[0] = addv(acc[0], acc[k]);                          \
        double out[16] __attribute__((aligned(64)));                                           \
        memcpy(out, &acc[0], sizeof(vtype));                                                   \
        return out[0];                                                                         \
    }

/* Scalar = one lane per FMA (_mm_fmadd_sd/_ss touch only the low lane), the ceiling for code the
 * compiler did not vectorise. set1 fills every lane, harmless: only lane 0 is computed. */
FMA_KERNEL(fma_f64_scalar, "fma", __m128d, _mm_set1_pd, _mm_fmadd_sd, _mm_add_sd, 12)
FMA_KERNEL(fma_f64_avx2, "avx2,fma", __m256d, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_add_pd, 12)
FMA_KERNEL(fma_f64_avx512, "avx512f", __m512d, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd, 24)
#define SET1_PS(x) _mm_set1_ps((float)(x))
#define SET1_PS256(x) _mm256_set1_ps((float)(x))
#define SET1_PS512(x) _mm512_set1_ps((float)(x))
FMA_KERNEL(fma_f32_scalar, "fma", __m128, SET1_PS, _mm_fmadd_ss, _mm_add_ss, 12)
FMA_KERNEL(fma_f32_avx2, "avx2,fma", __m256, SET1_PS256, _mm256_fmadd_ps, _mm256_add_ps, 12)
FMA_KERNEL(fma_f32_avx512, "avx512f", __m512, SET1_PS512, _mm512_fmadd_ps, _mm512_add_ps, 24)

/* __builtin_cpu_supports needs a string literal, hence one tiny function per ISA. */
static int has_scalar_fma(void) { return __builtin_cpu_supports("fma"); }
static int has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int has_avx512(void) { return __builtin_cpu_supports("avx512f"); }

static const isa_entry ISAS[] = {
    {"scalar", has_scalar_fma, fma_f64_scalar, fma_f32_scalar, 1, 1, 12},
    {"avx2", has_avx2, fma_f64_avx2, fma_f32_avx2, 4, 8, 12},
    {"avx512", has_avx512, fma_f64_avx512, fma_f32_avx512, 8, 16, 24},
};
#define NUM_ISAS (sizeof(ISAS) / sizeof(ISAS[0]))
#else
static int has_avx2(void) { return 0; }
static int no_isa(void) { return 0; }
static const isa_entry ISAS[] = {
    {"scalar", no_isa, NULL, NULL, 1, 1, 12}, {"avx2", no_isa, NULL, NULL, 4, 8, 12}, {"avx512", no_isa, NULL, NULL, 8, 16, 24},
};
#define NUM_ISAS (sizeof(ISAS) / sizeof(ISAS[0]))
#endif

static const isa_entry *find_isa(const char *name) {
    for (size_t i = 0; i < NUM_ISAS; i++)
        if (strcmp(ISAS[i].isa, name) == 0) return &ISAS[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Memory kernels, fp64. Triad a[i] = b[i] + s * c[i] (STREAM) counts 24 bytes per element: the
 * program's two reads and one write. A write-allocate cache also reads a's line before writing it,
 * so the hardware moves 32 bytes per element; like STREAM we report program bytes, the same
 * convention as the FLOP/byte model (microgpt/flops.py), so the two are comparable.
 * Read: s += a[i] with independent accumulators, 8 bytes per element, no writes.
 * ------------------------------------------------------------------------------------------- */

#ifdef X86
__attribute__((target("avx512f"))) static double triad_avx512(double *restrict a, const double *restrict b,
                                                               const double *restrict c, size_t n, double s) {
    __m512d vs = _mm512_set1_pd(s);
    for (size_t i = 0; i < n; i += 16) {  /* n is a multiple of 16: two vectors per step */
        _mm512_storeu_pd(a + i, _mm512_fmadd_pd(vs, _mm512_loadu_pd(c + i), _mm512_loadu_pd(b + i)));
        _mm512_storeu_pd(a + i + 8, _mm512_fmadd_pd(vs, _mm512_loadu_pd(c + i + 8), _mm512_loadu_pd(b + i + 8)));
    }
    return a[n / 2];
}

__attribute__((target("avx512f"))) static double read_avx512(const double *restrict a, size_t n) {
    __m512d acc[8];  /* 2 loads/cycle x ~3-cycle add latency: 8 chains keep the loads flowing */
    for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_pd();
    for (size_t i = 0; i < n; i += 64)
        for (int k = 0; k < 8; k++) acc[k] = _mm512_add_pd(acc[k], _mm512_loadu_pd(a + i + 8 * k));
    for (int k = 1; k < 8; k++) acc[0] = _mm512_add_pd(acc[0], acc[k]);
    return _mm512_reduce_add_pd(acc[0]);
}

__attribute__((target("avx2,fma"))) static double triad_avx2(double *restrict a, const double *restrict b,
                                                              const double *restrict c, size_t n, double s) {
    __m256d vs = _mm256_set1_pd(s);
    for (size_t i = 0; i < n; i += 4)
        _mm256_storeu_pd(a + i, _mm256_fmadd_pd(vs, _mm256_loadu_pd(c + i), _mm256_loadu_pd(b + i)));
    return a[n / 2];
}

__attribute__((target("avx2"))) static double read_avx2(const double *restrict a, size_t n) {
    __m256d acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_pd();
    for (size_t i = 0; i < n; i += 32)
        for (int k = 0; k < 8; k++) acc[k] = _mm256_add_pd(acc[k], _mm256_loadu_pd(a + i + 4 * k));
    for (int k = 1; k < 8; k++) acc[0] = _mm256_add_pd(acc[0], acc[k]);
    double out[4];
    _mm256_storeu_pd(out, acc[0]);
    return out[0] + out[1] + out[2] + out[3];
}

#endif

static double triad_plain(double *restrict a, const double *restrict b, const double *restrict c, size_t n,
                          double s) {
    for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
    return a[n / 2];
}

static double read_plain(const double *restrict a, size_t n) {
    double acc[8] = {0};
    for (size_t i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k];
    return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

#ifdef X86
/* Known-intensity kernel for checking the roofline itself: reads a[i] and applies `fmas` dependent
 * FMAs to it (8 vectors in flight), so it does 2 * fmas FLOPs per 8 bytes read. */
__attribute__((target("avx512f"))) static double intensity_avx512(const double *restrict a, size_t n, long fmas) {
    __m512d m = _mm512_set1_pd(0.999999), add = _mm512_set1_pd(1e-6), acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_pd();
    for (size_t i = 0; i < n; i += 64) {
        __m512d y[8];
        for (int k = 0; k < 8; k++) y[k] = _mm512_loadu_pd(a + i + 8 * k);
        for (long j = 0; j < fmas; j++)
            for (int k = 0; k < 8; k++) y[k] = _mm512_fmadd_pd(y[k], m, add);
        for (int k = 0; k < 8; k++) acc[k] = _mm512_add_pd(acc[k], y[k]);
    }
    for (int k = 1; k < 8; k++) acc[0] = _mm512_add_pd(acc[0], acc[k]);
    return _mm512_reduce_add_pd(acc[0]);
}

__attribute__((target("avx2,fma"))) static double intensity_avx2(const double *restrict a, size_t n, long fmas) {
    __m256d m = _mm256_set1_pd(0.999999), add = _mm256_set1_pd(1e-6), acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_pd();
    for (size_t i = 0; i < n; i += 32) {
        __m256d y[8];
        for (int k = 0; k < 8; k++) y[k] = _mm256_loadu_pd(a + i + 4 * k);
        for (long j = 0; j < fmas; j++)
            for (int k = 0; k < 8; k++) y[k] = _mm256_fmadd_pd(y[k], m, add);
        for (int k = 0; k < 8; k++) acc[k] = _mm256_add_pd(acc[k], y[k]);
    }
    for (int k = 1; k < 8; k++) acc[0] = _mm256_add_pd(acc[0], acc[k]);
    double out[4];
    _mm256_storeu_pd(out, acc[0]);
    return out[0] + out[1] + out[2] + out[3];
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Thread harness: one job description shared by all threads; each thread works on its own slice.
 * ------------------------------------------------------------------------------------------- */

enum job_kind { JOB_FMA, JOB_TRIAD, JOB_READ, JOB_INTENSITY };

typedef struct {
    enum job_kind kind;
    int threads, repeats;
    /* Threads wait at the gate until all were created (gate 1) or creation failed (gate -1), then
     * meet at a barrier before every repetition (pthread_barrier_t is missing on macOS). */
    pthread_mutex_t lock;
    pthread_cond_t opened, turn;
    int gate, arrived;
    long generation;
    int cpus[MAX_THREADS];  /* CPU each thread is pinned to, -1 = not pinned */
    /* FMA */
    fma_fn fma;
    long iters;
    /* memory: per-thread slices of n_per_thread elements each (a multiple of 64) */
    double *a, *b, *c;
    size_t n_per_thread;
    int first_touch;
    long passes, fmas;
    /* results: start/end of every repetition (index 0 = warm-up) for every thread */
    double *t_start, *t_end;
    double sink[MAX_THREADS];
} job;

typedef struct {
    job *j;
    int id;
} worker_arg;

static void barrier_wait(job *j) {
    pthread_mutex_lock(&j->lock);
    long generation = j->generation;
    if (++j->arrived == j->threads) {
        j->arrived = 0;
        j->generation++;
        pthread_cond_broadcast(&j->turn);
    } else {
        while (generation == j->generation) pthread_cond_wait(&j->turn, &j->lock);
    }
    pthread_mutex_unlock(&j->lock);
}

static double run_once(job *j, int id, long rep) {
    if (j->kind == JOB_FMA) return j->fma(j->iters, 0.999999, 1e-6);
    size_t n = j->n_per_thread, off = (size_t)id * n;
    double *a = j->a + off, *b = j->b ? j->b + off : NULL, *c = j->c ? j->c + off : NULL;
    double s = 0.0;
    for (long p = 0; p < j->passes; p++) {
        /* triad: a different scalar every pass, so no pass can be proven redundant */
        double scale = 1.0 + 1e-9 * (double)(rep * j->passes + p);
#ifdef X86
        if (has_avx512()) {
            s += j->kind == JOB_TRIAD ? triad_avx512(a, b, c, n, scale)
                 : j->kind == JOB_READ ? read_avx512(a, n) : intensity_avx512(a, n, j->fmas);
            continue;
        }
        if (has_avx2()) {
            s += j->kind == JOB_TRIAD ? triad_avx2(a, b, c, n, scale)
                 : j->kind == JOB_READ ? read_avx2(a, n) : intensity_avx2(a, n, j->fmas);
            continue;
        }
#endif
        /* the intensity probe refuses to start without AVX2 */
        s += j->kind == JOB_TRIAD ? triad_plain(a, b, c, n, scale) : read_plain(a, n);
    }
    return s;
}

static void *worker(void *p) {
    worker_arg *w = (worker_arg *)p;
    job *j = w->j;
    int id = w->id;
    pthread_mutex_lock(&j->lock);
    while (j->gate == 0) pthread_cond_wait(&j->opened, &j->lock);
    int go = j->gate > 0;
    pthread_mutex_unlock(&j->lock);
    if (!go) return NULL;
#ifdef __linux__
    if (j->cpus[id] >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(j->cpus[id], &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
#endif
    if (j->first_touch) {  /* first touch by the thread that will use the slice */
        size_t n = j->n_per_thread, off = (size_t)id * n;
        for (size_t i = 0; i < n; i++) {
            j->a[off + i] = 1.0;
            if (j->b) j->b[off + i] = 2.0;
            if (j->c) j->c[off + i] = 0.5;
        }
    }
    for (int r = 0; r <= j->repeats; r++) {  /* r = 0 is the untimed warm-up */
        barrier_wait(j);
        double t0 = now_seconds();
        j->sink[id] += run_once(j, id, r);
        double t1 = now_seconds();
        j->t_start[r * j->threads + id] = t0;
        j->t_end[r * j->threads + id] = t1;
    }
    return NULL;
}

/* Runs the job; returns the best repetition's wall time in seconds, or -1 with a Python error set. */
static double run_job(job *j) {
    int ncpus = 0, cpu_ids[MAX_THREADS];
#ifdef __linux__
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
        for (int c = 0; c < CPU_SETSIZE && ncpus < MAX_THREADS; c++)
            if (CPU_ISSET(c, &allowed)) cpu_ids[ncpus++] = c;
#endif
    /* Pin only when every thread gets its own CPU; oversubscribed runs are left to the scheduler. */
    for (int t = 0; t < j->threads; t++) j->cpus[t] = j->threads <= ncpus ? cpu_ids[t] : -1;

    size_t slots = (size_t)(j->repeats + 1) * (size_t)j->threads;
    j->t_start = calloc(slots, sizeof(double));
    j->t_end = calloc(slots, sizeof(double));
    if (!j->t_start || !j->t_end) {
        free(j->t_start);
        free(j->t_end);
        PyErr_NoMemory();
        return -1.0;
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->opened, NULL);
    pthread_cond_init(&j->turn, NULL);
    j->gate = j->arrived = 0;
    j->generation = 0;
    pthread_t tids[MAX_THREADS];
    worker_arg args[MAX_THREADS];
    int started = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < j->threads; t++) {
        args[t] = (worker_arg){j, t};
        if (pthread_create(&tids[t], NULL, worker, &args[t]) != 0) break;
        started++;
    }
    pthread_mutex_lock(&j->lock);
    j->gate = started == j->threads ? 1 : -1;
    pthread_cond_broadcast(&j->opened);
    pthread_mutex_unlock(&j->lock);
    for (int t = 0; t < started; t++) pthread_join(tids[t], NULL);
    Py_END_ALLOW_THREADS
    pthread_cond_destroy(&j->turn);
    pthread_cond_destroy(&j->opened);
    pthread_mutex_destroy(&j->lock);
    if (started < j->threads) {
        free(j->t_start);
        free(j->t_end);
        PyErr_Format(PyExc_OSError, "could only start %d of %d threads", started, j->threads);
        return -1.0;
    }

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

static int check_threads_repeats(int threads, int repeats) {
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

static PyObject *py_isa_supported(PyObject *self, PyObject *args) {
    (void)self;
    const char *isa;
    if (!PyArg_ParseTuple(args, "s", &isa)) return NULL;
    const isa_entry *e = find_isa(isa);
    if (!e) return PyErr_Format(PyExc_ValueError, "isa must be one of scalar, avx2, avx512 (got '%s')", isa);
    return PyBool_FromLong(e->supported());
}

static PyObject *py_peak_flops(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *names[] = {"isa", "dtype", "threads", "iters", "repeats", NULL};
    const char *isa, *dtype;
    int threads = 1, repeats = 20;
    long iters = 250000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|ili", names, &isa, &dtype, &threads, &iters, &repeats))
        return NULL;
    const isa_entry *e = find_isa(isa);
    if (!e) return PyErr_Format(PyExc_ValueError, "isa must be one of scalar, avx2, avx512 (got '%s')", isa);
    if (!e->supported()) return PyErr_Format(PyExc_ValueError, "this CPU does not support %s", isa);
    int f32 = strcmp(dtype, "f32") == 0;
    if (!f32 && strcmp(dtype, "f64") != 0)
        return PyErr_Format(PyExc_ValueError, "dtype must be f64 or f32 (got '%s')", dtype);
    if (iters < 1) return PyErr_Format(PyExc_ValueError, "iters must be >= 1 (got %ld)", iters);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;

    job j = {.kind = JOB_FMA, .threads = threads, .repeats = repeats, .fma = f32 ? e->f32 : e->f64, .iters = iters};
    double seconds = run_job(&j);
    if (seconds < 0) return NULL;
    int lanes = f32 ? e->f32_lanes : e->f64_lanes;
    double flops = 2.0 * (double)lanes * e->nacc * (double)iters * threads;  /* an FMA is 2 FLOPs */
    return PyFloat_FromDouble(flops / seconds);
}

/* Elements per thread for a working set of nbytes over `arrays` arrays: a multiple of 64 (one
 * unrolled step of every kernel), at least 64. */
static size_t slice_elems(Py_ssize_t nbytes, int arrays, int threads) {
    size_t n = (size_t)nbytes / (8 * (size_t)arrays) / (size_t)threads / 64 * 64;
    return n ? n : 64;
}

/* Parses a sequence of working-set sizes in bytes; returns a new reference to a list of ints or NULL. */
static PyObject *parse_sizes(PyObject *seq, Py_ssize_t *largest) {
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
 * bytes/s (program bytes: bytes_per_element per element) or NULL with an error set. */
static PyObject *sweep(job *j, PyObject *sizes_arg, int arrays, long min_bytes, double bytes_per_element) {
    Py_ssize_t largest;
    PyObject *sizes = parse_sizes(sizes_arg, &largest);
    if (!sizes) return NULL;
    size_t total = slice_elems(largest, arrays, j->threads) * (size_t)j->threads;
    double *buf[3] = {NULL, NULL, NULL};
    for (int k = 0; k < arrays; k++) {
        buf[k] = aligned_alloc(64, total * sizeof(double));
        if (!buf[k]) {
            for (int q = 0; q < k; q++) free(buf[q]);
            Py_DECREF(sizes);
            return PyErr_NoMemory();
        }
    }
    j->a = buf[0];
    j->b = buf[1];
    j->c = buf[2];
    PyObject *out = PyList_New(0);
    /* The largest size first, so its threads first-touch their own slices of the whole buffer. */
    j->n_per_thread = slice_elems(largest, arrays, j->threads);
    j->first_touch = 1;
    j->passes = 1;
    int saved_repeats = j->repeats;
    j->repeats = 1;
    double ok = out ? run_job(j) : -1.0;
    j->repeats = saved_repeats;
    j->first_touch = 0;
    for (Py_ssize_t i = 0; ok >= 0 && i < PyList_GET_SIZE(sizes); i++) {
        j->n_per_thread = slice_elems(PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i)), arrays, j->threads);
        double pass_bytes = bytes_per_element * (double)(j->n_per_thread * (size_t)j->threads);
        j->passes = (long)((double)min_bytes / pass_bytes) + 1;
        double seconds = run_job(j);
        PyObject *value = seconds < 0 ? NULL : PyFloat_FromDouble((double)j->passes * pass_bytes / seconds);
        if (!value || PyList_Append(out, value) < 0) ok = -1.0;
        Py_XDECREF(value);
    }
    for (int k = 0; k < arrays; k++) free(buf[k]);
    Py_DECREF(sizes);
    if (ok < 0) Py_CLEAR(out);
    return out;
}

static PyObject *py_bandwidth(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *names[] = {"kind", "sizes", "threads", "repeats", "min_bytes", NULL};
    const char *kind;
    PyObject *sizes;
    int threads = 1, repeats = 5;
    long min_bytes = 64L << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|iil", names, &kind, &sizes, &threads, &repeats, &min_bytes))
        return NULL;
    int triad = strcmp(kind, "triad") == 0;
    if (!triad && strcmp(kind, "read") != 0)
        return PyErr_Format(PyExc_ValueError, "kind must be triad or read (got '%s')", kind);
    if (min_bytes < 1) return PyErr_Format(PyExc_ValueError, "min_bytes must be >= 1 (got %ld)", min_bytes);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;

    job j = {.kind = triad ? JOB_TRIAD : JOB_READ, .threads = threads, .repeats = repeats};
    return sweep(&j, sizes, triad ? 3 : 1, min_bytes, triad ? 24.0 : 8.0);
}

static PyObject *py_intensity_probe(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *names[] = {"nbytes", "fmas", "threads", "repeats", "min_bytes", NULL};
    Py_ssize_t nbytes;
    long fmas, min_bytes = 64L << 20;
    int threads = 1, repeats = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nl|iil", names, &nbytes, &fmas, &threads, &repeats, &min_bytes))
        return NULL;
    if (!has_avx2()) return PyErr_Format(PyExc_ValueError, "the intensity probe needs AVX2 and FMA");
    if (fmas < 0 || fmas > 100000) return PyErr_Format(PyExc_ValueError, "fmas must be in [0, 100000] (got %ld)", fmas);
    if (min_bytes < 1) return PyErr_Format(PyExc_ValueError, "min_bytes must be >= 1 (got %ld)", min_bytes);
    if (check_threads_repeats(threads, repeats) < 0) return NULL;

    job j = {.kind = JOB_INTENSITY, .threads = threads, .repeats = repeats, .fmas = fmas};
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
 * the chain runs at one add per core clock (x86 since the Pentium Pro, ARM64 alike). The empty asm
 * statements tell the compiler x may change between adds, so it cannot fold them into one. */
static PyObject *py_clock_hz(PyObject *self, PyObject *args) {
    (void)self;
    long iters = 10000000;
    if (!PyArg_ParseTuple(args, "|l", &iters)) return NULL;
    if (iters < 1000) return PyErr_Format(PyExc_ValueError, "iters must be >= 1000 (got %ld)", iters);
    double best = 0.0;
    Py_BEGIN_ALLOW_THREADS
    /* r = 0 ramps the clock up; keep the fastest of the rest. Many short runs rather than a few long
     * ones: on a shared machine some of them run without being preempted. */
    for (int r = 0; r <= 20; r++) {
        uint64_t x = 0;
        double t0 = now_seconds();
        for (long i = 0; i < iters; i += 8)
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
                x += 1;
                __asm__ volatile("" : "+r"(x));
            }
        double hz = (double)x / (now_seconds() - t0);
        if (r > 0 && hz > best) best = hz;
    }
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(best);
}

static PyMethodDef ceilings_methods[] = {
    {"isa_supported", py_isa_supported, METH_VARARGS, "isa_supported(isa) -> bool: can this CPU run the variant?"},
    {"peak_flops", (PyCFunction)(void (*)(void))py_peak_flops, METH_VARARGS | METH_KEYWORDS,
     "peak_flops(isa, dtype, threads=1, iters=250000, repeats=20) -> FLOP/s of the best repetition."},
    {"bandwidth", (PyCFunction)(void (*)(void))py_bandwidth, METH_VARARGS | METH_KEYWORDS,
     "bandwidth(kind, sizes, threads=1, repeats=5, min_bytes=64MiB) -> [bytes/s] (program bytes) of the best "
     "repetition of 'triad' or 'read' over each working set size in bytes."},
    {"intensity_probe", (PyCFunction)(void (*)(void))py_intensity_probe, METH_VARARGS | METH_KEYWORDS,
     "intensity_probe(nbytes, fmas, threads=1, repeats=5, min_bytes=64MiB) -> (FLOP/s, FLOP/byte) of a read "
     "kernel doing `fmas` FMAs per element."},
    {"clock_hz", py_clock_hz, METH_VARARGS, "clock_hz(iters=1e7) -> core cycles per second, best of 20 runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ceilings_module = {PyModuleDef_HEAD_INIT, "_ceilings", "Roofline ceiling probes.", -1,
                                             ceilings_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ceilings(void) { return PyModule_Create(&ceilings_module); }

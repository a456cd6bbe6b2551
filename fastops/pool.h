/* fastops/pool.h: one small thread pool for the C engine and the roofline probes (microgpt/ceilings.c).
   parallel_for(pool, fn, arg, n, grain) runs fn over [0, n) split into one contiguous chunk per thread
   (whole multiples of grain) and returns when every chunk is done; the calling thread is thread 0.
   For the probes, which time their threads against each other: pool_pin (thread i on the i-th CPU the
   caller may use; Linux only, a no-op elsewhere) and PoolBarrier (threads meeting again and again).
   Needs nothing but pthreads (and builds without them, one thread only). */
#ifndef FASTOPS_POOL_H
#define FASTOPS_POOL_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#define HAVE_PTHREADS 1
#include <pthread.h>
#ifdef __linux__
#include <sched.h>
/* glibc and musl declare CPU_SET and pthread_setaffinity_np only under _GNU_SOURCE (Python.h defines it);
   without it, and off Linux (macOS has no such call), pool_pin pins nothing. */
#ifdef CPU_SET
#define POOL_HAVE_AFFINITY 1
#endif
#endif
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

typedef void (*TaskFn)(void *arg, ptrdiff_t begin, ptrdiff_t end, int thread);

typedef struct {
    int n_threads;
    const char *error;      /* why pool_start failed */
#ifdef HAVE_PTHREADS
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned long generation;
    int pending, shutdown, started;
    TaskFn fn;
    void *arg;
    ptrdiff_t n, grain;
    void *pinned_from;      /* pool_pin: the caller's affinity before it (a cpu_set_t), NULL when not pinned */
#endif
} Pool;

/* Thread i's share of [0, n): whole multiples of `grain`, so vector-aligned work stays aligned. */
static inline void chunk_of(ptrdiff_t n, ptrdiff_t grain, int i, int n_threads, ptrdiff_t *begin, ptrdiff_t *end)
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

typedef struct { Pool *pool; int index; } WorkerArg;

static inline void *pool_worker(void *p)
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

/* Starts n_threads - 1 workers (the caller is thread 0). Returns 0, or -1 with a reason in pool->error
   (the pool then runs on the threads it did start). */
static inline int pool_start(Pool *pool, int n_threads)
{
    memset(pool, 0, sizeof *pool);
    pool->n_threads = 1;
    if (n_threads == 1) return 0;
#ifdef HAVE_PTHREADS
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) { pool->error = "out of memory for the thread pool"; return -1; }
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->started = 1;
    /* Kernels keep cache-sized copies on the stack (gemm's packed tiles, up to 128 KiB): a stated size,
       not the platform's default, which is 128 KiB on musl and 512 KiB on macOS. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)4 << 20);
    for (int i = 1; i < n_threads; i++) {
        WorkerArg *arg = malloc(sizeof *arg);
        if (!arg || (arg->pool = pool, arg->index = i, pthread_create(&pool->threads[i], &attr, pool_worker, arg))) {
            pthread_attr_destroy(&attr);
            free(arg);
            pool->error = "cannot start a thread (pthread_create failed)";
            return -1;
        }
        pool->n_threads = i + 1;
    }
    pthread_attr_destroy(&attr);
    return 0;
#else
    pool->error = "threads > 1 needs pthreads, which this platform's build lacks";
    return -1;
#endif
}

/* Pins thread i of the pool (the caller is thread 0) to the i-th CPU the caller may run on, one CPU each,
   for work that times its threads against each other (the roofline's probes); the engine leaves its
   threads to the scheduler. Returns 1 when every thread is pinned; 0 when it pinned nothing: more threads
   than CPUs (they are left to the scheduler), or no pthread_setaffinity_np (macOS, non-GNU builds), or a
   pin was refused. pool_unpin, or pool_stop, gives every thread back the caller's earlier affinity; call
   them from the thread that called pool_pin. */
static inline void pool_unpin(Pool *pool);

static inline int pool_pin(Pool *pool)
{
#ifdef POOL_HAVE_AFFINITY
    pool_unpin(pool); /* pinned already: start again from the affinity the caller had then */
    cpu_set_t *allowed = malloc(sizeof *allowed);
    if (!allowed || pthread_getaffinity_np(pthread_self(), sizeof *allowed, allowed) != 0 ||
        CPU_COUNT(allowed) < pool->n_threads) {
        free(allowed);
        return 0;
    }
    pool->pinned_from = allowed;
    int ok = 1;
    for (int cpu = 0, i = 0; cpu < CPU_SETSIZE && i < pool->n_threads; cpu++) {
        if (!CPU_ISSET(cpu, allowed)) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (pthread_setaffinity_np(i == 0 ? pthread_self() : pool->threads[i], sizeof one, &one) != 0) ok = 0;
        i++;
    }
    return ok;
#else
    (void)pool;
    return 0;
#endif
}

static inline void pool_unpin(Pool *pool)
{
#ifdef POOL_HAVE_AFFINITY
    if (!pool->pinned_from) return;
    for (int i = 0; i < pool->n_threads; i++)
        pthread_setaffinity_np(i == 0 ? pthread_self() : pool->threads[i], sizeof(cpu_set_t), pool->pinned_from);
    free(pool->pinned_from);
    pool->pinned_from = NULL;
#else
    (void)pool;
#endif
}

static inline void pool_stop(Pool *pool)
{
    pool_unpin(pool);
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
static inline void parallel_for(Pool *pool, TaskFn fn, void *arg, ptrdiff_t n, ptrdiff_t grain)
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
#else
    (void)pool;
    (void)grain;
#endif
    fn(arg, 0, n, 0);
}

/* A barrier for n threads that meet again and again, e.g. inside one parallel_for before every timed
   repetition (pthread_barrier_t is missing on macOS). The last to arrive opens it by counting up the
   generation; the others spin `spins` rounds of CPU_RELAX watching for that, then sleep. spins < 0 spins
   for good: threads pinned to CPUs of their own then leave within ~0.1 us of each other instead of one
   wake-up apart (tens of us); spins = 0 sleeps at once, as threads that share CPUs should. */
typedef struct {
    int n, arrived;
    long spins;
    unsigned long generation;
#ifdef HAVE_PTHREADS
    pthread_mutex_t mu;
    pthread_cond_t opened;
#endif
} PoolBarrier;

static inline void pool_barrier_init(PoolBarrier *b, int n, long spins)
{
    b->n = n;
    b->arrived = 0;
    b->spins = spins;
    b->generation = 0;
#ifdef HAVE_PTHREADS
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->opened, NULL);
#endif
}

static inline void pool_barrier_destroy(PoolBarrier *b)
{
#ifdef HAVE_PTHREADS
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->opened);
#else
    (void)b;
#endif
}

static inline void pool_barrier_wait(PoolBarrier *b)
{
    if (b->n <= 1) return;
    unsigned long generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED); /* seen by whoever saw the new generation */
#ifdef HAVE_PTHREADS
        if (b->spins >= 0) { /* someone may sleep: open under the mutex, so no wake-up is lost */
            pthread_mutex_lock(&b->mu);
            __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&b->opened);
            pthread_mutex_unlock(&b->mu);
            return;
        }
#endif
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long i = 0; b->spins < 0 || i < b->spins; i++) {
        if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != generation) return;
        CPU_RELAX();
    }
#ifdef HAVE_PTHREADS
    pthread_mutex_lock(&b->mu);
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation) pthread_cond_wait(&b->opened, &b->mu);
    pthread_mutex_unlock(&b->mu);
#else
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation) CPU_RELAX();
#endif
}

#endif

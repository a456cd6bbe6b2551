/* fastops/pool.h: one small thread pool for the C engine and the roofline probes (microgpt/ceilings.c).
   parallel_for(pool, fn, arg, n, grain) runs fn over [0, n) split into one contiguous chunk per thread
   (whole multiples of grain) and returns when every chunk is done; the calling thread is thread 0.
   Needs nothing but pthreads (and builds without them, one thread only). */
#ifndef FASTOPS_POOL_H
#define FASTOPS_POOL_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#define HAVE_PTHREADS 1
#include <pthread.h>
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
#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

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
    for (int i = 1; i < n_threads; i++) {
        WorkerArg *arg = malloc(sizeof *arg);
        if (!arg || (arg->pool = pool, arg->index = i, pthread_create(&pool->threads[i], NULL, pool_worker, arg))) {
            free(arg);
            pool->error = "cannot start a thread (pthread_create failed)";
            return -1;
        }
        pool->n_threads = i + 1;
    }
    return 0;
#else
    pool->error = "threads > 1 needs pthreads, which this platform's build lacks";
    return -1;
#endif
}

static inline void pool_stop(Pool *pool)
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
#endif
    fn(arg, 0, n, 0);
}

#endif

/* fastops/profile.h: cycles per phase of a training step, in builds made with MICROGPT_PROFILE=1 only
   (the normal build compiles every PROFILE_* macro to nothing). run_batch brackets each phase with
   PROFILE_LAP; GPT.profile() hands the totals to Python, where roofline.py --ops --engine c places each
   phase on the roofline with its FLOPs and bytes from microgpt/flops.py. */
#ifndef FASTOPS_PROFILE_H
#define FASTOPS_PROFILE_H

#include <stdint.h>
#include <time.h>

enum {
    PHASE_EMBED,           /* embedding gather, first RMSNorm, and the embedding rows' gradient + Adam */
    PHASE_LINEAR_FORWARD,  /* every y = W x of the forward pass, lm_head included */
    PHASE_ATTENTION,       /* causal self-attention, forward and backward */
    PHASE_NORM_ACT,        /* RMSNorms and the MLP activation, forward and backward */
    PHASE_CROSS_ENTROPY,   /* softmax, loss and its gradient */
    PHASE_LINEAR_BACKWARD, /* both gradients of every linear layer, with Adam fused in */
    PHASE_ADAM,            /* a separate Adam pass (gradient clipping) */
    N_PHASES
};
static const char *const PHASE_NAMES[N_PHASES] = {"embed", "linear_forward", "attention", "norm_act",
                                                  "cross_entropy", "linear_backward", "adam"};

typedef struct { uint64_t ticks[N_PHASES], calls[N_PHASES]; } PhaseProfile;

/* A monotonic tick counter: the time-stamp counter on x86 (constant rate), the virtual counter on
   AArch64, else nanoseconds. profile_ticks_per_second() calibrates it against the wall clock. */
static inline uint64_t profile_now(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    uint64_t t;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(t));
    return t;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

static inline double profile_ticks_per_second(void)
{
    struct timespec a, b, pause = {0, 20000000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    const uint64_t t0 = profile_now();
    nanosleep(&pause, NULL);
    const uint64_t t1 = profile_now();
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(t1 - t0) / ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec));
}

#ifdef MICROGPT_PROFILE
#define FASTOPS_PROFILED 1
#define PROFILE_START() uint64_t profile_mark_ = profile_now()
#define PROFILE_LAP(prof, phase) do { const uint64_t now_ = profile_now();                              \
        (prof)->ticks[phase] += now_ - profile_mark_; (prof)->calls[phase]++; profile_mark_ = now_; } while (0)
#else
#define FASTOPS_PROFILED 0
#define PROFILE_START() ((void)0)
#define PROFILE_LAP(prof, phase) ((void)(prof))
#endif

#endif

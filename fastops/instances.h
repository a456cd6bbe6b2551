/* fastops/instances.h: every kernel instance this build compiles, and the table that picks one.
   x86-64 gets AVX-512, AVX2+FMA and 128-bit SSE+FMA instances beside the portable one, each chosen at
   run time by what the CPU supports; AArch64 gets NEON (every AArch64 CPU has it). */
#ifndef FASTOPS_INSTANCES_H
#define FASTOPS_INSTANCES_H

#include "common.h"

#define INSTANCE_FILE "instance.h"
#define FASTOPS_ISA_GENERIC
#define SUFFIX f64_generic
#include INSTANCE_FILE
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_generic
#include INSTANCE_FILE
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_ISA_GENERIC
#include "each_instance.h"
#undef INSTANCE_FILE

/* Instruction sets, best first, and each one's kernels for float64 and float32. */
typedef struct { const char *name; const Kernels *f64, *f32; } Isa;
static const Isa ISAS[] = {
#ifdef HAVE_X86_DISPATCH
    {"avx512", &kernels_f64_avx512, &kernels_f32_avx512},
    {"avx2", &kernels_f64_avx2, &kernels_f32_avx2},
    {"sse", &kernels_f64_sse, &kernels_f32_sse},
#endif
#ifdef HAVE_NEON
    {"neon", &kernels_f64_neon, &kernels_f32_neon},
#endif
    {"generic", &kernels_f64_generic, &kernels_f32_generic},
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))

static inline int cpu_supports(const char *isa)
{
#ifdef HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(isa, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(isa, "sse")) return __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("fma");
#endif
#ifdef HAVE_NEON
    if (!strcmp(isa, "neon")) return 1;
#endif
    return !strcmp(isa, "generic");
}

/* The instance named `isa` ("auto" or NULL: the best this CPU runs), or NULL if this CPU or build lacks it. */
static inline const Isa *find_isa(const char *isa)
{
    for (int i = 0; i < N_ISAS; i++)
        if (isa && strcmp(isa, "auto") ? !strcmp(isa, ISAS[i].name) : cpu_supports(ISAS[i].name))
            return cpu_supports(ISAS[i].name) ? &ISAS[i] : NULL;
    return NULL;
}

#endif

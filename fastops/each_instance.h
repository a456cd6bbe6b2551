/* fastops/each_instance.h: includes INSTANCE_FILE once per vector instance this build compiles -- a scalar
   type (float64, then FASTOPS_F32) on an instruction set (FASTOPS_ISA_*), with SUFFIX naming it (f64_avx2,
   f32_neon, ...). The kernels (fastops/instances.h) and the roofline's probes (microgpt/ceilings.c)
   instantiate themselves with it, so both always cover the same instruction sets: AVX-512, AVX2+FMA and
   128-bit SSE+FMA on x86-64 (chosen at run time by what the CPU supports), NEON on AArch64. The portable
   instance (FASTOPS_ISA_GENERIC) is the includer's own business. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FASTOPS_ISA_AVX512
#define SUFFIX f64_avx512
#include INSTANCE_FILE
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_avx512
#include INSTANCE_FILE
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_ISA_AVX512

#define FASTOPS_ISA_AVX2
#define SUFFIX f64_avx2
#include INSTANCE_FILE
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_avx2
#include INSTANCE_FILE
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_ISA_AVX2

#define FASTOPS_ISA_SSE
#define SUFFIX f64_sse
#include INSTANCE_FILE
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_sse
#include INSTANCE_FILE
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_ISA_SSE
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
#define FASTOPS_ISA_NEON
#define SUFFIX f64_neon
#include INSTANCE_FILE
#undef SUFFIX
#define FASTOPS_F32
#define SUFFIX f32_neon
#include INSTANCE_FILE
#undef SUFFIX
#undef FASTOPS_F32
#undef FASTOPS_ISA_NEON
#endif

/* fastops/simd.h: the vector layer. Included once per kernel instance (see fastops/instance.h), after
   choosing a scalar type with FASTOPS_F32 (else float64) and one instruction set:

     FASTOPS_ISA_AVX512   512-bit registers, 32 of them, mask registers for tails
     FASTOPS_ISA_AVX2     256-bit AVX2 + FMA, 16 registers (the hosted-CI class of x86 machine)
     FASTOPS_ISA_SSE      128-bit with FMA on x86, 16 registers: the shape of NEON, testable on x86
     FASTOPS_ISA_NEON     128-bit AArch64 Advanced SIMD, 32 registers
     FASTOPS_ISA_GENERIC  no vectors: the reference kernels in plain C (fastops/reference.h)

   Every optimised kernel is written once against the macros below. They are intrinsics behind
   macros, not GCC vector extensions: extensions would give +, * and loads for free, but not fused
   multiply-add with one rounding on every target, masked tails, the hardware square root, or the
   exponent-bit tricks, and each of those would need per-ISA code anyway -- here it is all in one place.

   Vectors hold VW values of `real`; VFMA(a, b, c) = a b + c with one rounding; VWHERE_GT(a, b, x) is
   x in the lanes where a > b and 0 elsewhere. VLOAD_MASKED / VSTORE_MASKED touch only the first n lanes of a
   VMASK_FIRST(n) mask: AVX-512 has mask registers for that; the others pass the lane count and go
   through a small stack copy, so a tail never reads or writes past the end of a buffer (the 128-bit x86
   instance takes the same path as NEON on purpose, so that ASan checks it on x86). With a constant
   full mask the copy compiles away. TARGET lets the compiler use the instruction set in the instance's
   functions only; GEMM_MR is the number of rows of gemm's register tile (2 vectors wide), sized to the
   register file: 8 x 2 accumulators of 32 registers, 6 x 2 of 16. */

#ifdef FASTOPS_F32
#define real float
#define UINT uint32_t
#define R_SQRT sqrtf
#define R_LOG logf
#define EXP_MAX 87.0f                /* |x| beyond which e^x leaves the normal floats */
#define EXP_SHIFTER 0x1.8p23f
#define EXP_BIAS 127u
#define EXP_MANTISSA 23
#define EXP_DEGREE 7                 /* Taylor terms for e^r, |r| <= ln2/2: error < 2^-26 */
#else
#define real double
#define UINT uint64_t
#define R_SQRT sqrt
#define R_LOG log
#define EXP_MAX 708.0
#define EXP_SHIFTER 0x1.8p52
#define EXP_BIAS 1023u
#define EXP_MANTISSA 52
#define EXP_DEGREE 13                /* error < 2^-56 */
#endif

#if defined(FASTOPS_ISA_AVX512)
#define FASTOPS_VECTOR 1
#define ISA_NAME "avx512"
#define TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define GEMM_MR 8
#ifdef FASTOPS_F32
#define VREAL __m512
#define VMASK __mmask16
#define VW 16
#define VSUFFIX(op) op##_ps
#else
#define VREAL __m512d
#define VMASK __mmask8
#define VW 8
#define VSUFFIX(op) op##_pd
#endif
#define VMASK_ALL ((VMASK)((1u << VW) - 1u))
#define VMASK_FIRST(n) ((VMASK)((1u << (n)) - 1u))
#define VZERO() VSUFFIX(_mm512_setzero)()
#define VLOAD(p) VSUFFIX(_mm512_loadu)(p)
#define VSTORE(p, x) VSUFFIX(_mm512_storeu)(p, x)
#define VLOAD_MASKED(mask, p) VSUFFIX(_mm512_maskz_loadu)(mask, p)
#define VSTORE_MASKED(p, mask, x) VSUFFIX(_mm512_mask_storeu)(p, mask, x)
#define VSET1(x) VSUFFIX(_mm512_set1)(x)
#define VADD(a, b) VSUFFIX(_mm512_add)(a, b)
#define VSUB(a, b) VSUFFIX(_mm512_sub)(a, b)
#define VMUL(a, b) VSUFFIX(_mm512_mul)(a, b)
#define VFMA(a, b, c) VSUFFIX(_mm512_fmadd)(a, b, c)
#define VMAX(a, b) VSUFFIX(_mm512_max)(a, b)
#define VSQRT(x) VSUFFIX(_mm512_sqrt)(x)
#define VDIV(a, b) VSUFFIX(_mm512_div)(a, b)
#ifdef FASTOPS_F32
#define VWHERE_GT(a, b, x) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), x)
#else
#define VWHERE_GT(a, b, x) _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(a, b, _CMP_GT_OQ), x)
#endif

#elif defined(FASTOPS_ISA_AVX2) || defined(FASTOPS_ISA_SSE)
#define FASTOPS_VECTOR 1
#define GEMM_MR 6
#ifdef FASTOPS_ISA_AVX2
#define ISA_NAME "avx2"
#define TARGET __attribute__((target("avx2,fma")))
#define VPFX _mm256_
#ifdef FASTOPS_F32
#define VREAL __m256
#define VW 8
#else
#define VREAL __m256d
#define VW 4
#endif
#else
#define ISA_NAME "sse"
/* FMA needs the VEX encoding, so the compiler could widen plain loops to 256 bits: keep it at 128 */
#define TARGET __attribute__((target("sse4.1,fma,prefer-vector-width=128")))
#define VPFX _mm_
#ifdef FASTOPS_F32
#define VREAL __m128
#define VW 4
#else
#define VREAL __m128d
#define VW 2
#endif
#endif
#ifdef FASTOPS_F32
#define VSFX _ps
#else
#define VSFX _pd
#endif
#define VCAT(a, b) a##b
#define VCAT2(a, b) VCAT(a, b)
#define VOP(op) VCAT2(VCAT2(VPFX, op), VSFX)
#define VZERO() VOP(setzero)()
#define VLOAD(p) VOP(loadu)(p)
#define VSTORE(p, x) VOP(storeu)(p, x)
#define VSET1(x) VOP(set1)(x)
#define VADD(a, b) VOP(add)(a, b)
#define VSUB(a, b) VOP(sub)(a, b)
#define VMUL(a, b) VOP(mul)(a, b)
#define VFMA(a, b, c) VOP(fmadd)(a, b, c)
#define VMAX(a, b) VOP(max)(a, b)
#define VSQRT(x) VOP(sqrt)(x)
#define VDIV(a, b) VOP(div)(a, b)
#define VWHERE_GT(a, b, x) VOP(and)(VOP(cmp)(a, b, _CMP_GT_OQ), x)
#define FASTOPS_LANE_COUNT_MASKS 1

#elif defined(FASTOPS_ISA_NEON)
#define FASTOPS_VECTOR 1
#define ISA_NAME "neon"
#define TARGET
#define GEMM_MR 8
#ifdef FASTOPS_F32
#define VREAL float32x4_t
#define VW 4
#define VNEON(op) op##_f32
#else
#define VREAL float64x2_t
#define VW 2
#define VNEON(op) op##_f64
#endif
#define VZERO() VNEON(vdupq_n)(0)
#define VLOAD(p) VNEON(vld1q)(p)
#define VSTORE(p, x) VNEON(vst1q)(p, x)
#define VSET1(x) VNEON(vdupq_n)(x)
#define VADD(a, b) VNEON(vaddq)(a, b)
#define VSUB(a, b) VNEON(vsubq)(a, b)
#define VMUL(a, b) VNEON(vmulq)(a, b)
#define VFMA(a, b, c) VNEON(vfmaq)(c, a, b)      /* c + a b, one rounding */
#define VMAX(a, b) VNEON(vmaxq)(a, b)
#define VSQRT(x) VNEON(vsqrtq)(x)
#define VDIV(a, b) VNEON(vdivq)(a, b)
#ifdef FASTOPS_F32
#define VWHERE_GT(a, b, x) vreinterpretq_f32_u32(vandq_u32(vcgtq_f32(a, b), vreinterpretq_u32_f32(x)))
#else
#define VWHERE_GT(a, b, x) vreinterpretq_f64_u64(vandq_u64(vcgtq_f64(a, b), vreinterpretq_u64_f64(x)))
#endif
#define FASTOPS_LANE_COUNT_MASKS 1

#elif defined(FASTOPS_ISA_GENERIC)
#define ISA_NAME "generic"
#define TARGET
#define GEMM_MR 8                    /* rows of C per thread task */
#else
#error "fastops/simd.h: define one FASTOPS_ISA_* before including it"
#endif

#ifdef FASTOPS_LANE_COUNT_MASKS
/* Without mask registers a mask is the number of leading lanes. */
#define VMASK int
#define VMASK_ALL VW
#define VMASK_FIRST(n) ((int)(n))
static inline __attribute__((always_inline)) TARGET VREAL FN(vload_first)(const real *p, int n)
{
    if (n == VW) return VLOAD(p);
    real lanes[VW] = {0};
    memcpy(lanes, p, (size_t)n * sizeof(real));
    return VLOAD(lanes);
}
static inline __attribute__((always_inline)) TARGET void FN(vstore_first)(real *p, int n, VREAL x)
{
    if (n == VW) { VSTORE(p, x); return; }
    real lanes[VW];
    VSTORE(lanes, x);
    memcpy(p, lanes, (size_t)n * sizeof(real));
}
#define VLOAD_MASKED(mask, p) FN(vload_first)(p, mask)
#define VSTORE_MASKED(p, mask, x) FN(vstore_first)(p, mask, x)
#endif

/* For each vector of lanes [0, n): the statements, with `t` the first lane and `mask` the lanes; whole
   vectors first (a constant full mask), then at most one partial one. */
#define FOR_LANES(t, mask, n, ...) do {                                                                  \
        ptrdiff_t t = 0;                                                                                \
        for (; t + VW <= (n); t += VW) { const VMASK mask = VMASK_ALL; __VA_ARGS__ }                    \
        if (t < (n)) { const VMASK mask = VMASK_FIRST((n) - t); __VA_ARGS__ }                           \
    } while (0)

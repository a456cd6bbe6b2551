/* fastops/instance.h: one instance of the kernels -- a scalar type on an instruction set. Included by
   fastops.c (and the kernel harness) once per instance, with FASTOPS_F32 or not, one FASTOPS_ISA_*,
   and SUFFIX naming the instance: FN(x) becomes x_<SUFFIX>, e.g. run_batch_f64_avx2. */
#define FN_JOIN(name, suffix) name##_##suffix
#define FN_EXPAND(name, suffix) FN_JOIN(name, suffix)
#define FN(name) FN_EXPAND(name, SUFFIX)

#include "simd.h"
#include "workspace.h"
#include "linear.h"
#include "attention.h"
#include "model.h"
#include "simd_end.h"

#undef FN_JOIN
#undef FN_EXPAND
#undef FN

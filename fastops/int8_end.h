/* fastops/int8_end.h: forgets one instruction set's helpers of fastops/int8_kernels.h before the next. */
#include "int8_width_end.h"
#undef mv_zero
#undef mv_set1
#undef mv_load
#undef mv_fma
#undef mv_mul
#undef mv_store_first
#undef mv_isub
#undef mv_itof
#undef mv_acc_sum
#undef MV_X_SIGNED
#undef MV_DOT4_SIGNED

/* fastops/int8_width_end.h: forgets the helpers of fastops/int8_kernels.h that depend on the vector
   width (a 256-bit and a 128-bit x86 instance share the rest), before the next width. */
#undef MV_OP
#undef MV_FL
#undef MV_VF
#undef MV_VI
#undef MV_ACC
#undef mv_iload
#undef mv_acc_zero
#undef MV_TARGET_F32
#undef MV_TARGET_I8
#undef MV_X
#undef mv_x
#undef mv_dot4
#undef MV_BIASED
#undef MV_XQ

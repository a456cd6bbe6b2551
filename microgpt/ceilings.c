/* _ceilings: micro-kernels that measure this machine's peak FLOP/s and memory bandwidth. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef ceilings_module = {PyModuleDef_HEAD_INIT, "_ceilings", "Roofline ceiling probes.", -1, NULL};

PyMODINIT_FUNC PyInit__ceilings(void) { return PyModule_Create(&ceilings_module); }

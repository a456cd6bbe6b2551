/* fastops: C kernels for microgpt-lab (filled in by the C-trainer work). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef fastops_module = {PyModuleDef_HEAD_INIT, "fastops", "microgpt-lab C kernels.", -1, NULL};

PyMODINIT_FUNC PyInit_fastops(void) { return PyModule_Create(&fastops_module); }

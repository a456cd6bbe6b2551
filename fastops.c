/*
 * fastops: the C engine of microgpt-lab. One call trains one or many optimizer steps of the GPT of
 * train.py (forward, backward, gradient clipping, Adam) on four flat buffers that Python owns:
 * params, grads, and Adam's m and v, each in the flat layout of microgpt/params.py and shared through
 * the buffer protocol, so nothing is copied between Python and C.
 *
 * How the work is laid out
 *   - A batch is flattened to M tokens (documents back to back). Activations are stored feature-major,
 *     X[f][t] with row stride MP = M rounded up to 8, so every per-token operation (RMSNorm, softmax,
 *     attention, cross-entropy) is a loop over contiguous tokens that vectorises with no horizontal sums.
 *     Lanes M..MP-1 are padding: they hold finite junk and never reach a loss or a gradient.
 *   - Every matrix product is one routine, gemm: C = A B with A read through two strides (so W, W^T and
 *     dY^T are all just views) and B, C row-major. The forward pass is Y^T = W X^T, the input gradient
 *     dX^T = W^T dY^T, the weight gradient dW = dY^T X (X token-major, from a transpose).
 *   - Each output element of gemm is one chain of multiply-adds in k order, whatever the tiling and the
 *     thread that computes it, so results do not depend on the number of threads.
 *
 * The parts, in the spirit of llm.c's llmc/ (each header is included once, into this one file):
 *   fastops/common.h       shapes, batches, the engine's state (Model), the Kernels table
 *   fastops/pool.h         the thread pool (shared with microgpt/ceilings.c)
 *   fastops/profile.h      cycles per phase, in MICROGPT_PROFILE=1 builds only
 *   fastops/simd.h         the vector layer: AVX-512, AVX2+FMA, 128-bit SSE+FMA, NEON, or none
 *   fastops/instance.h     one instance of the kernels: a dtype on an instruction set, from
 *     linear.h               Adam and the linear layers, on kernels_vector.h (written once against
 *                            simd.h) or reference.h (plain C, the portable fallback and the reference)
 *     attention.h            causal attention and exp, plain loops the compiler
 *                            vectorises for the instance's instruction set
 *     model.h                the whole model on one batch (run_batch)
 *   fastops/instances.h    every instance this build compiles (the list: each_instance.h, shared with the
 *                          roofline's probes); the best the CPU runs is picked at run time
 *   fastops/check.h        the buffer argument check; gpt.h, ops.h, int8.h: the Python types and functions
 *   fastops/dev/           the kernel harness: each vector kernel checked against reference.h and timed
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fastops/instances.h"
#include "fastops/check.h"
#include "fastops/gpt.h"
#include "fastops/ops.h"
#include "fastops/int8.h"

static PyObject *available_isas(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < N_ISAS; i++)
        if (cpu_supports(ISAS[i].name)) {
            PyObject *name = PyUnicode_FromString(ISAS[i].name);
            if (!name || PyList_Append(list, name) < 0) Py_CLEAR(list);
            Py_XDECREF(name);
        }
    return list;
}

static PyMethodDef module_methods[] = {
    {"available_isas", available_isas, METH_NOARGS, "Instruction sets this CPU and build can run, best first."},
    OPS_METHODS,
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastops_module = {
    PyModuleDef_HEAD_INIT, "fastops", "microgpt-lab's C engine: the GPT of train.py on flat buffers.", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_fastops(void)
{
    if (PyType_Ready(&GPTType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastops_module);
    if (!m) return NULL;
    Py_INCREF(&GPTType);
    if (PyModule_AddObject(m, "GPT", (PyObject *)&GPTType) < 0) {
        Py_DECREF(&GPTType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyType_Ready(&InferType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&InferType);
    if (PyModule_AddObject(m, "InferenceGPT", (PyObject *)&InferType) < 0) {
        Py_DECREF(&InferType);
        Py_DECREF(m);
        return NULL;
    }
    /* batches of at most this many tokens train with the fused backward pass (benchmarks and tests);
       PROFILED: this build counts cycles per phase (MICROGPT_PROFILE=1), see GPT.profile() */
    if (PyModule_AddIntConstant(m, "FUSED_MAX_TOKENS", FUSED_MAX_TOKENS) < 0 ||
        PyModule_AddIntConstant(m, "PROFILED", FASTOPS_PROFILED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}


"""Builds the C extensions and the Cython kernels; all metadata lives in pyproject.toml.

``MICROGPT_SANITIZE=1 pip install -e .`` builds them with AddressSanitizer and UBSan (run Python
with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` to load them). ``MICROGPT_PROFILE=1`` builds
fastops with cycle counters per phase of the training step (``GPT.profile()``; zero cost otherwise).
"""

import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    compile_args, link_args = ["/O2"], []
else:
    # gnu11 (not c11) keeps -ffp-contract=fast so the compiler may fuse multiply-adds. -fno-trapping-math:
    # no floating-point exception is ever unmasked here, and assuming none lets GCC turn the clamps and
    # selects of the plain-loop exp into blends without mask registers (AVX2, SSE: measured 2.2-6x).
    compile_args, link_args = ["-O3", "-std=gnu11", "-fno-trapping-math", "-Wall", "-Wextra",
                               "-Werror=implicit-function-declaration"], []
    if os.environ.get("MICROGPT_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
        compile_args += sanitize
        link_args += sanitize

# fastops.c includes its parts from fastops/: an edit to any of them rebuilds the extension.
FASTOPS_HEADERS = sorted(glob.glob("fastops/*.h"))
fastops_macros = [("MICROGPT_PROFILE", "1")] if os.environ.get("MICROGPT_PROFILE") else []

setup(ext_modules=[
    Extension("fastops", ["fastops.c"], depends=FASTOPS_HEADERS, define_macros=fastops_macros,
              extra_compile_args=compile_args, extra_link_args=link_args),
    Extension("microgpt._ceilings", ["microgpt/ceilings.c"], depends=FASTOPS_HEADERS, extra_compile_args=compile_args,
              extra_link_args=link_args),
    # Cython writes its generated C under build/, so the source tree holds only the .pyx.
    *cythonize([Extension("engines.cython_ops", ["engines/cython_ops.pyx"], extra_compile_args=compile_args,
                          extra_link_args=link_args)], build_dir="build", quiet=True),
])

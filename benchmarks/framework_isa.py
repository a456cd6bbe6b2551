"""Holds the frameworks' own kernels to one instruction set, so that a forced c[avx2] meets peers that are
held to AVX2 too.

On an AVX-512 machine, `--isa avx2` measures the C engine as it would run on an AVX2-only CPU (a Zen 3, a
hosted CI runner), but NumPy's OpenBLAS, PyTorch's MKL/oneDNN/ATen kernels and the rest still pick their
AVX-512 code at run time: the comparison would pit an AVX2 engine against AVX-512 libraries, a machine
that does not exist. Each library reads an environment variable, once, when it loads:

| library | variable | what it caps |
|---|---|---|
| OpenBLAS (NumPy's wheels) | `OPENBLAS_CORETYPE` | the kernel set chosen by DYNAMIC_ARCH |
| Intel MKL (PyTorch's BLAS on x86) | `MKL_ENABLE_INSTRUCTIONS` | MKL's code path |
| ATen (PyTorch's own CPU kernels) | `ATEN_CPU_CAPABILITY` | the vectorised kernels' dispatch |
| oneDNN (PyTorch's mkldnn ops) | `ONEDNN_MAX_CPU_ISA` | oneDNN's JIT kernels |

Not capped, said so wherever it matters: XLA's CPU dot (JAX) ignores `--xla_cpu_max_isa` (measured: the
same 53-56 GFLOP/s for a float64 512x512x232 product with AVX2, SSE4_2 or no cap), and MLX's CPU backend
has no switch. Measured with the caps on this Xeon (float64 512x512 @ 512x232, one thread): NumPy 51 ->
43 (avx2) -> 15 GFLOP/s (sse), PyTorch 66 -> 43 -> 16.

    python benchmarks/framework_isa.py avx2 -- python benchmarks/engine_table.py --isa avx2 ...
    python benchmarks/framework_isa.py --show            # what each library reports it runs now
"""

from __future__ import annotations

import argparse
import os
import sys

# Each capped level names the older CPU whose kernels the library should pick.
CAPS: dict[str, dict[str, str]] = {
    "avx512": {},
    "avx2": {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse": {"OPENBLAS_CORETYPE": "Nehalem", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
UNCAPPED = "jax (XLA's dot ignores --xla_cpu_max_isa) and mlx (no switch)"
#: Set in the capped environment: engine_table.py records in each row the ISA its engine's libraries ran
#: (benchmarks/c_targets.py races a forced c[isa] only against peers held to that ISA or a narrower one).
MARKER = "MICROGPT_FRAMEWORKS_ISA"
#: The engines whose libraries read the caps (their yardsticks too); every other engine runs the CPU's best.
CAPPABLE = ("numpy", "torch", "torch-compile", "torch-yardstick")


def frameworks_isa(engine: str, native: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The instruction set ``engine``'s own kernels ran under this environment: the cap that
    framework_isa.py set for a cappable engine, else ``native`` (the CPU's best)."""
    cap = (os.environ if environ is None else environ).get(MARKER)
    return cap if cap and engine in CAPPABLE else native


def capped_environment(isa: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """base (default: this process's environment) with the variables that hold the libraries to isa."""
    if isa not in CAPS:
        raise ValueError(f"no framework cap for {isa!r}: choose one of {', '.join(CAPS)}")
    env = dict(os.environ if base is None else base)
    env.update(CAPS[isa])
    env[MARKER] = isa
    return env


def libraries_report() -> dict[str, str]:
    """What the loaded libraries say they run: PyTorch's ATen capability and the OpenBLAS core NumPy picked."""
    report = {}
    try:
        import torch
        report["torch"] = str(torch.backends.cpu.get_cpu_capability())
    except ImportError:
        report["torch"] = "not installed"
    try:
        import numpy as np
        try:
            from threadpoolctl import threadpool_info
            cores = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
            report["numpy openblas"] = ", ".join(c for c in cores if c) or "not found"
        except ImportError:
            report["numpy openblas"] = f"numpy {np.__version__} (threadpoolctl not installed: core not known)"
    except ImportError:
        report["numpy openblas"] = "not installed"
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("isa", nargs="?", choices=sorted(CAPS), help="the instruction set to hold the libraries to")
    p.add_argument("--show", action="store_true", help="print what the libraries report they run, and exit")
    args = p.parse_args(argv)
    if args.show:
        for name, value in libraries_report().items():
            print(f"{name}: {value}")
        return 0
    if not args.isa or not command:
        p.error("give an ISA and, after --, the command to run under it")
    print(f"frameworks held to {args.isa} ({' '.join(f'{k}={v}' for k, v in CAPS[args.isa].items()) or 'no cap'}); "
          f"not capped: {UNCAPPED}", file=sys.stderr)
    try:
        os.execvpe(command[0], command, capped_environment(args.isa))
    except OSError as e:
        print(f"error: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

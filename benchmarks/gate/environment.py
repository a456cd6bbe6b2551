"""The environment a result was measured in: machine, Python build, packages, compiler, git."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

from benchmarks.gate import REPO

# the CPU flags that change which kernels run and how fast (x86 vector extensions, Arm's NEON/ASIMD)
ISA_FLAGS = ("avx512f", "avx512vl", "avx512_bf16", "avx512_vnni", "avx2", "fma", "avx", "sse2", "neon", "asimd")
PACKAGES = ("numpy", "torch", "jax", "jaxlib", "mlx", "Cython", "scipy", "matplotlib", "pytest-benchmark")


def _command_output(args: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: Path) -> dict:
    commit = _command_output(["git", "rev-parse", "HEAD"], root)
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": _command_output(["git", "rev-parse", "--abbrev-ref", "HEAD"], root)}


def python_build() -> dict:
    """Which build of Python this is: two builds of one version differ by 1.7x on pure-Python code (train.py:
    9.7 ms a step on Debian's 3.11, 16.7 ms on a pyenv-built 3.11, one machine), so the version alone is not
    enough."""
    config_args = sysconfig.get_config_var("CONFIG_ARGS") or ""
    flags = " ".join(sysconfig.get_config_var(k) or "" for k in ("CFLAGS", "PY_CFLAGS_NODIST", "LDFLAGS",
                                                                 "PY_LDFLAGS_NODIST", "CONFIG_ARGS"))
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "sys_version": sys.version, "build": list(platform.python_build()), "compiler": platform.python_compiler(),
            "executable": sys.executable, "config_args": config_args, "cflags": sysconfig.get_config_var("CFLAGS"),
            # told from the configure flags or the compiler flags the build recorded; a build that used PGO or
            # LTO some other way reads as False
            "pgo": "--enable-optimizations" in config_args or "-fprofile-use" in (sysconfig.get_config_var("CFLAGS") or ""),
            "lto": "--with-lto" in config_args or "-flto" in flags}


def fastops_isa() -> str | None:
    """The instruction set the c engine's kernels run when none is asked for (the best this CPU and build
    run), None when fastops is not built."""
    from microgpt.native import import_fastops
    try:
        return import_fastops().available_isas()[0]
    except ImportError:
        return None


PYTHON_BUILD_KEYS = ("version", "implementation", "build", "compiler", "config_args", "pgo", "lto")
MACHINE_KEYS = ("model", "family_model_stepping", "isa_flags", "cpus", "arch", "fastops_isa")


def fingerprint(env: dict) -> str:
    """The key of results that can be compared without a warning: the machine (CPU model, stepping, the
    flags that matter, cores, the fastops ISA that runs) and the Python build. Baselines and their
    history are kept per fingerprint."""
    machine, python = env.get("machine") or {}, env.get("python") or {}
    key = {"machine": {k: machine.get(k) for k in MACHINE_KEYS}, "python": {k: python.get(k) for k in PYTHON_BUILD_KEYS}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def environment(root: Path = REPO) -> dict:
    from microgpt import machine

    cpu, caches = machine.cpu_info(), machine.caches()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cc = sysconfig.get_config_var("CC") or "cc"
    env = {
        "machine": {"model": cpu["model"], "family_model_stepping": cpu.get("family_model_stepping"),
                    "simd_flags": cpu["simd_flags"],
                    "isa_flags": sorted(f for f in cpu["simd_flags"] if f in ISA_FLAGS),
                    "fastops_isa": fastops_isa(), "cpus": cpu["cpus"],
                    "logical_cpus": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
                    "host": platform.node(), "fingerprint": machine.fingerprint(cpu, caches)},
        "python": python_build(),
        "packages": versions,
        "compiler": {"cc": cc, "version": (_command_output([cc.split()[0], "--version"]) or "").split("\n")[0] or None,
                     "cflags": sysconfig.get_config_var("CFLAGS"),
                     "sanitize": bool(os.environ.get("MICROGPT_SANITIZE"))},
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                       if k in os.environ},
        "git": git_info(root),
    }
    env["fingerprint"] = fingerprint(env)
    return env


def _differences(a: dict, b: dict, keys: tuple[str, ...]) -> list[str]:
    """``key: a vs b`` for each key both record and they disagree on (an older file may lack a key)."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if k in a and k in b and a[k] != b[k]]


def machine_differences(a: dict, b: dict) -> list[str]:
    """What differs between two environments' machines (CPU model and stepping, the SIMD flags that
    matter, core count, architecture, the fastops ISA that ran)."""
    return _differences(a.get("machine", {}), b.get("machine", {}), MACHINE_KEYS)


def python_differences(a: dict, b: dict) -> list[str]:
    """What differs between two environments' Python builds (version, build date, compiler, configure
    flags, PGO, LTO)."""
    return _differences(a.get("python", {}), b.get("python", {}), PYTHON_BUILD_KEYS)


def machine_line(env: dict) -> str:
    """The machine and Python build in one line, for tables, comments and charts: 'Intel Xeon (6/143/8),
    avx512, 2 CPUs; CPython 3.11.7, GCC 12.2.0, no PGO, no LTO'."""
    m, p = env.get("machine") or {}, env.get("python") or {}
    fms = "/".join(map(str, m.get("family_model_stepping") or []))
    build = ", ".join(filter(None, [p.get("compiler"), None if "pgo" not in p else ("PGO" if p["pgo"] else "no PGO"),
                                    None if "lto" not in p else ("LTO" if p["lto"] else "no LTO")]))
    return (f"{m.get('model') or '?'}" + (f" ({fms})" if fms else "")
            + (f", fastops {m['fastops_isa']}" if m.get("fastops_isa") else "") + f", {m.get('cpus') or '?'} CPUs; "
            f"{p.get('implementation') or 'Python'} {p.get('version') or '?'}" + (f" ({build})" if build else ""))

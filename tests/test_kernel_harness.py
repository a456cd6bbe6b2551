"""The C kernel harness (fastops/dev/check_kernels.c): every vector kernel instance against the portable one.

Builds the harness three ways into a temporary folder (never the source tree), side by side: natively with
-O3 -Werror; with AddressSanitizer + UBSan (the 128-bit SSE instance, whose tails take the same lane-count
path as NEON, and the generic one; AVX-512's tails are hardware-masked and invisible to ASan, and each more
instance adds ~20 s of sanitized compile); and for AArch64 (NEON + generic), run under qemu-aarch64. The
native and sanitized binaries run on the instances this CPU supports. No Python extension is involved.
"""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "fastops" / "dev" / "build.sh"
AARCH64_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
TIMEOUT = 900

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or shutil.which("gcc") is None,
                                reason="the kernel harness builds with gcc on Linux")


class Builds:
    """The three builds, started at once in the background; get(target) waits for one."""

    FLAGS = {"native": {}, "asan": {"ASAN_CFLAGS": "-DDEV_AVX512=0 -DDEV_AVX2=0"}, "aarch64": {}}
    BINARIES = {"native": "check_kernels", "asan": "check_kernels_asan", "aarch64": "check_kernels_aarch64"}

    def __init__(self, out: Path):
        self.out = out
        self.procs = {}
        for target, extra in self.FLAGS.items():
            if target == "aarch64" and (shutil.which(AARCH64_CC) is None or shutil.which(QEMU) is None):
                continue
            env = {**os.environ, "EXTRA_CFLAGS": "-Werror", **extra}
            self.procs[target] = subprocess.Popen(["bash", str(BUILD), target, str(out)], env=env,
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(self, target: str) -> Path:
        proc = self.procs[target]
        log, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{target} build failed:\n{log}"
        assert not log.strip(), f"{target} build printed diagnostics:\n{log}"
        return self.out / self.BINARIES[target]

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    b = Builds(tmp_path_factory.mktemp("kernel_harness"))
    yield b
    b.close()


def run(cmd, env=None):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})
    return proc, proc.stdout + proc.stderr


def checked_isas(out: str) -> set[str]:
    """The ISAs of the result lines (isa dtype kernel shape... max_err tol PASS|FAIL|ref [time rate])."""
    return {line.split()[0] for line in out.splitlines() if {"PASS", "FAIL", "ref"} & set(line.split()[5:])}


def assert_passed(proc, out: str):
    assert proc.returncode == 0, out
    assert " FAIL" not in out, out
    assert ", 0 failed" in out.splitlines()[-1], out


def test_native_checks(builds):
    proc, out = run([builds.get("native"), "--check-only"])
    assert_passed(proc, out)
    isas = checked_isas(out)
    assert "generic" in isas, out
    if platform.machine() in ("x86_64", "AMD64"):
        assert "sse" in isas, "every x86-64 CPU with FMA runs the 128-bit instance"


def test_native_timing_and_arguments(builds):
    exe = builds.get("native")
    proc, out = run([exe, "--quick", "--isa", "generic", "--kernel", "gemm_fwd", "--min-time", "0.001"])
    assert_passed(proc, out)
    assert "GFLOP/s" in out, out
    proc, out = run([exe, "--isa", "no-such-isa"])
    assert proc.returncode == 2 and "no ISA" in out, out


def test_sanitized_checks(builds):
    """Every buffer is allocated with its exact size: a tail that reads or writes past one is an ASan error."""
    proc, out = run([builds.get("asan"), "--check-only", "--quick"],
                    env={"UBSAN_OPTIONS": "print_stacktrace=1", "ASAN_OPTIONS": "abort_on_error=0"})
    assert_passed(proc, out)
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None or shutil.which(QEMU) is None,
                    reason=f"needs {AARCH64_CC} and {QEMU} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
def test_aarch64_neon_under_qemu(builds):
    # --isa neon: the generic instance is still the reference, but not checked against itself (emulation is slow)
    proc, out = run([QEMU, builds.get("aarch64"), "--check-only", "--quick", "--isa", "neon"])
    assert_passed(proc, out)
    assert checked_isas(out) == {"neon"}, out

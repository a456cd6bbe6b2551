"""benchmarks/framework_isa.py: the frameworks' kernels held to the instruction set a forced c[isa] runs."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "framework_isa.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import framework_isa  # noqa: E402


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_capped_environment_sets_every_library_variable_and_keeps_the_rest():
    env = framework_isa.capped_environment("avx2", {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert framework_isa.capped_environment("avx512", {"A": "1"}) == {"A": "1", framework_isa.MARKER: "avx512"}
    with pytest.raises(ValueError, match="no framework cap for 'neon'"):
        framework_isa.capped_environment("neon", {})


def test_rows_record_the_cap_for_the_libraries_that_read_it_and_the_cpus_best_for_the_rest():
    capped = framework_isa.capped_environment("avx2", {})
    assert capped[framework_isa.MARKER] == "avx2"
    for engine in ("numpy", "torch", "torch-compile", "torch-yardstick"):
        assert framework_isa.frameworks_isa(engine, "avx512", capped) == "avx2"
        assert framework_isa.frameworks_isa(engine, "avx512", {}) == "avx512"
    for engine in ("jax", "mlx", "cython", "jax-yardstick"):   # no switch: the CPU's best under any cap
        assert framework_isa.frameworks_isa(engine, "avx512", capped) == "avx512"


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="a cap can only lower the libraries' choice: needs an AVX2 CPU")
@pytest.mark.parametrize("isa, torch_says, openblas_says", [("avx2", "AVX2", "Haswell"), ("sse", "DEFAULT", "Nehalem")])
def test_the_libraries_report_the_capped_instruction_set(isa, torch_says, openblas_says):
    pytest.importorskip("torch")
    done = run(isa, "--", sys.executable, str(SCRIPT), "--show")
    assert done.returncode == 0, done.stderr
    assert f"torch: {torch_says}" in done.stdout
    assert f"numpy openblas: {openblas_says}" in done.stdout
    assert "not capped: jax" in done.stderr


def test_bad_use_is_one_line_and_exit_2():
    done = run("avx2", "--", "/nonexistent/command")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: cannot run")
    done = run("avx2")
    assert done.returncode == 2 and "give an ISA" in done.stderr

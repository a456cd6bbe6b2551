"""benchmarks/gpu_check.sh in its CPU dry-run: the code the GPU machine runs, on tiny sizes, end to end."""

import json
import os
import subprocess

from conftest import NAMES, REPO


def run(*args, out):
    env = {**os.environ, "OUT": str(out), "MICROGPT_DATA": str(NAMES)}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_dry_run_checks_equivalence_measures_roofs_and_times_every_engine(tmp_path):
    r = run("--dry-run", out=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["ok"]
    checks = {(row["engine"], row["dtype"]): row for row in result["equivalence"]}
    assert set(checks) == {(e, d) for e in ("torch", "jax") for d in ("float64", "float32")}
    for (engine, dtype), row in checks.items():
        assert row["ok"] and row["loss_rel_err"] <= (1e-9 if dtype == "float64" else 1e-4), row
    roofs = result["roofline"]
    assert roofs["matmul_float64_tflops"] > 0 and roofs["matmul_float32_tflops"] > 0 and roofs["copy_gb_per_s"] > 0
    timed = {(t["engine"], t["batch_size"], t["dtype"]) for t in result["timings"]}
    skipped = {(s["engine"], s["batch_size"], s["dtype"]) for s in result["skipped"]}
    assert timed | skipped == {(e, b, "float32") for e in ("torch", "jax") for b in (1, 4)}
    assert timed, result["skipped"]
    for t in result["timings"]:
        assert t["first_step_ms"] > 0 and t["ms_per_step"] > 0 and t["config_name"] == "tiny"


def test_unknown_flags_are_one_line_errors(tmp_path):
    r = run("--gpu", out=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: gpu_check.sh takes only --dry-run (got --gpu)"]

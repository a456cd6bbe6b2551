"""--metric instructions: callgrind's counts of a training step repeat exactly for identical code, and a
real slowdown of train.py (benchmarks/experiment.py's variants: real extra work, not a sleep) of ~2% and
~10% is flagged at the 1% floor while the unchanged c engine is not. Valgrind is a test dependency
(.ci/run and the workflows install it); small shapes and one or two counted steps keep this under a minute."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import benchmark  # noqa: F401  (puts the checkout on sys.path for benchmarks.gate)
from benchmarks import experiment
from benchmarks.gate.compare import compare_results
from benchmarks.gate.matrix import Case
from benchmarks.gate.results import load_results, results_document
from benchmarks.gate.worker import Side, measure_instructions

from conftest import REPO, read_names

MATRIX = {"counted": {"rounds": 1, "samples": 1, "min_sample_s": 0, "warmup": 1, "count_steps": 1, "groups": [
    {"engines": ["c", "torch"], "configs": ["C8L1H2T8"], "batch_sizes": [2], "dtypes": ["float64"]}]}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not shutil.which("valgrind"):
        if sys.platform == "darwin":        # no Valgrind for macOS on arm64; the error is tested below
            pytest.skip("Valgrind does not run on macOS")
        pytest.fail("valgrind is not installed: apt-get install valgrind (.ci/run installs it)")
    path = tmp_path_factory.mktemp("counted") / "names.txt"
    path.write_text("\n".join(read_names(200)) + "\n")
    return path


def cli(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "benchmark.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def test_without_valgrind_the_metric_is_a_one_line_error(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(MATRIX))
    (tmp_path / "names.txt").write_text("\n".join(read_names(50)) + "\n")
    env = {**os.environ, "PATH": str(tmp_path)}             # no valgrind on it
    r = cli("run", "--metric", "instructions", "--matrix", "counted", "--matrix-file", tmp_path / "m.json",
            "--data", tmp_path / "names.txt", "--quiet", "-o", tmp_path / "x.json", env=env)
    assert r.returncode == 2 and "needs Valgrind" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_run_counts_instructions_and_identical_code_counts_the_same(data, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(MATRIX))
    out = tmp_path / "counts.json"
    r = cli("run", "--metric", "instructions", "--matrix", "counted", "--matrix-file", tmp_path / "m.json",
            "--data", data, "--rounds", "2", "-o", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[2/2] head c C8L1H2T8 b2 f64 t1" in r.stderr and "ETA" in r.stderr
    doc = load_results(out)
    (rec,) = doc["results"]
    assert rec["id"] == "c C8L1H2T8 b2 f64 t1" and len(rec["instruction_samples"]) == 2
    assert rec["instruction_samples"][0] == rec["instruction_samples"][1] > 1000      # exact, run after run
    assert rec["instructions_per_step"] == rec["instruction_samples"][0] and "ms_per_step" not in rec
    assert "not counted" in {s["id"]: s["reason"] for s in doc["skipped"]}["torch C8L1H2T8 b2 f64 t1"]
    r = cli("compare", out, out)
    assert r.returncode == 0 and "instructions" in r.stdout and "no change" in r.stdout


def test_a_two_and_a_ten_percent_slowdown_are_flagged_and_identical_code_is_not(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))      # variant_side extends it
    cases = [Case("python", (16, 1, 4, 16, "relu2"), 1, "float64", 1)]
    settings = {"warmup": 1, "count_steps": 1, "rounds": 1}
    sides = [Side("A", REPO), Side("B", REPO), experiment.variant_side("dot-list-long", tmp_path),
             experiment.variant_side("dot-axpy-list", tmp_path)]
    for s, name in zip(sides[2:], ("slow2", "slow10")):
        s.name = name
    measured = measure_instructions(sides, cases, settings, str(data))
    docs = {s.name: results_document(measured[s.name], cases, settings, {}, "counted", []) for s in sides}

    def verdict(name):
        (v,) = compare_results(docs["A"], docs[name])
        return v

    same, slow2, slow10 = verdict("B"), verdict("slow2"), verdict("slow10")
    assert same.metric == "instructions" and same.threshold == 0.01
    assert same.verdict == "no change" and abs(same.ratio - 1) < 0.001
    assert slow2.verdict == "regression" and 1.015 < slow2.ratio < 1.035
    assert slow10.verdict == "regression" and 1.07 < slow10.ratio < 1.13

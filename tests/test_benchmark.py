"""benchmark.py and benchmarks/gate: the gate's statistics on synthetic samples (rounds of paired samples, separate runs
with a random run effect), its files and errors, run / compare / ab / update-baseline end to end on tiny
matrices, and pytest-benchmark JSON as compare's input."""

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
from scipy import stats

import benchmark  # noqa: F401  (puts the checkout on sys.path for benchmarks.gate)
from benchmarks.gate import compare as gate_compare
from benchmarks.gate import matrix as gate_matrix
from benchmarks.gate import results as gate_results
from benchmarks.gate import stats as gate_stats
from benchmarks.gate.compare import compare_results, judge, judge_runs
from benchmarks.gate.matrix import Case
from microgpt import UserError
from microgpt.timing import time_engine

from conftest import REPO, encode_names, make_setup, read_names

TINY_MATRIX = {"tiny": {"rounds": 2, "samples": 3, "min_sample_s": 0.005, "warmup": 1, "groups": [
    {"engines": ["python"], "configs": ["C8L1H2T8"], "batch_sizes": [2], "dtypes": ["float64", "float32"]},
    {"engines": ["c"], "configs": ["C8L1H2T8"], "batch_sizes": [4], "dtypes": ["float32"], "threads": [1, 2]}]},
               "counted": {"warmup": 1, "count_steps": 1, "groups": [
    {"engines": ["c"], "configs": ["C8L1H2T8"], "batch_sizes": [4], "dtypes": ["float32"]}]}}


def noisy(n, center, spread, seed):
    rng = random.Random(seed)
    return [center * (1 + rng.gauss(0, spread)) for _ in range(n)]


def doc(samples: dict, model="Test CPU", cpus=2, threads=1, cpu=True, python="3.11.7") -> dict:
    """A results document holding ``samples`` (id -> list of ms, or a list of runs' lists) as both wall and
    CPU samples."""
    def record(i, s):
        per_run = s if s and isinstance(s[0], list) else [s]
        flat = [x for run in per_run for x in run]
        rec = {"id": i, "engine": i.split()[0], "threads": threads, "samples_ms": flat,
               **({"cpu_samples_ms": flat} if cpu else {})}
        if len(per_run) > 1:
            rec["sample_runs"] = [k for k, run in enumerate(per_run) for _ in run]
        return rec
    return {"schema": gate_results.SCHEMA, "created": "2024-01-01T00:00:00Z", "matrix": "test",
            "environment": {"machine": {"model": model, "cpus": cpus, "arch": "x86_64"},
                            "python": {"version": python}, "git": {"commit": "abc", "dirty": False}},
            "results": [record(i, s) for i, s in samples.items()], "skipped": []}


def cli(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, str(REPO / "benchmark.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


# --- statistics ------------------------------------------------------------------------------------------

def interleaved_rounds(k, n, slowdown, round_sd, seed, pair_sd=0.02):
    """k rounds of n interleaved pairs. Each pair shares its moment's load (x1 to x1.6) and has 2% noise of
    its own; each round's two processes bring their own luck for the whole round (memory layout, the core
    they got), a factor exp(N(0, round_sd)) on the head's side that every pair of the round shares."""
    rng = random.Random(seed)
    rounds = []
    for _ in range(k):
        luck = math.exp(rng.gauss(0, round_sd))
        base, cur = [], []
        for _ in range(n):
            load = 1.6 if rng.random() < 0.3 else 1.0
            base.append(load * rng.gauss(1, pair_sd))
            cur.append(load * slowdown * luck * rng.gauss(1, pair_sd))
        rounds.append((base, cur))
    return rounds


def test_paired_rounds_see_through_load_and_flag_a_real_change():
    """A real 10% slowdown on a machine whose processes differ little (1% between rounds), under load
    that comes and goes: the pairs cancel the load, 4 rounds flag it."""
    verdicts = [judge("x", interleaved_rounds(4, 6, 1.10, 0.01, seed=s)) for s in range(40)]
    assert sum(v.verdict == "regression" for v in verdicts) >= 38
    v = verdicts[0]
    assert v.paired and v.rounds == 4 and v.n == (24, 24) and 1.07 < v.ratio < 1.13 and v.ci[0] < v.ratio < v.ci[1]
    same = [judge("x", interleaved_rounds(4, 6, 1.0, 0.01, seed=s)).verdict for s in range(40)]
    assert "regression" not in same and "faster" not in same and same.count("no change") > 30
    with pytest.raises(ValueError, match="equal lengths"):
        judge("x", [([1.0, 2.0], [1.0])])
    assert "a time of zero" in judge("x", [([1.0, 0.0, 1.0], [1.0, 1.0, 1.0])]).note


def test_pairs_of_one_round_are_not_independent():
    """A/A where each round's processes carry 5% luck of their own: the pairs of a round all lean the same
    way. Taken as 12 independent pairs (Wilcoxon, as ab did), that luck is a "change" in about a tenth of
    the comparisons; with the round as the unit, about what alpha allows, and a single round is
    inconclusive however steady its pairs."""
    old, new = 0, []
    for seed in range(200):
        rounds = interleaved_rounds(3, 4, 1.0, 0.05, seed=seed)
        d = [math.log(c / b) for base, cur in rounds for b, c in zip(base, cur)]
        ratio = math.exp(sorted(d)[len(d) // 2])
        old += (stats.wilcoxon(d, alternative="greater").pvalue < 0.01 and ratio > 1.05
                or stats.wilcoxon(d, alternative="less").pvalue < 0.01 and ratio < 1 / 1.05)
        new.append(judge("x", rounds).verdict)
    assert old >= 10                                                # 20 of 200
    assert new.count("regression") + new.count("faster") <= 4       # alpha is 1% each way (2 of 200 here)
    one = judge("x", interleaved_rounds(1, 12, 1.3, 0.0, seed=1))
    assert one.verdict == "inconclusive" and one.rounds == 1 and "one round" in one.note


# --- separate runs: the run as a random effect ---------------------------------------------------------

def runs(k, center, run_sd, sample_sd, seed, n=6):
    """k runs of n samples: each run shifted by its own random effect (the machine's state while it ran)."""
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        shift = center * math.exp(rng.gauss(0, run_sd))
        out.append([shift * (1 + rng.gauss(0, sample_sd)) for _ in range(n)])
    return out


@pytest.mark.parametrize("df", [1, 2, 3.5, 7, 30])
def test_student_t_matches_scipy(df):
    for t in (-3.0, -0.4, 0.0, 0.7, 2.5, 9.0):
        assert gate_stats.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9, abs=1e-15)
    for q in (0.025, 0.5, 0.9, 0.975, 0.995):
        assert gate_stats.t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-7, abs=1e-7)


def test_incomplete_beta_matches_scipy():
    from scipy import special
    for a, b, x in ((0.5, 0.5, 0.3), (2.0, 5.0, 0.9), (10.0, 0.5, 0.99), (1.5, 3.0, 0.01)):
        assert gate_stats.incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_one_run_each_is_inconclusive_never_a_regression():
    """The issue's case: two single runs 30% apart, each steady inside. Within-run samples would call it
    a regression at p < 0.001; the run-level model cannot see the run-to-run noise and says so."""
    v = judge_runs("x", [noisy(12, 1.0, 0.01, 1)], [noisy(12, 1.3, 0.01, 2)])
    assert v.verdict == "inconclusive" and v.p is None and v.n == (1, 1) and v.runs
    assert "`ab`" in v.note and "--runs 3" in v.note and v.ratio == pytest.approx(1.3, rel=0.03)


def test_run_to_run_noise_hides_no_false_regression():
    """A/A with a run effect 10x the within-run noise: of 200 comparisons of 3 baseline runs and 1 current
    run, at most what alpha allows are flagged, and most say they cannot tell."""
    verdicts = []
    for seed in range(200):
        base, cur = runs(3, 1.0, 0.08, 0.008, seed), runs(1, 1.0, 0.08, 0.008, 1000 + seed)
        verdicts.append(judge_runs("x", base, cur).verdict)
    assert verdicts.count("regression") <= 2 and verdicts.count("inconclusive") > 100
    # the same numbers judged by their samples alone (as compare did before): the run effect looks like a change
    sample_level = [stats.mannwhitneyu(runs(1, 1.0, 0.08, 0.008, 500 + s)[0], runs(1, 1.0, 0.08, 0.008, s)[0],
                                       alternative="greater").pvalue < 0.01 for s in range(50)]
    assert sum(sample_level) > 5


def test_a_real_change_beyond_the_run_noise_is_flagged():
    base, slow = runs(3, 1.0, 0.01, 0.005, seed=1), runs(1, 1.15, 0.01, 0.005, seed=2)
    pooled = (0.01 ** 2, 30)                      # 30 df of run-to-run variance lent by other benchmarks
    v = judge_runs("x", base, slow, pooled=pooled)
    assert v.verdict == "regression" and v.p < 0.01 and v.ci[0] < v.ratio < v.ci[1] and v.n == (3, 1)
    assert judge_runs("x", base, runs(1, 0.85, 0.01, 0.005, seed=3), pooled=pooled).verdict == "faster"
    same = judge_runs("x", runs(6, 1.0, 0.004, 0.003, seed=6), runs(2, 1.0, 0.004, 0.003, seed=4), pooled=pooled)
    assert same.verdict == "no change" and 0.95 < same.ci[0] and same.ci[1] < 1.05
    # a change below the floor is not a regression however certain
    small = judge_runs("x", runs(4, 1.0, 0.0005, 0.001, seed=7), runs(1, 1.03, 0.0, 0.001, seed=5), pooled=(1e-6, 30))
    assert small.p < 0.001 and small.verdict == "no change"


def test_pooled_noise_never_makes_a_noisy_benchmark_look_steady():
    base = [[1.0] * 4, [1.3] * 4, [0.8] * 4]        # its own runs disagree by 30%
    model = gate_stats.run_model([math.log(1.0), math.log(1.3), math.log(0.8)], [math.log(1.2)],
                                 pooled=(1e-6, 40))
    assert model.df == 2 and model.se > 0.1
    assert judge_runs("x", base, [[1.2] * 4], pooled=(1e-6, 40)).verdict == "inconclusive"


def test_history_on_the_same_machine_supplies_the_run_noise():
    history = [math.log(x) for x in (1.0, 1.01, 0.99, 1.005, 0.995, 1.0)]
    v = judge_runs("x", [noisy(8, 1.0, 0.005, 1)], [noisy(8, 1.2, 0.005, 2)], history=history)
    assert v.verdict == "regression" and v.n == (1, 1)
    noisy_history = [math.log(x) for x in (1.0, 1.3, 0.8, 1.2, 0.9)]
    v = judge_runs("x", [noisy(8, 1.0, 0.005, 1)], [noisy(8, 1.2, 0.005, 2)], history=noisy_history)
    assert v.verdict == "inconclusive"


def test_sum_of_squares_keeps_groups_apart():
    assert gate_stats.sum_of_squares([[1.0, 3.0], [10.0, 10.0, 10.0], [5.0]]) == (2.0, 3)


@pytest.mark.parametrize("text,value", [("5%", 0.05), ("0.05", 0.05), ("12.5%", 0.125), ("1", 1.0), ("0", 0.0)])
def test_threshold_takes_percent_or_a_fraction(text, value):
    assert gate_compare.parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text,message", [("5", "would be 500%"), ("abc", "percentage like 5%"),
                                          ("-1%", "between 0% and 1000%")])
def test_threshold_errors(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        gate_compare.parse_fraction(text)


def test_instruction_counts_are_judged_by_ratio_against_a_small_floor():
    same = gate_compare.judge_counts("x", [1_000_000, 1_000_010], [1_000_005])
    assert same.verdict == "no change" and same.threshold == 0.01 and same.metric == "instructions"
    assert gate_compare.judge_counts("x", [1e6], [1.02e6]).verdict == "regression"
    assert gate_compare.judge_counts("x", [1e6], [0.97e6]).verdict == "faster"
    shaky = gate_compare.judge_counts("x", [1e6, 1.02e6], [1e6])
    assert shaky.verdict == "inconclusive" and "spread" in shaky.note


def test_pairs_are_formed_within_rounds():
    b = {"samples_ms": [1, 2, 3, 4, 5], "sample_rounds": [0, 0, 1, 1, 2]}
    c = {"samples_ms": [10, 20, 30, 40, 50, 60], "sample_rounds": [0, 0, 0, 1, 1, 3]}
    assert gate_compare.paired_rounds(b, c, "samples_ms") == [([1, 2], [10, 20]), ([3, 4], [40, 50])]
    assert gate_compare.round_values([([1.0, 2.0], [2.0, 2.0]), ([1.0, 0.0], [1.0, 3.0])]) == [
        pytest.approx(math.log(2) / 2), 0.0]


def test_compare_pairs_only_results_of_one_interleaved_session():
    base = doc({"a": noisy(8, 1.0, 0.01, 1)})
    cur = doc({"a": noisy(8, 1.2, 0.01, 2)})
    assert not compare_results(base, cur)[0].paired
    for d in (base, cur):
        d["settings"] = {"session": "s1"}
        d["results"][0]["sample_rounds"] = [0, 0, 0, 1, 1, 1, 2, 2]
    v = compare_results(base, cur)[0]
    assert v.paired and v.n == (8, 8) and v.rounds == 3 and v.verdict == "regression"


# --- comparing files --------------------------------------------------------------------------------------

def test_compare_results_ids_metrics_and_thresholds():
    base = doc({"python a": runs(3, 1.0, 0.005, 0.01, 1), "c b": runs(3, 1.0, 0.005, 0.01, 2), "gone": [1.0, 1.0]})
    cur = doc({"python a": runs(2, 1.08, 0.005, 0.01, 3), "c b": runs(2, 1.08, 0.005, 0.01, 4), "new": [1.0, 1.0]})
    verdicts = {v.id: v for v in compare_results(base, cur)}
    assert verdicts["python a"].verdict == verdicts["c b"].verdict == "regression"
    assert verdicts["python a"].metric == "cpu" and verdicts["python a"].n == (3, 2)
    assert (verdicts["gone"].verdict, verdicts["new"].verdict) == ("only in base", "only in current")
    verdicts = {v.id: v for v in compare_results(base, cur, thresholds=["5%", "python *=10%"])}
    assert verdicts["python a"].verdict != "regression" and verdicts["python a"].threshold == 0.1
    assert verdicts["c b"].verdict == "regression"
    cur["results"][1]["threshold"] = 0.2           # a threshold the matrix recorded with the result
    assert {v.id: v for v in compare_results(base, cur)}["c b"].verdict != "regression"


def test_metric_auto_uses_wall_time_for_several_threads_or_missing_cpu_samples():
    assert compare_results(doc({"a": [1.0, 2.0]}, threads=2), doc({"a": [1.0, 2.0]}, threads=2))[0].metric == "wall"
    assert compare_results(doc({"a": [1.0, 2.0]}, cpu=False), doc({"a": [1.0, 2.0]}))[0].metric == "wall"
    with pytest.raises(UserError, match="no cpu_samples_ms"):
        compare_results(doc({"a": [1.0, 2.0]}, cpu=False), doc({"a": [1.0, 2.0]}), metric="cpu")


def test_compare_errors():
    with pytest.raises(UserError, match="no benchmark in common"):
        compare_results(doc({"a": [1.0, 2.0]}), doc({"b": [1.0, 2.0]}))
    with pytest.raises(UserError, match="--threshold"):
        compare_results(doc({"a": [1.0, 2.0]}), doc({"a": [1.0, 2.0]}), thresholds=["x=abc"])
    with pytest.raises(UserError, match="--metric"):
        compare_results(doc({"a": [1.0, 2.0]}), doc({"a": [1.0, 2.0]}), metric="fastest")


def test_compare_cli_exit_codes_markdown_and_machine_warning(tmp_path):
    base, one, same, slow = (tmp_path / f"{n}.json" for n in ("base", "one", "same", "slow"))
    base.write_text(json.dumps(doc({"python x": runs(3, 1.0, 0.003, 0.01, 1)})))
    one.write_text(json.dumps(doc({"python x": noisy(15, 1.0, 0.01, 1)})))
    same.write_text(json.dumps(doc({"python x": runs(2, 1.0, 0.003, 0.01, 2)})))
    slow.write_text(json.dumps(doc({"python x": runs(2, 1.2, 0.003, 0.01, 3)}, model="Other CPU", cpus=64,
                                   python="3.12.1")))
    r = cli("compare", base, same)
    assert r.returncode == 0 and "no change" in r.stdout and "WARNING" not in r.stderr and "3+2 runs" in r.stdout
    r = cli("compare", one, one.with_name("one.json"), "--history", tmp_path / "none.json")
    assert r.returncode == 0 and "inconclusive" in r.stdout and "benchmark.py ab" in r.stderr
    # an interleaved (ab) pair whose rounds disagree: the advice is more rounds, not ab
    paired = []
    for name, shifts in (("pbase", [1, 1, 1]), ("pcur", [0.92, 1.0, 1.08])):
        d = doc({"python x": [shift * x for shift in shifts for x in (1.0, 1.01, 0.99, 1.0)]})
        d["settings"] = {"session": "one-ab-run"}
        d["results"][0]["sample_rounds"] = [r for r in range(3) for _ in range(4)]
        paired.append(tmp_path / f"{name}.json")
        paired[-1].write_text(json.dumps(d))
    r = cli("compare", *paired)
    assert r.returncode == 0 and "inconclusive" in r.stdout and "--rounds" in r.stderr and "ab --base" not in r.stderr
    md = tmp_path / "out" / "cmp.md"
    r = cli("compare", base, slow, "--md", md)
    assert r.returncode == 1 and "REGRESSION" in r.stdout
    assert "DIFFERENT MACHINES" in r.stderr and "'Test CPU' vs 'Other CPU'" in r.stderr
    assert "DIFFERENT PYTHON BUILDS" in r.stderr and "'3.11.7' vs '3.12.1'" in r.stderr
    text = md.read_text()
    assert "**1 regression**" in text and "| `python x` | cpu |" in text and "DIFFERENT MACHINES" in text
    assert "```mermaid\nxychart-beta" in text and 'x-axis ["python x"]' in text
    assert cli("compare", base, slow, "--no-fail").returncode == 0
    r = cli("compare", base, slow, "--threshold", "5")
    assert r.returncode == 2 and "would be 500%" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"results": []}', "no 'schema' key"),
    ('{"schema": "microgpt-lab/benchmark/0", "results": []}', "has schema"),
    ('{"schema": "microgpt-lab/benchmark/1", "results": [{"id": "a", "samples_ms": ["x"]}]}', "list of numbers"),
])
def test_compare_cli_bad_files_are_one_line_errors(tmp_path, content, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(doc({"a": [1.0, 2.0]})))
    if content is not None:
        bad.write_text(content)
    r = cli("compare", good, bad)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_pytest_benchmark_json_is_readable_by_compare(tmp_path):
    out = tmp_path / "kernels.json"
    r = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "benchmarks" / "test_kernels.py"), "-q", "-k",
                        "train_step or logits", f"--benchmark-json={out}", "--benchmark-min-rounds=3",
                        "--benchmark-max-time=0.005", "--benchmark-timer=time.process_time", "-p", "no:cacheprovider"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    loaded = gate_results.load_results(out)
    assert any("train_step" in x["id"] for x in loaded["results"])
    r = cli("compare", out, out)
    assert r.returncode == 0 and "test_kernel[" in r.stdout and "process_time" in r.stdout


# --- measuring ------------------------------------------------------------------------------------------

def test_time_engine_records_cpu_time_next_to_wall_time():
    from engines import load_engine
    cfg, _ = make_setup(block_size=8)
    t = time_engine(load_engine("c"), cfg, encode_names(read_names(64), 8), batch_size=2, samples=3, min_sample_s=0.01)
    assert len(t.cpu_samples_ms) == len(t.samples_ms) == 3 and all(x > 0 for x in t.cpu_samples_ms)
    assert t.to_dict()["cpu_ms_per_step"] == t.cpu_ms_per_step


def test_matrix_expansion_and_errors(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"m": {"groups": [{"engines": "*", "exclude": ["scalar"], "configs": ["C16L1H4"]}],
                                      "left_out": {"scalar": "too slow"}},
                                "bad": {"groups": [{"engines": ["c"], "configs": ["16x1"]}]}}))
    settings, cases, left_out = gate_matrix.load_matrix("m", path)
    from engines import ENGINES
    assert [c.engine for c in cases] == [e for e in ENGINES if e != "scalar"]
    assert cases[0].id == "python C16L1H4 b1 f64 t1" and settings["rounds"] == 3
    assert left_out == [{"engine": "scalar", "reason": "too slow"}]
    assert Case("c", gate_matrix.parse_config("C32L2H4T8-relu"), 8, "float32", 2).id == "c C32L2H4T8-relu b8 f32 t2"
    with pytest.raises(UserError, match="bad config"):
        gate_matrix.load_matrix("bad", path)
    with pytest.raises(UserError, match="no matrix 'nope'"):
        gate_matrix.load_matrix("nope", path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real ``run`` of a tiny matrix (python and c engines, 2 rounds)."""
    tmp = tmp_path_factory.mktemp("run")
    (tmp / "matrix.json").write_text(json.dumps(TINY_MATRIX))
    (tmp / "names.txt").write_text("\n".join(read_names(200)) + "\n")
    out = tmp / "results.json"
    r = cli("run", "--matrix", "tiny", "--matrix-file", tmp / "matrix.json", "--data", tmp / "names.txt", "-o", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, out, r


def test_run_writes_every_sample_and_the_environment(tiny_run):
    tmp, out, r = tiny_run
    d = gate_results.load_results(out)
    ids = {x["id"]: x for x in d["results"]}
    assert set(ids) == {"python C8L1H2T8 b2 f64 t1", "c C8L1H2T8 b4 f32 t1", "c C8L1H2T8 b4 f32 t2"}
    for x in ids.values():
        assert len(x["samples_ms"]) == len(x["cpu_samples_ms"]) == 6 and x["sample_rounds"] == [0] * 3 + [1] * 3
        assert x["tokens_per_s"] > 0 and x["gflops"] > 0 and x["flops_per_step"] > 0
    skipped = {s["id"]: s["reason"] for s in d["skipped"]}
    assert skipped["python C8L1H2T8 b2 f32 t1"].startswith("ValueError: ")        # the engine refuses float32
    env = d["environment"]
    assert env["machine"]["cpus"] >= 1 and env["python"]["version"] and env["git"]["commit"]
    assert isinstance(env["git"]["dirty"], bool) and "numpy" in env["packages"] and "cc" in env["compiler"]
    assert d["settings"]["data"]["sha256"] and "c C8L1H2T8 b4 f32 t2" in r.stdout
    assert len(d["settings"]["load_average"]) == 2
    assert cli("compare", out, out).returncode == 0


def test_roofline_reads_run_results(tiny_run):
    import roofline
    records = roofline.load_results(str(tiny_run[1]))
    assert {r["engine"] for r in records} == {"python", "c"}


def test_update_baseline_is_atomic_and_keeps_history(tiny_run, tmp_path):
    _, out, _ = tiny_run
    baseline, history = tmp_path / "b" / "baseline.json", tmp_path / "b" / "history.json"
    dirty = json.loads(out.read_text())
    dirty["environment"]["git"]["dirty"] = True
    (tmp_path / "dirty.json").write_text(json.dumps(dirty))
    r = cli("update-baseline", tmp_path / "dirty.json", "--baseline", baseline, "--history", history)
    assert r.returncode == 2 and "uncommitted changes" in r.stderr and "--force" in r.stderr and not baseline.exists()
    for _ in range(2):
        r = cli("update-baseline", out, "--baseline", baseline, "--history", history, "--force")
        assert r.returncode == 0, r.stderr
    assert json.loads(baseline.read_text()) == json.loads(out.read_text())
    entries = json.loads(history.read_text())["entries"]
    assert len(entries) == 2 and entries[0]["benchmarks"]["c C8L1H2T8 b4 f32 t1"]["cpu_ms_per_step"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    before = baseline.read_bytes()
    r = cli("update-baseline", bad, "--baseline", baseline, "--history", history)
    assert r.returncode == 2 and baseline.read_bytes() == before
    assert not [p for p in baseline.parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_run_arguments(tmp_path):
    r = cli("run", "--matrix", "nope")
    assert r.returncode == 2 and "no matrix 'nope'" in r.stderr
    r = cli("run", "--quick", "--engines", "warp-drive", "--data", REPO / "README.md")
    assert r.returncode == 2 and "warp-drive" in r.stderr
    r = cli("run", "--quick", "--rounds", "0", "--data", REPO / "README.md")
    assert r.returncode == 2 and "--rounds" in r.stderr
    r = cli("run", "--quick", "--data", tmp_path / "missing.txt")
    assert r.returncode == 2 and "is not a file" in r.stderr


# --- ab -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    """A copy of this checkout (tracked files and built extensions) as a git repository of two commits:
    the first without benchmark.py, the second with it."""
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    from importlib.machinery import EXTENSION_SUFFIXES
    files += [str(p.relative_to(REPO)) for d in (REPO, REPO / "microgpt", REPO / "engines") for p in d.iterdir()
              if any(p.name.endswith(s) for s in EXTENSION_SUFFIXES)]
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / ".gitignore").write_text("*.so\n*.pyd\nout/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *a: subprocess.run(["git", *a], cwd=root, env=env, check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A", ".")
    git("rm", "-q", "--cached", "benchmark.py")
    git("commit", "-q", "-m", "without benchmark.py")
    git("add", "benchmark.py")
    git("commit", "-q", "-m", "with benchmark.py")
    (root / "tiny.json").write_text(json.dumps(TINY_MATRIX))
    (root / "names.txt").write_text("\n".join(read_names(200)) + "\n")
    return root


def ab(root, *args):
    return subprocess.run([sys.executable, str(root / "benchmark.py"), "ab", "--matrix", "tiny", "--matrix-file",
                           root / "tiny.json", "--data", root / "names.txt", *map(str, args)], cwd=root,
                          capture_output=True, text=True, timeout=600)


def test_ab_interleaves_base_and_head_and_compares(scratch_repo):
    out = scratch_repo / "out" / "ab"
    r = ab(scratch_repo, "--base", "HEAD", "--engines", "c", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reuses this checkout's builds" in r.stderr
    rounds = [line for line in r.stderr.splitlines() if "] round " in line]
    assert len(rounds) == 4 and all("c: base head, 1 case(s) on CPU " in line for line in rounds)  # 1 and 2 threads
    assert rounds[0].startswith("[1/4] ") and "ETA" in rounds[0] and rounds[-1].startswith("[4/4] ")
    base, head = (gate_results.load_results(out / f"{s}.json") for s in ("base", "head"))
    assert {x["id"] for x in base["results"]} == {x["id"] for x in head["results"]} == {
        "c C8L1H2T8 b4 f32 t1", "c C8L1H2T8 b4 f32 t2"}
    assert base["settings"]["session"] == head["settings"]["session"]
    for b, h in zip(base["results"], head["results"]):       # the same batches, sample for sample
        assert b["steps_per_sample"] == h["steps_per_sample"] and b["sample_rounds"] == h["sample_rounds"]
        assert b["tokens_per_step"] == h["tokens_per_step"]
    assert "2 rounds, 6 pairs" in r.stdout and "t test on the rounds" in (out / "comparison.md").read_text()
    assert (out / "distributions.png").stat().st_size > 0
    assert "base" not in subprocess.run(["git", "worktree", "list"], cwd=scratch_repo, capture_output=True,
                                        text=True).stdout.split("\n", 1)[-1]


def test_ab_counts_instructions_of_both_sides(scratch_repo):
    out = scratch_repo / "out" / "ab-instructions"
    r = ab(scratch_repo, "--base", "HEAD", "--matrix", "counted", "--metric", "instructions", "--out", out)
    if not shutil.which("valgrind") and sys.platform == "darwin":      # no Valgrind for macOS on arm64
        assert r.returncode == 2 and "needs Valgrind" in r.stderr
        return
    assert r.returncode == 0, r.stderr[-3000:]
    base, head = (gate_results.load_results(out / f"{s}.json") for s in ("base", "head"))
    assert [x["instruction_samples"] for x in base["results"]] == [x["instruction_samples"] for x in head["results"]]
    assert "instructions" in r.stdout and "no change" in r.stdout and "xychart-beta" in (out / "comparison.md").read_text()


def test_ab_errors(scratch_repo):
    r = ab(scratch_repo, "--base", "no-such-branch")
    assert r.returncode == 2 and "is not a commit" in r.stderr
    r = ab(scratch_repo, "--base", "HEAD~1")
    assert r.returncode == 2 and "has no benchmark.py" in r.stderr


@pytest.mark.parametrize("group,message", [
    ({"engines": ["c"], "dtypes": ["float16"]}, "dtypes must be a list of float64, float32"),
    ({"engines": ["c"], "batch_sizes": [0]}, "batch_sizes must be a non-empty list of integers >= 1"),
    ({"engines": ["c"], "threads": "2"}, "threads must be"),
    ({"engine": ["c"]}, "unknown key(s) engine"),
    ({"engines": "c"}, 'engines must be "*" or a list'),
    ({"engines": ["c"], "threshold": -1}, "threshold must be a fraction"),
])
def test_malformed_matrix_groups_are_one_line_errors(tmp_path, group, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"m": {"groups": [group]}}))
    with pytest.raises(UserError, match=re.escape(message)):
        gate_matrix.load_matrix("m", path)


def test_compare_warns_when_a_separate_run_shared_a_busy_machine():
    base, cur = doc({"a": [1.0, 2.0]}), doc({"a": [1.0, 2.0]})
    base["settings"] = {"session": "s1", "load_average": [0.5, 3.5]}
    cur["settings"] = {"session": "s2", "load_average": [0.5, 1.5]}
    warnings = gate_compare.comparison_warnings(base, cur)
    assert len(warnings) == 1 and "base run shared a busy machine" in warnings[0] and "3.5 on 2 CPUs" in warnings[0]
    cur["settings"]["session"] = "s1"                  # interleaved pairs: the load cancels, no warning
    assert gate_compare.comparison_warnings(base, cur) == []


def test_a_baseline_of_several_runs_keeps_them_apart_and_feeds_the_history():
    docs = []
    for k, center in enumerate((1.0, 1.1, 0.9)):
        d = doc({"python a": noisy(4, center, 0.001, k), "c b": noisy(4, 2 * center, 0.001, 10 + k)})
        d["settings"] = {"session": f"s{k}", "load_average": None}
        d["environment"]["fingerprint"] = "fp"
        docs.append(d)
    merged = gate_results.merge_runs(docs)
    rec = merged["results"][0]
    assert rec["sample_runs"] == [0] * 4 + [1] * 4 + [2] * 4 and len(rec["samples_ms"]) == 12
    assert gate_compare.runs_of(rec, "samples_ms") == [r["results"][0]["samples_ms"] for r in docs]
    assert merged["settings"]["sessions"] == ["s0", "s1", "s2"] and len(merged["runs"]) == 3
    entries = gate_results.history_entries(merged)
    assert [e["session"] for e in entries] == ["s0", "s1", "s2"] and all(e["fingerprint"] == "fp" for e in entries)
    assert entries[1]["benchmarks"]["python a"]["ms_per_step"] == pytest.approx(1.1, rel=0.01)
    # a later single run on the same machine learns the noise from that history: 10% run to run is wide
    cur = doc({"python a": noisy(4, 1.08, 0.001, 99), "c b": noisy(4, 2.16, 0.001, 98)})
    cur["environment"]["fingerprint"] = "fp"
    single = compare_results(docs[0], cur, history=entries)
    assert all(v.verdict == "inconclusive" and v.runs and v.n == (1, 1) and "is wider than the floor" in v.note
               for v in single)
    # the baseline's own runs, also in the history, are not counted twice
    assert all(v.verdict == "inconclusive" and "unknown" in v.note
               for v in compare_results(docs[0], cur, history=entries[:1]))
    elsewhere = [dict(e, fingerprint="other") for e in entries]
    assert "run-to-run noise is unknown" in compare_results(docs[0], cur, history=elsewhere)[0].note


def test_fingerprint_tells_python_builds_apart():
    from benchmarks.gate import environment as env
    here = env.environment()
    assert here["fingerprint"] == env.fingerprint(here) and here["python"]["sys_version"] == sys.version
    assert {"config_args", "compiler", "pgo", "lto", "build"} <= set(here["python"])
    other = json.loads(json.dumps(here))
    other["python"]["config_args"] += " '--enable-optimizations'"
    other["python"]["pgo"] = True
    assert env.fingerprint(other) != here["fingerprint"]
    assert [d.split(":")[0] for d in env.python_differences(here, other)] == ["config_args", "pgo"]
    assert env.machine_differences(here, other) == []
    assert "CPUs; " in env.machine_line(here) and here["machine"]["model"] in env.machine_line(here)


def test_interface_exit_codes_hidden_worker_and_no_matplotlib(tmp_path, monkeypatch, capsys):
    r = cli("--help")
    commands = r.stdout.split("positional arguments:")[1].split("options:")[0]
    assert r.returncode == 0 and "worker" not in commands and "update-baseline" in commands and "Exit status" in r.stdout
    hello = subprocess.run([sys.executable, str(REPO / "benchmark.py"), "worker"], input='{"cmd": "hello"}\n',
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(hello.stdout) == {"protocol": 1}        # what a later revision's ab calls
    # an internal error (a bug, not the user's input) is one line and exit status 3
    monkeypatch.setattr(benchmark, "cmd_compare", lambda args: 1 / 0)
    assert benchmark.main(["compare", "a.json", "b.json"]) == 3
    assert capsys.readouterr().err.startswith("internal error: ZeroDivisionError")
    # compare draws no chart without matplotlib, and says so
    blocker = tmp_path / "no-mpl" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no matplotlib here', name='matplotlib')\n")
    a = tmp_path / "a.json"
    a.write_text(json.dumps(doc({"python x": noisy(6, 1.0, 0.01, 1)})))
    r = cli("compare", a, a, "--charts", tmp_path / "chart", env={"PYTHONPATH": str(blocker.parent)})
    assert r.returncode == 0 and "charts skipped (matplotlib is not installed)" in r.stderr
    assert not list(tmp_path.glob("chart*"))


def test_separate_runs_on_a_busy_machine_are_never_a_regression():
    base = doc({"python a": runs(3, 1.0, 0.005, 0.01, 1)})
    cur = doc({"python a": runs(2, 1.3, 0.005, 0.01, 2)})
    assert compare_results(base, cur)[0].verdict == "regression"
    cur["settings"] = {"session": "s2", "load_average": [4.0, 9.5]}        # 9.5 runnable on 2 CPUs
    v = compare_results(base, cur)[0]
    assert v.verdict == "inconclusive" and "regression by the runs" in v.note and "9.5 on 2 CPUs" in v.note


def test_ab_sides_strictly_take_turns_and_the_leader_alternates_by_round(monkeypatch):
    """Every timed sample follows one of the other side's (a sample after its own side's runs warmer), after
    one untimed turn each; the side that leads swaps every round."""
    from benchmarks.gate import worker as gate_worker
    turns = []

    class FakeWorker:
        def __init__(self, side, cpus=None):
            self.name = side.name

        def call(self, request):
            if request["cmd"] == "setup":
                return {"steps": 2, "vocab_size": 27, "warmup_s": 0.0}
            if request["cmd"] == "sample":
                turns.append(self.name)
                return {"wall_ms": 1.0, "cpu_ms": 1.0, "step_lengths": [[[3], 2]]}
            return {}

        def close(self):
            pass

    monkeypatch.setattr(gate_worker, "WorkerProcess", FakeWorker)
    sides = [gate_worker.Side("base", REPO), gate_worker.Side("head", REPO)]
    case = Case("numpy", (16, 1, 4, 8, "relu2"), 1, "float64", 1)
    for samples in (3, 4):
        turns.clear()
        out = gate_worker.measure(sides, [case], {"rounds": 2, "samples": samples, "warmup": 0,
                                                  "min_sample_s": 0.0}, data="unused")
        per_round = 2 * (1 + samples)            # the untimed turn, then the timed ones
        assert turns[:per_round] == ["base", "head"] * (1 + samples)
        assert turns[per_round:] == ["head", "base"] * (1 + samples)
        assert out["base"]["samples"][case.id]["sample_rounds"] == [0] * samples + [1] * samples

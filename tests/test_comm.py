"""The all-reduce model (microgpt/comm.py): the alpha-beta fit on synthetic data with known parameters, the
JSON cache's bad inputs, and one small real probe over 2 gloo processes on loopback (bounded: a few sizes,
a few repeats, a process-group timeout)."""

import json
import math
import random
import time

import pytest

from microgpt import comm, machine

torch = pytest.importorskip("torch", reason="the all-reduce is torch.distributed's: pip install -e '.[torch]'")

ALPHA, BETA = 40e-6, 0.5e-9          # 40 us per message step, 2 GB/s


def ring(n_bytes, world_size, alpha=ALPHA, beta=BETA):
    return 2 * (world_size - 1) * alpha + 2 * (world_size - 1) / world_size * n_bytes * beta


@pytest.mark.parametrize("world_size", [2, 4, 16])
def test_fit_recovers_known_alpha_and_beta(world_size):
    sizes = comm.message_sizes(64 << 20)
    fit = comm.fit_alpha_beta(sizes, [ring(n, world_size) for n in sizes], world_size)
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=1e-9)
    assert fit["beta_s_per_byte"] == pytest.approx(BETA, rel=1e-9)
    assert fit["max_residual"] < 1e-9
    assert comm.allreduce_seconds(fit, 1 << 20, world_size) == pytest.approx(ring(1 << 20, world_size), rel=1e-9)


def test_fit_of_noisy_medians_is_close_and_reports_the_noise():
    """10% multiplicative noise on each of 5 repeats: the fit on the medians lands within 10% of the truth,
    and its residuals show the noise that is left."""
    rng = random.Random(1)
    sizes = comm.message_sizes(64 << 20)
    medians = [sorted(ring(n, 2) * math.exp(rng.gauss(0, 0.1)) for _ in range(5))[2] for n in sizes]
    fit = comm.fit_alpha_beta(sizes, medians, 2)
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=0.1)
    assert fit["beta_s_per_byte"] == pytest.approx(BETA, rel=0.1)
    assert 0.005 < fit["rms_residual"] < 0.2
    assert len(fit["residuals"]) == len(sizes)


def test_fit_is_weighted_by_relative_error():
    """One slow large message does not drag the latency: an unweighted fit would give alpha far from 40 us."""
    sizes = comm.message_sizes(64 << 20)
    times = [ring(n, 2) for n in sizes]
    times[-1] *= 1.3
    assert comm.fit_alpha_beta(sizes, times, 2)["alpha_s"] == pytest.approx(ALPHA, rel=0.05)


def test_fit_keeps_alpha_and_beta_non_negative():
    sizes = [1000, 2000, 4000]
    fit = comm.fit_alpha_beta(sizes, [1.0, 2.5, 5.5], 2)          # the free line would cross below zero
    assert fit["alpha_s"] == 0 and fit["beta_s_per_byte"] > 0
    fit = comm.fit_alpha_beta(sizes, [3.0, 2.0, 1.5], 2)          # falling times: no bandwidth term
    assert fit["beta_s_per_byte"] == 0 and fit["alpha_s"] > 0


@pytest.mark.parametrize("sizes, times, world_size", [([8], [1e-4], 2), ([8, 8], [1e-4, 1e-4], 2),
                                                      ([8, 16], [1e-4, 0.0], 2), ([8, 16], [1e-4, 2e-4], 1)])
def test_fit_refuses_what_cannot_be_fitted(sizes, times, world_size):
    with pytest.raises(ValueError):
        comm.fit_alpha_beta(sizes, times, world_size)


def test_one_process_does_not_communicate_and_sizes_cover_the_gradients():
    assert comm.allreduce_seconds({"alpha_s": 1.0, "beta_s_per_byte": 1.0}, 1 << 20, 1) == 0
    grads = comm.gradient_sizes()
    assert grads["medium f64"] == 2 * grads["medium f32"] > 6 << 20
    sizes = comm.message_sizes(comm.QUALITIES["full"][0], list(grads.values()))
    assert sizes == sorted(set(sizes)) and sizes[0] == 8 and max(grads.values()) <= sizes[-1]
    assert all(n in sizes for n in grads.values())


# --- the cache ---------------------------------------------------------------------------------------

def synthetic_record(**changes):
    sizes = comm.message_sizes(1 << 20)
    medians = [ring(n, 2) for n in sizes]
    record = {"schema": comm.SCHEMA, "created_unix": time.time(), "created": "now",
              "fingerprint": machine.fingerprint(machine.cpu_info(), machine.caches()), "backend": "gloo",
              "world_size": 2, "device": comm.device_name("gloo"), "torch": torch.__version__, "sizes": sizes,
              "transport": "loopback (one machine)", "quality": "quick",
              "median_s": medians, "quartiles_s": [[t, t] for t in medians], "model": comm.MODEL,
              "fit": comm.fit_alpha_beta(sizes, medians, 2)}
    return {**record, **changes}


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """A private cache directory, and comm.measure replaced by a synthetic record (counting its calls)."""
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(comm, "measure", lambda *a, **k: calls.append(a) or synthetic_record())
    return calls


def test_cache_round_trip_measures_once(measured):
    first = comm.comm_model(2, "gloo", log=lambda m: None)
    path = comm.cache_path("gloo", 2)
    assert path.exists() and path.parent == machine.cache_path().parent        # beside the ceilings
    assert comm.comm_model(2, "gloo", log=lambda m: None)["fit"] == first["fit"]
    assert len(measured) == 1


@pytest.mark.parametrize("content, reason", [
    ('{"schema": 1, "sizes": [8, 16', "unreadable (JSONDecodeError"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps(synthetic_record(created_unix=time.time() - 400 * 86400)), "stale (400 days old"),
    (json.dumps(synthetic_record(fingerprint="0" * 16)), "different machine"),
    (json.dumps(synthetic_record(torch="1.0")), "torch '1.0'"),
    (json.dumps(synthetic_record(world_size=4)), "over 4 processes, not gloo over 2"),
    (json.dumps(synthetic_record(schema=0)), "schema 0"),
    (json.dumps(synthetic_record(median_s=[1e-4])), "bad sizes or median_s"),
    (json.dumps(synthetic_record(fit={"alpha_s": -1, "beta_s_per_byte": 1e-9})), "bad fit"),
    (json.dumps(synthetic_record(fit={"alpha_s": 1e-5, "beta_s_per_byte": 1e-9})), "bad fit residuals"),
    (json.dumps(synthetic_record(quartiles_s=[[1e-4]])), "bad quartiles_s"),
    (json.dumps({k: v for k, v in synthetic_record().items() if k != "transport"}), "missing transport"),
])
def test_a_bad_cache_is_named_in_one_line_and_measured_again(measured, content, reason):
    path = comm.cache_path("gloo", 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    record, why = comm.load(path, "gloo", 2)
    assert record is None and reason in why
    lines = []
    assert comm.comm_model(2, "gloo", log=lines.append)["fit"]["alpha_s"] == pytest.approx(ALPHA)
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0] and "measuring" in lines[0]
    assert len(measured) == 1 and comm.load(path, "gloo", 2)[0] is not None     # replaced atomically


def test_absent_cache_says_not_measured_yet(tmp_path):
    assert comm.load(tmp_path / "comm-gloo-n2.json", "gloo", 2) == (None, "not measured yet")


# --- the real probe: 2 processes over loopback -----------------------------------------------------------

def test_probe_over_two_gloo_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path))
    lines = []
    record = comm.measure(2, "gloo", sizes=[8, 1 << 10, 1 << 20], repeats=3, log=lines.append)
    assert record["sizes"] == [8, 1 << 10, 1 << 20] and record["world_size"] == 2
    assert all(t > 0 for t in record["median_s"])
    assert all(q1 <= t <= q3 for t, (q1, q3) in zip(record["median_s"], record["quartiles_s"]))
    assert len(record["fit"]["residuals"]) == 3
    assert comm.problem(record, "gloo", 2, record["fingerprint"], torch.__version__) is None
    assert "2 gloo processes" in lines[0]


def test_probe_with_a_failing_rank_ends_in_one_line(monkeypatch):
    """A rank that cannot start its process group (a bad backend name) fails the probe with its reason."""
    with pytest.raises(comm.UserError, match="rank 1 failed"):
        comm.run_probe(2, "no-such-backend", [8], 1, 0.001, timeout_s=60, log=lambda m: None)


# --- roofline.py --comm ------------------------------------------------------------------------------------

def test_scaling_rows_split_the_batch_and_add_the_all_reduce():
    import roofline
    record = synthetic_record()
    grad = record["sizes"][5]                       # a measured size: N = 2 takes its median as measured
    compute = {8: 0.008, 4: 0.004, 2: 0.002, 1: 0.001}
    rows = roofline.scaling_rows(compute, grad, record, 8, world_sizes=(1, 2, 4, 8, 16),
                                 measured_steps={1: 0.008, 2: 0.005})
    assert [r["share"] for r in rows] == [8, 4, 2, 1, 1]           # 16 ranks for 8 documents: one each at most
    assert [r["projection"] for r in rows] == [False, False, True, True, True]
    assert rows[1]["allreduce_s"] == record["median_s"][5] and rows[1]["allreduce_source"] == "measured"
    assert rows[2]["allreduce_s"] == pytest.approx(ring(grad, 4))
    for r in rows:
        assert r["step_s"] == pytest.approx(r["compute_s"] + r["allreduce_s"])
        assert r["efficiency"] == pytest.approx(0.008 / (r["world_size"] * r["step_s"]))
    assert rows[1]["measured_efficiency"] == pytest.approx(0.008 / (2 * 0.005))
    # off the measured sizes, N = 2 takes the fitted line, and says so
    assert roofline.scaling_rows(compute, grad + 8, record, 8, world_sizes=(1, 2))[1]["allreduce_source"] == "model"


def test_roofline_comm_prints_measured_and_projected_rows_and_draws_the_chart(tmp_path, names_file):
    from conftest import run_cli
    path = tmp_path / "comm-gloo-n2.json"
    path.write_text(json.dumps(synthetic_record()))
    stem, saved = tmp_path / "comm", tmp_path / "comm-results.json"
    r = run_cli("--comm", "--comm-model-only", "--engines", "c", "--configs", "tiny", "--batch-size", "4",
                "--seconds", "0.02", "--data", names_file, "--chart", stem, "--save-results", saved,
                script="roofline.py", env={"MICROGPT_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "alpha 40 us" in out and "beta 0.5 ns/B" in out and "residuals rms 0%" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line[:3].strip().isdigit()}
    assert set(rows) >= {"1", "2", "4", "64"}
    assert rows["1"].endswith("measured") and "projection" in rows["4"] and "projection" in rows["64"]
    assert "fitted all-reduce" in rows["2"]     # tiny's gradients are not among the synthetic sizes
    assert "timing c C16L1H4T8 on a rank's share: batch 4 (1/3)" in r.stderr          # progress
    assert stem.with_suffix(".png").stat().st_size > 10_000 and stem.with_suffix(".svg").exists()
    bad = run_cli("--comm", "--ops", script="roofline.py", env={"MICROGPT_CACHE": str(tmp_path)})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--comm" in bad.stderr

    # what the chart drew is saved, and benchmark.py publish draws docs/roofline-comm.png from it
    doc = json.loads(saved.read_text())
    assert doc["kind"] == "comm" and doc["record"]["fit"] == synthetic_record()["fit"]
    assert [r["engine"] for r in doc["results"]] == ["c"] and doc["batch_size"] == 4
    readme, results = tmp_path / "README.md", tmp_path / "docs" / "results"
    readme.write_text("no markers\n")
    publish = ("publish", "--readme", readme, "--results-dir", results)
    r = run_cli(*publish, "--record-comm", saved, "--command-line", "python roofline.py --comm ...", script="benchmark.py")
    assert r.returncode == 0 and "chart: docs/roofline-comm.png" in r.stdout, r.stderr
    from benchmarks.gate import report
    assert report.png_stamp(tmp_path / "docs" / "roofline-comm.png")
    assert run_cli(*publish, "--check", script="benchmark.py").returncode == 0
    wrong = run_cli(*publish, "--record-comm", path, "--command-line", "x", script="benchmark.py")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "roofline.py --comm --save-results" in wrong.stderr

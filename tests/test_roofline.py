"""Measured ceilings, their JSON cache, the roofline verdicts and roofline.py end to end.

The ceiling probes run once per session on a tiny sweep (one working set per memory level), so the
whole file takes seconds. Bandwidth comparisons allow 10%: other processes share this machine, and
neighbouring levels (L1/L2 read, L3/DRAM on a busy socket) can be close.
"""

import copy
import itertools
import json
import statistics
import time

import pytest
from conftest import run_cli

import roofline
from microgpt import UserError, machine
from microgpt.config import ModelConfig
from microgpt.flops import step_cost

_ceilings = pytest.importorskip("microgpt._ceilings", reason="build the extension: pip install -e .")
NOISE = 1.1


def tiny_sweep() -> list[int]:
    """One working set per level: half of L1, half of L2, half of L3 but at most 8x L2, and 4x L3 for DRAM.
    A guest VM is told the host's whole L3 (480 MiB on one Xeon here), of which it gets a share: half of
    it is memory, and that "L3" point then measured 7.4 GB/s against DRAM's 11.6 while another process ran."""
    caps = machine.capacities(machine.caches(), 1)
    sizes = [max(16 * 1024, caps[name] // 2) for name in ("L1", "L2", "L3") if name in caps]
    if "L2" in caps and "L3" in caps:
        sizes[2] = min(sizes[2], 8 * caps["L2"])
    return sizes + [4 * max(caps.values())]


@pytest.fixture(scope="module")
def record():
    return machine.measure("quick", threads=[1], sizes=tiny_sweep(), rounds=1)


@pytest.fixture
def cache(tmp_path, monkeypatch, record):
    """A private cache directory holding the session's measurement."""
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path))
    machine.save(record, machine.cache_path())
    return machine.cache_path()


# --- the ceilings ------------------------------------------------------------------------------------

def test_measured_ceilings_are_positive_and_ordered(record):
    for dtype in machine.DTYPES:
        for isa, by_threads in record["compute"][dtype].items():
            assert by_threads["1"] > 0, (dtype, isa)
    # wider vectors are never slower, fp32 packs twice the lanes of fp64
    f64 = record["compute"]["f64"]
    assert f64["scalar"]["1"] <= NOISE * machine.peak(record, "f64")
    assert machine.peak(record, "f32") >= machine.peak(record, "f64") / NOISE
    for kind in machine.KINDS:
        levels = record["levels"][kind]["1"]
        assert list(levels) == list(machine.LEVELS)
        values = list(levels.values())
        assert all(v > 0 for v in values)
        assert all(upper * NOISE >= lower for upper, lower in itertools.pairwise(values)), levels
    assert record["cpu"]["measured_hz"] > 1e8


def test_ceilings_json_round_trips(record, tmp_path):
    path = tmp_path / "sub" / "ceilings.json"
    machine.save(record, path)
    loaded, reason = machine.load(path)
    assert reason is None and loaded == json.loads(json.dumps(record))
    assert [p.name for p in path.parent.iterdir()] == ["ceilings.json"]     # no temp file left behind


def _corrupt(record, how):
    r = copy.deepcopy(record)
    if how == "fingerprint":
        r["fingerprint"] = "0" * 16
    elif how == "stale":
        r["created_unix"] = time.time() - 86400 * (machine.MAX_AGE_DAYS + 1)
    elif how == "schema":
        r["schema"] = machine.SCHEMA + 1
    elif how == "negative":
        r["levels"]["triad"]["1"]["L2"] = -1.0
    elif how == "no compute":
        del r["compute"]
    return json.dumps(r)


@pytest.mark.parametrize("how, reason", [
    ("garbage", "unreadable"), ("list", "not a JSON object"), ("fingerprint", "different CPU"),
    ("stale", "stale"), ("schema", "schema"), ("negative", "bad triad bandwidth"), ("no compute", "missing compute"),
])
def test_bad_or_stale_cache_is_reported_and_remeasured(record, cache, monkeypatch, how, reason):
    text = {"garbage": "{not json", "list": "[1, 2]"}.get(how) or _corrupt(record, how)
    cache.write_text(text)
    remeasured = copy.deepcopy(record)
    monkeypatch.setattr(machine, "measure", lambda quality, log=None: remeasured)
    messages = []
    got = machine.ceilings(log=messages.append)
    assert got is remeasured
    assert len(messages) == 1 and reason in messages[0] and str(cache) in messages[0] and "measuring" in messages[0]
    assert machine.load(cache) == (json.loads(json.dumps(remeasured)), None)      # the cache was rewritten


def test_valid_cache_is_used_without_measuring(cache, monkeypatch):
    monkeypatch.setattr(machine, "measure", lambda *a, **k: pytest.fail("measured despite a valid cache"))
    assert machine.ceilings(log=pytest.fail)["fingerprint"] == machine.fingerprint(machine.cpu_info(), machine.caches())


def test_probe_arguments_are_checked():
    with pytest.raises(ValueError, match="isa must be"):
        _ceilings.peak_flops("sse9", "f64")
    with pytest.raises(ValueError, match="dtype must be"):
        _ceilings.peak_flops("scalar", "f16")
    with pytest.raises(ValueError, match="threads must be"):
        _ceilings.bandwidth("triad", [1 << 16], threads=0)
    with pytest.raises(ValueError, match="sizes must be in"):
        _ceilings.bandwidth("read", [100])
    with pytest.raises(ValueError, match="kind must be"):
        _ceilings.bandwidth("copy", [1 << 16])


def test_plateaus_and_knees_of_a_synthetic_curve():
    KiB, MiB = 1024, 1 << 20
    caps = {"L1": 32 * KiB, "L2": 1 * MiB, "L3": 16 * MiB}
    sizes = machine.sweep_sizes(2, 256 * MiB)
    bw = [400 if s <= 32 * KiB else 200 if s <= MiB else 100 if s <= 16 * MiB else 30 for s in sizes]
    assert machine.plateaus(sizes, bw, caps) == {"L1": 400, "L2": 200, "L3": 100, "DRAM": 30}
    assert machine.knees(sizes, bw) == [32 * KiB, 1 * MiB, 16 * MiB]
    assert machine.sanity_notes({"f64": {"avx2": {"1": 10.0, "2": 11.0}}}, {}) and \
        not machine.sanity_notes({"f64": {"avx2": {"1": 10.0, "2": 19.0}}}, {"triad": {"1": {"L1": 5, "DRAM": 1}}})


def test_working_set_picks_the_level_that_holds_it(record):
    caps = machine.capacities(record["caches"], 1)
    assert machine.level_for(record, caps["L1"] // 2) == "L1"
    assert machine.level_for(record, caps["L1"] * 2) == "L2"
    assert machine.level_for(record, 64 * caps["L3"]) == "DRAM"


# --- kernels of known intensity land where the roofline says ----------------------------------------

def best_of(measure, attempts=3):
    """Other processes only ever slow a probe down: the fastest of a few attempts is the undisturbed one."""
    return max(measure() for _ in range(attempts))


def test_triad_lands_on_its_bandwidth_roof(record):
    size = tiny_sweep()[1]                                            # an L2-sized triad
    bytes_per_s = best_of(lambda: _ceilings.bandwidth("triad", [size], repeats=5, min_bytes=16 << 20)[0])
    verdict = roofline.classify(2 / 24, bytes_per_s * 2 / 24, record, "f64", 1, machine.level_for(record, size))
    assert verdict["verdict"] == "L2-bound" and verdict["roof"] == "L2"       # 1 FMA per 24 bytes
    assert 50 <= verdict["percent"] <= 200


@pytest.mark.parametrize("fmas, where, expected", [(0, "DRAM", "DRAM-bound"), (64, "L1", "compute-bound")])
def test_intensity_probe_lands_on_the_predicted_roof(record, fmas, where, expected):
    caps = machine.capacities(record["caches"], 1)
    size = caps["L1"] // 2 if where == "L1" else 4 * caps["L3"]
    record = copy.deepcopy(record)
    if where == "DRAM":
        # DRAM bandwidth is shared with every other process: measure the roof side by side with the probe
        record["levels"]["triad"]["1"]["DRAM"] = _ceilings.bandwidth("triad", [size], repeats=3)[0]
    flops, intensity = best_of(lambda: _ceilings.intensity_probe(size, fmas, repeats=3, min_bytes=16 << 20))
    assert intensity == (2 * fmas + 1) / 8
    verdict = roofline.classify(intensity, flops, record, "f64", 1, machine.level_for(record, size))
    assert verdict["verdict"] == expected, verdict


# --- roofline.py ---------------------------------------------------------------------------------------

RESULTS = [
    {"engine": "c", "config": {"n_embd": 16, "n_layer": 1, "n_head": 4, "block_size": 16}, "batch_size": 2,
     "dtype": "float64", "threads": 1, "ms_per_step": 0.05, "tokens_per_step": 13, "doc_lengths": [[6, 7]]},
    {"engine": "python", "config": {"n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 16}, "batch_size": 1,
     "dtype": "float64", "threads": 1, "ms_per_step": 40.0, "tokens_per_step": 7},
]


def test_analyse_uses_exact_lengths_or_marks_the_estimate(record):
    exact, estimated = (roofline.analyse(dict(r), record) for r in RESULTS)
    assert exact["exact"] and not estimated["exact"]
    assert exact["flops"] == step_cost(ModelConfig(), [6, 7]).flops
    assert estimated["flops"] == step_cost(ModelConfig(n_embd=32, n_layer=2), [7]).flops
    assert estimated["verdict"] == "overhead-bound"                    # 40 ms for ~1 MFLOP
    assert exact["achieved"] == pytest.approx(exact["flops"] / 5e-5)


def test_a_data_parallel_record_is_held_to_the_roofs_of_its_cores(record):
    """benchmark.py's ``... r2`` cases time one step of the whole batch on 2 processes: 2 cores' roofs."""
    one, two = roofline.analyse(dict(RESULTS[0]), record), roofline.analyse({**RESULTS[0], "ranks": 2}, record)
    assert (one["engine"], one["threads"], two["engine"], two["threads"]) == ("c", 1, "c r2", 2)
    assert two["roof_flops"] == roofline.analyse({**RESULTS[0], "threads": 2}, record)["roof_flops"]
    assert roofline.cores({**RESULTS[0], "threads": 2, "ranks": 2}) == 4


def test_roofline_reads_results_and_writes_the_chart(cache, tmp_path, capsys):
    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"results": RESULTS}))
    stem = tmp_path / "charts" / "roofline"
    assert roofline.main(["--results", str(results), "--chart", str(stem)]) == 0
    out = capsys.readouterr().out
    assert "C16L1H4" in out and "C32L2H4" in out and "~" in out and "overhead-bound" in out
    for suffix in (".svg", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 1000


def test_roofline_times_the_registered_engines(cache, names_file, tmp_path, capsys):
    saved = tmp_path / "timings.json"
    assert roofline.main(["--engines", "python", "--data", str(names_file), "--seconds", "0.05", "--chart", "",
                          "--save-results", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "python  C16L1H4" in out
    (timed,) = roofline.load_results(str(saved))
    assert timed["engine"] == "python" and len(timed["doc_lengths"]) >= 3


def test_any_model_shape_with_the_trainers_flags(names_file, capsys):
    """The trainer's shape flags, underscore spellings included, put one's own model on the roofline."""
    assert roofline.main(["--ops", "--data", str(names_file), "--n_embd", "48", "--n-layer", "3", "--n_head", "6",
                          "--block-size", "12", "--batch_size", "2"]) == 0
    out = capsys.readouterr().out
    assert "per-op cost of one step: C48L3H6T12, 2 docs" in out
    with pytest.raises(SystemExit):
        roofline.main(["--help"])
    assert "embedding width (default: 16)" in capsys.readouterr().out    # the trainer's own flag and help


def test_ops_table_lists_every_op_and_the_total(names_file, capsys):
    assert roofline.main(["--ops", "--data", str(names_file), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    for name in ("embedding", "attn scores", "mlp fc1", "lm_head", "cross-entropy", "adam", "total", "working set"):
        assert name in out


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"), ("[]", "non-empty list"), ('[{"engine": "c"}]', "missing"),
    (json.dumps([{**RESULTS[0], "dtype": "float16"}]), "dtype must be"),
    (json.dumps([{**RESULTS[0], "ms_per_step": 0}]), "ms_per_step must be"),
    (json.dumps([{**RESULTS[0], "config": {"n_embd": 15}}]), "n-head must divide"),
    (json.dumps([{**RESULTS[0], "doc_lengths": [[]]}]), "doc_lengths"),
])
def test_bad_results_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        roofline.load_results(str(path))


def test_cli_errors_are_one_line(cache, tmp_path):
    r = run_cli("--results", tmp_path / "missing.json", script="roofline.py",
                env={"MICROGPT_CACHE": str(cache.parent)})
    assert r.returncode == 2 and r.stderr.startswith("error: --results ") and "missing.json does not exist" in r.stderr and "Traceback" not in r.stderr


# --- the fused C step phase by phase (--ops --engine c) -------------------------------------------------

PROFILE_ARGS = ["--ops", "--engine", "c", "--n-embd", "16", "--n-layer", "2", "--n-head", "4", "--block-size", "8",
                "--seconds", "0.02"]


@pytest.fixture(scope="module")
def profile_cache(tmp_path_factory, record):
    """A private cache holding the session's ceilings and the profiled fastops (compiled here once, ~20 s)."""
    pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
    path = tmp_path_factory.mktemp("profile-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROGPT_CACHE", str(path))
        module = roofline.load_profiled_fastops(log=lambda message: None)
        machine.save(record, machine.cache_path())
    return path, module


def test_phase_verdicts(record):
    peak, l2 = machine.peak(record, "f64"), machine.bandwidth(record, "L2")
    high = 4 * peak / l2                                          # compute binds above the ridge
    assert roofline.phase_verdict(high, 0.6 * peak, record, "f64", 1, "L2")["verdict"] == "compute-bound"
    low = peak / l2 / 8                                           # L2 binds below it
    memory = roofline.phase_verdict(low, 0.3 * low * l2, record, "f64", 1, "L2")
    assert memory["verdict"] == "L2-bound" and memory["roof"] == "L2" and memory["percent"] == pytest.approx(30)
    slow = roofline.phase_verdict(low, 0.2 * low * l2, record, "f64", 1, "L2")
    assert slow["verdict"] == "latency-bound" and slow["roof"] == "L2"          # under LATENCY_FRACTION
    # faster than the step's level can feed it: the data came from a closer level. On set bandwidths, as this
    # is the rule, not the machine (under ASan the measured L2 comes within 1.3x of L3)
    fixed = copy.deepcopy(record)
    fixed["levels"]["triad"] = {"1": {"L1": 400e9, "L2": 100e9, "L3": 30e9, "DRAM": 10e9}}
    closer = roofline.phase_verdict(0.01, 0.01 * 1.5 * 30e9, fixed, "f64", 1, "L3")
    assert closer["roof"] == "L2" and closer["percent"] == pytest.approx(45)
    near = roofline.phase_verdict(0.01, 0.01 * 1.1 * 30e9, fixed, "f64", 1, "L3")   # within the triad's margin
    assert near["roof"] == "L3" and near["verdict"] == "L3-bound" and near["percent"] == pytest.approx(110)
    assert roofline.phase_verdict(high, 0.6 * peak, record, "f64", 1, "L2", isa="avx2")["roof"] in \
        ("compute avx2", "compute")


def _sample(cfg, scale, lengths, steps=2):
    """A synthetic profile sample: every phase's seconds per step proportional to its FLOPs."""
    costs = roofline.mean_phase_costs(cfg, lengths, 8, 64)
    seconds = {name: scale * c.flops / 1e10 for name, c in costs.items()}
    return {"step_s": sum(seconds.values()) + scale * 1e-6, "lengths": lengths, "seconds": seconds,
            "calls": {name: float(c.flops > 0) for name, c in costs.items()}}


def test_analyse_phases_takes_each_phase_at_its_fastest_sample(record):
    cfg = ModelConfig(n_layer=2)
    lengths = [[5, 7], [6, 6]]
    run = {"isa": None, "steps_per_sample": 2,
           "samples": [_sample(cfg, 3.0, lengths), _sample(cfg, 1.0, lengths), _sample(cfg, 2.0, lengths)]}
    a = roofline.analyse_phases(run, cfg, "float64", 1, record, 64)
    rows = {r["phase"]: r for r in a["rows"]}
    assert list(rows) == ["embed", "linear_forward", "attention", "norm_act", "cross_entropy", "linear_backward",
                          "outside phases", "step"]                       # adam: no pass of its own here
    assert all(r["achieved"] == pytest.approx(1e10) for name, r in rows.items() if name not in ("outside phases",
                                                                                                "step"))
    assert rows["outside phases"]["seconds"] == pytest.approx(1e-6)
    assert sum(r["seconds"] for n, r in rows.items() if n != "step") == pytest.approx(rows["step"]["seconds"])
    assert sum(r["share"] for n, r in rows.items() if n != "step") == pytest.approx(100)
    assert rows["step"]["flops"] == pytest.approx(statistics.fmean(step_cost(cfg, l).flops for l in lengths))
    assert a["fused"] == 1 and a["tokens"] == 12
    assert a["level"] == machine.level_for(record, max(step_cost(cfg, l).working_set_bytes for l in lengths))


def test_profile_counts_match_the_phase_model(profile_cache, names_file):
    """The profile's calls per step are where fastops/model.h puts each PROFILE_LAP, which phase_costs mirrors."""
    _, module = profile_cache
    from microgpt.tokenizers import build_tokenizer, wrap
    texts = roofline.load_texts([str(names_file)])
    tok = build_tokenizer("char", texts, texts)
    cfg = ModelConfig(n_embd=16, n_layer=2, n_head=4, block_size=8, vocab_size=tok.vocab_size)
    docs = [wrap(tok, t, cfg.block_size) for t in texts]
    run = roofline.profile_phases(roofline.profiled_engine(module), cfg, docs, 3, "float64", 1, 0.01)
    L = cfg.n_layer
    for sample in run["samples"]:
        assert sample["calls"] == {"embed": 2, "linear_forward": 4 * L + 1, "attention": 2 * L, "norm_act": 6 * L + 1,
                                   "cross_entropy": 1, "linear_backward": 4 * L + 1, "adam": 0}
        assert 0 < sum(sample["seconds"].values()) <= sample["step_s"]
        assert all(len(lengths) == 3 for lengths in sample["lengths"])
    assert run["isa"] in module.available_isas()


def test_ops_engine_c_profiles_each_phase_and_charts_it(profile_cache, names_file, tmp_path, monkeypatch, capsys):
    path, module = profile_cache
    monkeypatch.setenv("MICROGPT_CACHE", str(path))
    stem = tmp_path / "charts" / "phases"
    isas = module.available_isas()
    assert roofline.main([*PROFILE_ARGS, "--data", str(names_file), "--batch-size", "2", "--isa", "all",
                          "--chart", str(stem)]) == 0
    out = capsys.readouterr().out
    for isa in isas:
        assert f"phases of the fused C step: c[{isa}] C16L2H4T8, batch 2, float64" in out
    table = out[out.index("phases of the fused C step"):]
    for phase in ("embed", "linear_forward", "attention", "norm_act", "cross_entropy", "linear_backward",
                  "outside phases", "step"):
        assert f"\n{phase} " in table, phase
    assert "\nadam " not in table                                 # no clipping: Adam runs inside the backward pass
    assert any(v in table for v in ("compute-bound", "-bound", "latency-bound"))
    for suffix in (".svg", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 1000


def test_analytic_ops_lists_the_phases(names_file, capsys):
    assert roofline.main(["--ops", "--data", str(names_file), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "phases of the fused C engine" in out and "\nlinear_backward " in out


@pytest.mark.parametrize("args, message", [
    (["--ops", "--engine", "python"], "only the fused C step has a per-phase profile"),
    (["--engine", "c"], "with --ops"),
    (["--ops", "--engine", "c", "--results", "x.json"], "--results"),
    (["--ops", "--engine", "c", "--isa", "vax"], "--isa vax is not available"),
    (["--ops", "--engine", "c", "--n-embd", "15"], "--n-head must divide --n-embd"),
    (["--ops", "--n-embd", "32", "--configs", "small"], "drop --configs"),
])
def test_profile_cli_errors_are_one_line(tmp_path, args, message):
    r = run_cli(*args, script="roofline.py", env={"MICROGPT_CACHE": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_profile_without_a_compiler_is_one_line(tmp_path, names_file):
    pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
    r = run_cli(*PROFILE_ARGS, "--data", names_file, script="roofline.py",
                env={"MICROGPT_CACHE": str(tmp_path), "CC": str(tmp_path / "no-such-cc")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no C compiler" in r.stderr, r.stderr

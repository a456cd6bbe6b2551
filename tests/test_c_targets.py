"""benchmarks/c_targets.py: the C engine's speed targets judged on engine_table rows written here (no timing)."""

import json

import pytest
from conftest import run_cli

import roofline
from benchmarks import c_targets
from microgpt.config import STANDARD_CONFIGS, ModelConfig

PEAK = 50e9
CEILINGS = {"compute": {"f64": {"avx2": {"1": PEAK}, "avx512": {"1": 2 * PEAK}, "scalar": {"1": PEAK / 16}},
                        "f32": {"avx2": {"1": 2 * PEAK}, "scalar": {"1": PEAK / 8}}},
            "levels": {"triad": {"1": {"L1": 5e11, "L2": 1e11, "L3": 3e10, "DRAM": 1e10}}}, "caches": []}


def row(engine, config, batch, dtype, ms, isa=None, threads=1, **extra):
    c, l, h, b = STANDARD_CONFIGS[config]
    cfg = ModelConfig(n_embd=c, n_layer=l, n_head=h, block_size=b).to_dict()
    return {"engine": engine, "isa": isa, "config": cfg, "config_name": config, "batch_size": batch, "dtype": dtype,
            "threads": threads, "ms_per_step": ms, "cpu_ms_per_step": ms, "tokens_per_step": 7.0 * batch,
            "doc_lengths": [[7] * batch], **extra}


def ms_at_peak_fraction(fraction, dtype="float64"):
    """The step time of c[avx2] medium b32 that is ``fraction`` of the AVX2 peak (FLOPs of 32 7-token docs)."""
    flops = roofline.analyse_cost(row("c", "medium", 32, dtype, 1.0)).flops
    return flops / (fraction * PEAK) * 1e3


def passing_runs():
    """Two runs, float64 and float32, in which every target holds."""
    f64, f32 = [], []
    for config in ("tiny", "medium"):
        for batch in (1, 32):
            base = ms_at_peak_fraction(0.7) * (batch / 32) * (1 if config == "medium" else 0.01)
            for dtype, rows, scale in (("float64", f64, 1.0), ("float32", f32, 0.5)):
                t = base * scale
                rows += [row("c", config, batch, dtype, t / 1.2, "avx512"), row("c", config, batch, dtype, t, "avx2"),
                         row("c", config, batch, dtype, 2 * t, "sse"), row("numpy", config, batch, dtype, 3 * t),
                         row("torch", config, batch, dtype, 4 * t)]
    return [f64, f32]


def verdicts(checks):
    return {(c.target, c.cell): c.ok for c in checks}


def test_every_target_holds_on_rows_that_meet_them():
    checks, unraced = c_targets.check_all(passing_runs(), lambda: CEILINGS, "avx2")
    assert all(c.ok for c in checks), c_targets.report(checks)
    targets = {c.target for c in checks}
    assert targets == {"fastest", "peak", "f32", "avx2/avx512", "sse/avx2", "tiny"}
    # a fastest check per c row that meets peers of its ISA or narrower (the frameworks ran this CPU's best,
    # AVX2): avx512 and avx2 x 2 configs x 2 batches x 2 dtypes; the 8 c[sse] rows wait for a capped run
    assert sum(c.target == "fastest" for c in checks) == 16 and unraced == 8
    tiny_us = ms_at_peak_fraction(0.7) / 32 * 0.01 * 0.5 * 1e3    # passing_runs' tiny b1 float32 avx2 row
    assert next(c for c in checks if c.target == "tiny").measured == f"{tiny_us:.3g} us"


def test_a_framework_faster_than_one_c_row_is_a_miss_in_that_cell_only():
    runs = passing_runs()
    runs[0].append(row("jax", "medium", 32, "float64", ms_at_peak_fraction(0.7) * 0.99))
    v = verdicts(c_targets.check_all(runs, lambda: CEILINGS, "avx2")[0])
    assert v[("fastest", "c[avx2] medium b32 f64")] is False and ("fastest", "c[sse] medium b32 f64") not in v
    assert v[("fastest", "c[avx512] medium b32 f64")] is True and v[("fastest", "c[avx2] medium b1 f64")] is True


def test_yardsticks_and_the_ops_rung_are_not_the_c_engines_competition():
    runs = passing_runs()
    runs[0] += [row("numpy-yardstick", "tiny", 1, "float64", 1e-6, yardstick=True),
                row("c-ops", "tiny", 1, "float64", 1e-6)]
    assert all(c.ok for c in c_targets.check_all(runs, lambda: CEILINGS, "avx2")[0])


def test_frameworks_are_compared_within_their_own_run():
    """A framework row of another file (another run, another machine state) is not in the race."""
    runs = passing_runs() + [[row("torch", "tiny", 1, "float64", 1e-6)]]
    assert all(c.ok for c in c_targets.check_all(runs, lambda: CEILINGS, "avx2")[0])


def test_a_forced_narrow_c_row_races_only_peers_held_to_its_isa():
    """On an AVX-512 CPU, c[avx2] against torch's AVX-512 kernels is a machine that does not exist."""
    torch_avx512 = row("torch", "large", 32, "float32", 45.0)
    c_avx2, c_avx512 = row("c", "large", 32, "float32", 52.0, "avx2"), row("c", "large", 32, "float32", 35.0, "avx512")
    checks, unraced = c_targets.fastest_checks([[c_avx512, c_avx2, torch_avx512]], native="avx512")
    assert verdicts(checks) == {("fastest", "c[avx512] large b32 f32"): True} and unraced == 1
    capped = [c_avx2, {**torch_avx512, "frameworks_isa": "avx2"}, row("jax", "large", 32, "float32", 60.0)]
    checks, unraced = c_targets.fastest_checks([capped], native="avx512")
    assert verdicts(checks) == {("fastest", "c[avx2] large b32 f32"): False} and unraced == 0
    assert checks[0].needs == "< torch 45 ms"
    # rows without the field ran the CPU's best: on an AVX2 CPU, c[avx2] races them all
    checks, _ = c_targets.fastest_checks([[c_avx2, torch_avx512]], native="avx2")
    assert verdicts(checks) == {("fastest", "c[avx2] large b32 f32"): False}
    assert "1 c rows not raced" in c_targets.report(*c_targets.check_all([[c_avx2, torch_avx512]], lambda: CEILINGS,
                                                                       "avx512"))


@pytest.mark.parametrize("fraction, holds", [(0.61, True), (0.59, False)])
def test_the_avx2_peak_target_is_sixty_percent_of_the_measured_peak(fraction, holds):
    f64 = [row("c", "medium", 32, "float64", ms_at_peak_fraction(fraction), "avx2")]
    check = c_targets.peak_check(f64, lambda: CEILINGS)
    assert check.ok is holds and check.measured.startswith(f"{round(100 * fraction)}% of 50 GFLOP/s")


def test_isa_ratios_have_their_limits_by_batch():
    rows = [row("c", "small", 1, "float64", 1.31, "avx2"), row("c", "small", 1, "float64", 1.0, "avx512"),
            row("c", "small", 32, "float64", 2.1, "avx2"), row("c", "small", 32, "float64", 1.0, "avx512"),
            row("c", "small", 32, "float64", 2.1 * 2.6, "sse")]
    v = verdicts(c_targets.isa_ratio_checks(rows))
    assert v == {("avx2/avx512", "small b1 f64"): False, ("avx2/avx512", "small b32 f64"): True,
                 ("sse/avx2", "small b32 f64"): False}


def test_float32_must_train_1_7x_the_tokens_of_float64():
    f64 = row("c", "medium", 32, "float64", 10.0, "avx2")
    assert c_targets.f32_check([f64, row("c", "medium", 32, "float32", 10 / 1.71, "avx2")]).ok is True
    assert c_targets.f32_check([f64, row("c", "medium", 32, "float32", 10 / 1.69, "avx2")]).ok is False


def test_targets_without_rows_are_listed_as_not_measured_and_do_not_fail():
    checks = c_targets.check_all([[row("c", "small", 1, "float64", 1.0, "avx2")]], lambda: CEILINGS, "avx2")[0]
    assert {c.target for c in checks if c.ok is None} == {"fastest", "peak", "f32", "avx2/avx512", "128-bit/avx2",
                                                          "tiny"}
    assert "0 of 0 judged checks hold; not measured: fastest, peak" in c_targets.report(checks)


def test_the_cli_exits_1_on_a_miss_and_prints_the_table(tmp_path, monkeypatch, capsys):
    runs = passing_runs()
    runs[0].append(row("numpy", "tiny", 1, "float64", 1e-6))
    paths = []
    for i, rows in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(rows))
    # the peak target needs this machine's ceilings: hand it the synthetic ones (no measurement in a test)
    from microgpt import machine
    monkeypatch.setattr(machine, "ceilings", lambda **kwargs: CEILINGS)
    monkeypatch.setattr(c_targets, "fastops_isa", lambda: "avx2")
    assert c_targets.main([str(p) for p in paths]) == 1
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "| fastest | c[avx2] tiny b1 f64 |" in out
    assert "missed: fastest c[avx512] tiny b1 f64, fastest c[avx2] tiny b1 f64\n8 c rows not raced" in out


def test_a_truncated_results_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "f64.json"
    bad.write_text('[{"engine": "c", "config"')
    r = run_cli(str(bad), script="benchmarks/c_targets.py")
    assert r.returncode == 2 and r.stderr.startswith(f"error: results file {bad}") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr

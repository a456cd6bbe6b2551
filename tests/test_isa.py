"""--isa: the C engine's instruction set, chosen on every command line, reported and recorded in every
results file; and the two larger standard configs (large, xl).

Each test runs the user's command on a small data file it writes itself, for every instruction set this
CPU and build run (fastops.available_isas()), so a machine with fewer (or more) sets tests what it has.
"""

import io
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, read_names, run_cli
from microgpt import UserError, machine
from microgpt.config import DEFAULT_CONFIGS, STANDARD_CONFIGS, ModelConfig

try:
    import fastops
except ImportError:
    fastops = None
needs_c = pytest.mark.skipif(fastops is None, reason="build the C extension first: pip install -e .")
AVAILABLE = fastops.available_isas() if fastops else []
TINY = ["--n-embd", "8", "--n-head", "2", "--block-size", "8", "--num-steps", "3", "--eval-every", "0",
        "--eval-docs", "10", "--num-samples", "2"]


def unavailable() -> list[str]:
    """A name the fused engine knows of but this machine cannot run (neon on x86, AVX on arm), and a typo."""
    from train_fast import ISA_NAMES
    return [name for name in ISA_NAMES if name not in AVAILABLE][:1] + ["avx"]


def one_line_error(r, *fragments: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr
    return r.stderr


# --- the trainers ------------------------------------------------------------------------------------


@needs_c
@pytest.mark.parametrize("isa", AVAILABLE)
def test_every_available_isa_trains_and_is_reported(names_file, tmp_path, isa):
    log, ckpt = tmp_path / "loss.json", tmp_path / "run.ckpt"
    r = run_cli("--data", names_file, *TINY, "--isa", isa, "--loss-log", log, "--save", ckpt, script="train_fast.py")
    assert r.returncode == 0, r.stderr
    assert f"engine c (float64, 1 thread, {isa}) |" in r.stdout and "step 3/3 | loss" in r.stdout
    assert json.loads(log.read_text())["isa"] == isa
    from microgpt import checkpoint
    assert checkpoint.load(ckpt).meta["isa"] == isa


@needs_c
def test_train_py_engine_c_shares_the_flag_and_auto_is_the_best(names_file):
    last = AVAILABLE[-1]
    r = run_cli("--data", names_file, *TINY, "--engine", "c", "--dtype", "float32", "--threads", "2", "--isa", last)
    assert r.returncode == 0, r.stderr
    assert f"engine c (float32, 2 threads, {last}) |" in r.stdout
    for flags in ([], ["--isa", "auto"]):
        r = run_cli("--data", names_file, *TINY, *flags, script="train_fast.py")
        assert r.returncode == 0 and f"engine c (float64, 1 thread, {AVAILABLE[0]}) |" in r.stdout, r.stderr
    assert "--isa" in run_cli("--help", script="train_fast.py").stdout and "--isa" in run_cli("--help").stdout


@needs_c
@pytest.mark.parametrize("name", unavailable())
def test_an_unavailable_isa_is_one_line_and_exit_2(names_file, name):
    for script, flags in (("train_fast.py", []), ("train.py", ["--engine", "c"])):
        r = run_cli("--data", names_file, *TINY, *flags, "--isa", name, script=script)
        one_line_error(r, f"--isa {name} is not available on this CPU or build", *AVAILABLE)
        assert r.stdout == "", "refused before any data is read or any step runs"


@needs_c
def test_isa_is_refused_where_nothing_uses_it(names_file):
    one_line_error(run_cli("--data", names_file, *TINY, "--isa", "generic"), "--engine python has no such choice")
    one_line_error(run_cli("--data", names_file, *TINY, "--isa", "generic", "--engine", "c-ops", script="train_fast.py"),
                   "--engine c-ops")
    one_line_error(run_cli("--data", names_file, *TINY, "--isa", ",".join(AVAILABLE[:2]) or "a,b",
                           script="train_fast.py"), "one instruction set")


@needs_c
@pytest.mark.parametrize("isa", AVAILABLE)
def test_int8_sampling_takes_the_isa_where_it_has_kernels(names_file, isa):
    """InferenceGPT has int8 kernels for fewer sets than the trainer: it gets --isa where it takes it and
    otherwise picks its own, saying so; sampling works either way."""
    r = run_cli("--data", names_file, *TINY, "--isa", isa, "--int8", script="train_fast.py")
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("int8 weights (")]
    try:
        chosen = fastops.InferenceGPT(tiny_params(), 27, 8, 1, 2, 8, isa=isa).isa
    except ValueError:
        assert line.endswith(f"--isa {isa} has no int8 kernels here"), line
    else:
        assert f"({'avx512-vnni' if chosen == 'avx512' else chosen})" in line and "no int8 kernels" not in line
    assert len(r.stdout.split("samples:")[1].split()) == 2


def tiny_params():
    from microgpt.params import init_params
    return init_params(ModelConfig(vocab_size=27, n_embd=8, n_layer=1, n_head=2, block_size=8), 0).data


# --- the benchmark tools ----------------------------------------------------------------------------


@needs_c
def test_engine_table_measures_every_isa_side_by_side(names_file, tmp_path):
    out = tmp_path / "table.json"
    r = run_cli("--engines", "c", "--isa", "all", "--configs", "tiny", "--batch-sizes", "1", "--samples", "1",
                "-o", out, script="benchmarks/engine_table.py", env={"MICROGPT_DATA": str(names_file)})
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["isa"] for row in rows] == AVAILABLE and all(row["engine"] == "c" for row in rows)
    for isa in AVAILABLE:
        assert f"| c[{isa}] | tiny (16,1,8) | 1 |" in r.stdout
    for name in unavailable():
        one_line_error(run_cli("--engines", "c", "--isa", name, script="benchmarks/engine_table.py",
                               env={"MICROGPT_DATA": str(names_file)}), f"--isa {name} is not available")

    # the README's layout from the same file: one row per isa, the fastest of the column in bold
    pivot = run_cli("--pivot", out, script="benchmarks/engine_table.py")
    assert pivot.returncode == 0, pivot.stderr
    table = [line for line in pivot.stdout.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == [f"c[{isa}]" for isa in AVAILABLE]
    assert sum("**" in line for line in table) == 1
    one_line_error(run_cli("--pivot", tmp_path / "missing.json", script="benchmarks/engine_table.py"),
                   "--pivot needs the JSON files")


@needs_c
def test_engine_table_gives_every_engine_the_threads_asked_for(names_file, tmp_path):
    out = tmp_path / "table.json"
    r = run_cli("--engines", "c,numpy", "--configs", "tiny", "--batch-sizes", "2", "--samples", "1", "--threads", "2",
                "--yardsticks", "none", "-o", out, script="benchmarks/engine_table.py",
                env={"MICROGPT_DATA": str(names_file)})
    assert r.returncode == 0, r.stderr
    assert [(row["engine"], row["threads"]) for row in json.loads(out.read_text())] == [("c", 2), ("numpy", 2)]
    assert run_cli("--threads", "0", script="benchmarks/engine_table.py").returncode == 2


@needs_c
def test_engine_table_runs_the_large_configs_on_request(names_file, tmp_path):
    out = tmp_path / "table.json"
    r = run_cli("--engines", "c", "--configs", "large,xl", "--batch-sizes", "1", "--samples", "1", "--dtype",
                "float32", "-o", out, script="benchmarks/engine_table.py", env={"MICROGPT_DATA": str(names_file)})
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(row["config_name"], row["config"]["n_embd"], row["isa"]) for row in rows] == [
        ("large", 256, AVAILABLE[0]), ("xl", 512, AVAILABLE[0])]
    assert f"| c[{AVAILABLE[0]}] | xl (512,4,32) | 1 |" in r.stdout


def tiny_sweep() -> list[int]:
    caps = machine.capacities(machine.caches(), 1)
    return [max(16 * 1024, caps[name] // 2) for name in ("L1", "L2", "L3") if name in caps] + [4 * max(caps.values())]


@pytest.fixture(scope="module")
def ceilings_cache(tmp_path_factory):
    """A cache holding a tiny measurement of this machine's ceilings (what roofline.py reads)."""
    pytest.importorskip("microgpt._ceilings", reason="build the extension: pip install -e .")
    record = machine.measure("quick", threads=[1], sizes=tiny_sweep(), rounds=1)
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROGPT_CACHE", str(root))
        machine.save(record, machine.cache_path())
    return root, record


@needs_c
def test_roofline_times_each_isa_and_records_it(ceilings_cache, names_file, tmp_path):
    root, _ = ceilings_cache
    saved = tmp_path / "timings.json"
    r = run_cli("--engines", "c", "--isa", "all", "--data", names_file, "--seconds", "0.05", "--chart", "",
                "--save-results", saved, script="roofline.py", env={"MICROGPT_CACHE": str(root)})
    assert r.returncode == 0, r.stderr
    records = json.loads(saved.read_text())["results"]
    assert [x["isa"] for x in records] == AVAILABLE
    for isa in AVAILABLE:
        assert f"\nc[{isa}] " in r.stdout
    one_line_error(run_cli("--engines", "python", "--isa", AVAILABLE[-1], script="roofline.py",
                           env={"MICROGPT_CACHE": str(root)}), "--isa picks the kernels of the c engine")


def test_roofline_holds_an_isa_to_its_own_compute_roof(ceilings_cache):
    import roofline
    _, record = ceilings_cache
    for isa in record["compute"]["f64"]:
        # an intensity far right of every ridge: the compute roof binds
        v = roofline.classify(1e6, 1e9, record, "f64", 1, "L1", isa=isa)
        assert v["roof"] == f"compute {isa}" and v["roof_flops"] == machine.peak(record, "f64", 1, isa=isa)
    v = roofline.classify(1e6, 1e9, record, "f64", 1, "L1", isa="generic")     # no probe of its own: the fastest
    assert v["roof"] == "compute" and v["roof_flops"] == machine.peak(record, "f64", 1)
    row = roofline.analyse({"engine": "c", "isa": "avx2", "config": ModelConfig().to_dict(), "batch_size": 1,
                            "dtype": "float64", "threads": 1, "ms_per_step": 0.01, "tokens_per_step": 7}, record)
    assert row["engine"] == "c[avx2]" and row["isa"] == "avx2"


@needs_c
def test_benchmark_run_records_the_isa_of_every_c_case(names_file, tmp_path):
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({"tiny": {"rounds": 1, "samples": 2, "min_sample_s": 0.005, "warmup": 1, "groups": [
        {"engines": ["python", "c"], "configs": ["C8L1H2T8"], "batch_sizes": [2], "dtypes": ["float64"]}]}}))
    out = tmp_path / "results.json"
    base = ["run", "--matrix", "tiny", "--matrix-file", matrix, "--data", names_file, "--quiet"]
    r = run_cli(*base, "-o", out, "--isa", "auto,all", script="benchmark.py")
    assert r.returncode == 0, r.stderr
    got = {x["id"]: x.get("isa") for x in json.loads(out.read_text())["results"]}
    assert got == {"python C8L1H2T8 b2 f64 t1": None, "c C8L1H2T8 b2 f64 t1": AVAILABLE[0],
                   **{f"c[{isa}] C8L1H2T8 b2 f64 t1": isa for isa in AVAILABLE}}
    assert f"c[{AVAILABLE[-1]}] C8L1H2T8 b2 f64 t1" in r.stdout
    for name in unavailable():
        one_line_error(run_cli(*base, "--isa", name, script="benchmark.py"), f"--isa {name} is not available")
    one_line_error(run_cli(*base, "--engines", "python", "--isa", AVAILABLE[-1], script="benchmark.py"), "no c case")


def test_compare_warns_when_one_id_ran_different_isas():
    from benchmarks.gate.compare import comparison_warnings
    base = {"results": [{"id": "c C16L1H4 b1 f64 t1", "isa": "avx512", "samples_ms": [1.0]}]}
    cur = {"results": [{"id": "c C16L1H4 b1 f64 t1", "isa": "avx2", "samples_ms": [1.0]}]}
    assert any("avx512" in w and "avx2" in w for w in comparison_warnings(base, cur))
    assert not any("isa" in w or "instruction" in w for w in comparison_warnings(base, base))


@needs_c
def test_bench_fastops_labels_each_isa(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_fastops
    monkeypatch.setattr(bench_fastops, "CONFIGS", {"(16,1,8)": (16, 1, 8)})
    monkeypatch.setattr(bench_fastops, "STEPS", {"train.py": (3,), "c-ops": (5,), "c float64": (50,),
                                                 "c float32": (50,)})
    monkeypatch.setattr(bench_fastops, "read_names", lambda: read_names(100))
    isas = bench_fastops.resolve_isas("all")
    assert isas == AVAILABLE and bench_fastops.resolve_isas("auto," + AVAILABLE[0]) == AVAILABLE[:1]
    out = io.StringIO()
    bench_fastops.speed_table(1, out, isas)
    for isa in AVAILABLE:
        assert f"| (16,1,8) | c[{isa}] float64 |" in out.getvalue() and f"| c[{isa}] float32 |" in out.getvalue()
    assert "| train.py |" in out.getvalue() and "| c-ops |" in out.getvalue()
    with pytest.raises(UserError, match="not available"):
        bench_fastops.resolve_isas(unavailable()[-1])
    r = run_cli("--isa", unavailable()[-1], script="benchmarks/bench_fastops.py")
    one_line_error(r, "is not available")


# --- the configs --------------------------------------------------------------------------------------


def test_large_and_xl_configs_have_the_stated_shapes():
    assert STANDARD_CONFIGS["large"] == (256, 4, 4, 32) and STANDARD_CONFIGS["xl"] == (512, 4, 4, 32)
    for name in ("large", "xl"):
        n_embd, n_layer, n_head, block = STANDARD_CONFIGS[name]
        cfg = ModelConfig(n_embd=n_embd, n_layer=n_layer, n_head=n_head, block_size=block).validate()
        assert cfg.head_dim == n_embd // 4
    # opt-in: the default runs (engine_table's --configs, roofline --all-configs) keep their meaning
    assert DEFAULT_CONFIGS == ("tiny", "small", "medium")
    assert [STANDARD_CONFIGS[n] for n in DEFAULT_CONFIGS] == [(16, 1, 4, 8), (64, 2, 4, 16), (128, 4, 4, 32)]


def test_engine_table_reports_an_engine_that_fails_in_its_row_and_goes_on(names_file, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setenv("MICROGPT_DATA", str(names_file))
    import engine_table

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the JIT compiler could not build its kernels\n(long log)")

    real = engine_table.load_row
    monkeypatch.setattr(engine_table, "load_row", lambda name: Broken if name == "numpy" else real(name))
    assert engine_table.main(["--engines", "numpy,python", "--configs", "tiny", "--batch-sizes", "1",
                              "--samples", "1", "--yardsticks", "none"]) == 0
    out = capsys.readouterr().out
    assert "| numpy | tiny (16,1,8) | 1 | failed: RuntimeError: the JIT compiler could not build its kernels |" in out
    assert "| python | tiny (16,1,8) | 1 |" in out


def test_unbuilt_fastops_is_an_import_error_not_the_header_directory(tmp_path):
    """Without a built extension, ``import fastops`` finds the fastops/ directory of headers (a namespace
    package); the engine must still say that the extension is not built, in one line."""
    shutil.copytree(REPO / "microgpt", tmp_path / "microgpt", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (tmp_path / "fastops").mkdir()
    (tmp_path / "fastops" / "gpt.h").write_text("/* headers only */\n")
    code = ("import sys; sys.path[:] = [p for p in sys.path[1:] if 'site-packages' not in p]; sys.path.insert(0, '.')\n"
            "from microgpt.native import import_fastops\n"
            "try:\n    import_fastops()\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ImportError: the fastops found is its source directory"), done.stdout

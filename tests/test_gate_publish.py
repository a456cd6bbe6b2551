"""README's speed tables, its "What you get" transcript and docs/*.png are generated (benchmark.py publish)
from docs/results/<machine>.json: this test fails when README or a chart and the results files disagree,
and shows that the check is not vacuous."""

import json
import shutil
import sys

import pytest

import benchmark  # noqa: F401  (puts the checkout on sys.path for benchmarks.gate)
from benchmarks.gate.report import machine_slug, publish, record_table
from microgpt import UserError

from conftest import REPO

RESULTS = REPO / "docs" / "results"


def test_readme_tables_are_the_results_files():
    assert list(RESULTS.glob("*.json")), "no published results in docs/results"
    assert publish(REPO / "README.md", RESULTS, check=True) == 0, "run: python benchmark.py publish"
    text = (REPO / "README.md").read_text()
    for path in RESULTS.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["environment"]["fingerprint"] and doc["environment"]["python"]["sys_version"]
        for name in doc["tables"]:
            assert f"<!-- benchmark.py publish: {path.stem}/{name} " in text
    assert text.count("Measured on ") >= 3 and "fastops avx512" in text and "CPython 3.11.7" in text


def test_a_changed_figure_fails_the_check_and_publish_rewrites_it(tmp_path, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results"
    shutil.copy(REPO / "README.md", readme)
    shutil.copytree(RESULTS, results)
    (tmp_path / "docs").mkdir()
    for png in (REPO / "docs").glob("*.png"):             # charts drawn from these results: not redrawn
        shutil.copy(png, tmp_path / "docs" / png.name)
    path = next(results.glob("*.json"))
    doc = json.loads(path.read_text())
    table = next(iter(doc["tables"].values()))
    table["rows"][0]["cpu_ms_per_step"] *= 7.77
    path.write_text(json.dumps(doc))
    assert publish(readme, results, check=True) == 1 and "disagrees" in capsys.readouterr().err
    assert publish(readme, results) == 0
    assert publish(readme, results, check=True) == 0 and readme.read_text() != (REPO / "README.md").read_text()
    path.unlink()
    with pytest.raises(UserError, match="without a results table"):
        publish(readme, results, check=True)


def test_record_table_keeps_the_figures_and_the_machine(tmp_path):
    rows = [{"engine": "c", "isa": "avx2", "dtype": "float64", "config_name": "tiny", "batch_size": 1,
             "cpu_ms_per_step": 0.01, "ms_per_step": 0.01, "first_step_ms": 3.5, "samples_ms": [0.01] * 5},
            {"engine": "jax", "dtype": "float64", "config_name": "tiny", "batch_size": 1,
             "cpu_ms_per_step": 0.3, "ms_per_step": 0.3, "first_step_ms": 1500.0}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    path = record_table(tmp_path / "results", "t", [tmp_path / "rows.json"], "python x.py", "")
    doc = json.loads(path.read_text())
    assert path.stem == machine_slug(doc["environment"]) and "samples_ms" not in doc["tables"]["t"]["rows"][0]
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n<!-- benchmark.py publish: {path.stem}/t (generated from here) -->\n<!-- end {path.stem}/t -->\n")
    assert publish(readme, tmp_path / "results") == 0
    text = readme.read_text()
    assert "| `c[avx2]` | **0.01** |" in text and "| `jax` | 0.3 |" in text
    # the first step is reported where it is compilation (jax), not where it is a step like the rest (c)
    assert "First step, compilation included (wall): `jax` 1.5-1.5 s." in text and "`c` 0" not in text
    assert "`python x.py`" in text


def test_tables_of_several_threads_show_wall_time():
    from benchmarks.engine_table import pivot_table
    rows = [{"engine": "c", "dtype": "float64", "config_name": "medium", "batch_size": 32, "threads": 2,
             "cpu_ms_per_step": 34.0, "ms_per_step": 21.0}]
    table = pivot_table(rows)
    assert "ms of wall time per step, 2 threads each" in table and "| `c` | **21** |" in table
    assert "| `c` | **34** |" in pivot_table([{**rows[0], "threads": 1}])


def test_a_recorded_output_is_shown_abridged_with_its_machine(tmp_path):
    from benchmarks.gate import report
    from benchmarks.gate.report import record_output
    path = record_output(tmp_path / "results", "run", "python -c \"[print(f'line {i}') for i in range(9)]\"",
                         [(0, 2), (-3, -1)])
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- benchmark.py publish: {path.stem}/run (generated from here) -->\n<!-- end {path.stem}/run -->\n")
    assert publish(readme, tmp_path / "results") == 0
    text = readme.read_text()
    assert "```\n$ python -c" in text and "line 1\n...\nline 6\nline 7\n...\n```" in text and "line 2" not in text
    assert report.abridged("a\nb\nc\n", []) == ["a", "b", "c"] and report.abridged("a\nb\nc", [[1, 3]]) == ["...", "b", "c"]
    assert "Printed on " in text and "fastops" in text and "CPython" in text
    with pytest.raises(UserError, match="failed"):
        record_output(tmp_path / "results", "bad", "python -c \"raise SystemExit(4)\"", [])


def test_charts_are_stamped_with_their_inputs_and_checked_without_matplotlib(tmp_path, monkeypatch, capsys):
    """docs/<chart>.png carries a digest of what it was drawn from: --check (standard library only) fails
    when the PNG is missing or drawn from other inputs; publish redraws it, or says in one line that it
    needs matplotlib."""
    from benchmarks.gate import report
    results = tmp_path / "docs" / "results"
    log = {"engine": "python", "train": [3.3, 3.0, 2.8, 2.7], "val": [[4, 2.9]]}
    (tmp_path / "loss.json").write_text(json.dumps(log))
    report.record_chart(results, "losses", report.losses_entry([tmp_path / "loss.json"], "python train.py ..."))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    png = tmp_path / "docs" / "losses.png"
    assert publish(readme, results, check=True) == 1 and "docs/losses.png not drawn" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "report_charts", None)         # as without matplotlib
    with pytest.raises(UserError, match=r"1 chart\(s\) not drawn \(losses.png\): matplotlib is not installed"):
        publish(readme, results)
    monkeypatch.undo()
    assert publish(readme, results) == 0 and png.read_bytes().startswith(b"\x89PNG")
    stamp = report.png_stamp(png)
    assert stamp and publish(readme, results, check=True) == 0
    path = next(results.glob("*.json"))
    doc = json.loads(path.read_text())
    doc["charts"]["losses"]["logs"][0]["train"][1] = 2.9
    path.write_text(json.dumps(doc))
    assert publish(readme, results, check=True) == 1
    assert publish(readme, results) == 0 and report.png_stamp(png) not in (None, stamp)


def test_a_recorded_run_is_laid_out_by_processes_and_threads(tmp_path):
    """publish --record-run: benchmark.py run's results (the distributed matrix) as a table of processes x
    threads, with the all-reduce's share and the scaling efficiency of the data-parallel rows."""
    from benchmarks.gate import report
    from benchmarks.gate.results import SCHEMA
    config = {"n_embd": 128, "n_layer": 4, "n_head": 4, "block_size": 32, "mlp_act": "relu2", "vocab_size": 27}
    results = []
    for engine, one, two_threads, two_ranks, share in (("c", 40.0, 44.0, 50.0, 0.37), ("torch", 80.0, 390.0, 77.0, 0.2)):
        for threads, ranks, wall in ((1, 1, one), (2, 1, two_threads), (1, 2, two_ranks)):
            rec = {"id": f"{engine} t{threads} r{ranks}", "engine": engine, "config": config, "batch_size": 32,
                   "dtype": "float64", "threads": threads, "samples_ms": [wall], "cpu_samples_ms": [wall * 0.7],
                   "ms_per_step": wall, "cpu_ms_per_step": wall * 0.7}
            if ranks > 1:
                rec.update(ranks=ranks, allreduce_share=share)
            results.append(rec)
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"schema": SCHEMA, "created": "2026-11-30T15:00:00Z", "results": results}))
    path = report.record_run(tmp_path / "results", "dp", run, "python benchmark.py run --matrix distributed", "")
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- benchmark.py publish: {path.stem}/dp (generated from here) -->\n<!-- end {path.stem}/dp -->\n")
    assert publish(readme, tmp_path / "results") == 0
    text = readme.read_text()
    assert "C128L4H4T32 b32 float64: wall ms per step" in text and "| | `c` | `torch` |" in text
    assert "| 1 process × 1 thread | 40 (28) | 80 (56) |" in text and "| 2 processes × 1 thread | 50 (35) | 77 (53.9) |" in text
    assert "2-rank step (waiting for the other ranks included) | 37% | 20% |" in text
    assert "scaling efficiency of 2 ranks, T₁ / (2 T₂) | 40% | 52% |" in text
    assert publish(readme, tmp_path / "results", check=True) == 0
    run.write_text(json.dumps({"schema": SCHEMA, "created": "x", "results": [{"id": "a", "samples_ms": [1]}]}))
    with pytest.raises(UserError, match="no timed results"):
        report.record_run(tmp_path / "results", "dp", run, "x", "")

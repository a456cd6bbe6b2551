"""The benchmark charts of report_charts.py and ``benchmark.py report``: every chart as SVG and an 800 px
PNG, drawn from results, a comparison, the baseline history and loss logs."""

import json
import os
import random
import struct
import subprocess
import sys

import pytest

import report_charts
from benchmarks.gate import results as results_module
from benchmarks.gate.compare import compare_results
from benchmarks.gate.results import history_entries
from microgpt import machine

from conftest import REPO, read_names

CONFIG = {"n_embd": 16, "n_layer": 1, "n_head": 4, "block_size": 16, "vocab_size": 27, "mlp_act": "relu2"}


def record(engine, ms, batch=1, dtype="float64", threads=1, n_embd=16, seed=0):
    rng = random.Random(seed)
    samples = [ms * (1 + rng.gauss(0, 0.02)) for _ in range(12)]
    tokens = 6.5 * batch
    return {"id": f"{engine} C{n_embd}L1H4 b{batch} f{dtype[-2:]} t{threads}", "engine": engine,
            "config": {**CONFIG, "n_embd": n_embd}, "batch_size": batch, "dtype": dtype, "threads": threads,
            "samples_ms": samples, "cpu_samples_ms": samples, "ms_per_step": ms, "cpu_ms_per_step": ms,
            "tokens_per_step": tokens, "tokens_per_s": tokens / ms * 1e3, "gflops": 1.0}


RECORDS = [record("python", 7.0), record("c", 0.01), record("numpy", 0.2), record("scalar", 190.0),
           record("python", 60.0, batch=8), record("c", 0.05, batch=8), record("c", 0.03, batch=8, dtype="float32"),
           record("torch", 2.0, batch=8, dtype="float32", threads=2)]


def results(records, model="Test CPU") -> dict:
    return {"schema": results_module.SCHEMA, "created": "2024-05-01T10:00:00Z", "matrix": "test", "results": records,
            "skipped": [], "environment": {"machine": {"model": model, "cpus": 2, "arch": "x86_64"},
                                           "git": {"commit": "0123456789ab", "dirty": False}}}


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def check_written(paths, height_range=(300, 2500)):
    assert [p.suffix for p in paths] == [".svg", ".png"]
    assert paths[0].read_text().lstrip().startswith("<?xml") and "</svg>" in paths[0].read_text()
    width, height = png_size(paths[1])
    assert width == 800 and height_range[0] <= height <= height_range[1]
    assert not list(paths[0].parent.glob(".*.tmp"))


def test_throughput_chart(tmp_path):
    check_written(report_charts.throughput_chart(RECORDS, tmp_path / "throughput"))


def test_speedup_chart_against_the_reference_engine(tmp_path):
    check_written(report_charts.speedup_chart(RECORDS, tmp_path / "speedup"))
    without_reference = [r for r in RECORDS if r["engine"] != "python"]
    assert report_charts.speedup_chart(without_reference, tmp_path / "none") == []
    assert not (tmp_path / "none.png").exists()


def test_distribution_chart_of_a_comparison(tmp_path):
    rounds = [dict(r, sample_rounds=[k // 4 for k in range(12)]) for r in RECORDS]     # 3 rounds of 4 pairs
    slower = [dict(r, samples_ms=[x * 1.3 for x in r["samples_ms"]], cpu_samples_ms=[x * 1.3 for x in r["samples_ms"]])
              if r["engine"] == "numpy" else r for r in rounds]
    session = {"settings": {"session": "one interleaved ab session"}}    # paired samples: the rounds decide
    verdicts = compare_results({**results(rounds), **session}, {**results(slower), **session})
    assert [v.verdict for v in verdicts].count("regression") == 1
    check_written(report_charts.distribution_chart(verdicts, tmp_path / "dist"))


def history(n=4) -> list[dict]:
    entries = []
    for i in range(n):
        doc = results([dict(r, ms_per_step=r["ms_per_step"] * (1 - 0.05 * i), cpu_ms_per_step=r["ms_per_step"] * (1 - 0.05 * i))
                       for r in RECORDS[: 6 + i % 2]])
        doc["created"] = f"2024-05-0{i + 1}T10:00:00Z"
        entries += history_entries(doc)
    return entries


def test_trend_chart(tmp_path):
    check_written(report_charts.trend_chart(history(), tmp_path / "trend"))


def loss_log(engine, steps=300, offset=0.0) -> dict:
    losses = [3.3 * (0.7 + 0.3 * 0.99 ** s) + 0.1 * ((s * 7919) % 13) / 13 + offset for s in range(steps)]
    return {"engine": engine, "start_step": 0, "train": losses, "val": [[100, 2.6], [200, 2.45], [300, 2.4]]}


def test_loss_chart(tmp_path):
    logs = [loss_log("python"), loss_log("c", offset=1e-13), loss_log("numpy", offset=2e-9)]
    check_written(report_charts.loss_chart(logs, tmp_path / "losses"))


@pytest.fixture
def ceilings_cache(tmp_path, monkeypatch):
    """A private ceilings cache with a one-point-per-level measurement (seconds, not a full sweep)."""
    pytest.importorskip("microgpt._ceilings", reason="build the extension: pip install -e .")
    caps = machine.capacities(machine.caches(), 1)
    sizes = [max(16 * 1024, caps[n] // 2) for n in ("L1", "L2", "L3") if n in caps] + [4 * max(caps.values(), default=2 ** 25)]
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    machine.save(machine.measure("quick", threads=[1, 2], sizes=sizes, rounds=1), machine.cache_path())


def test_report_writes_markdown_with_every_chart(tmp_path, ceilings_cache):
    cur, base, hist, names = tmp_path / "cur.json", tmp_path / "base.json", tmp_path / "history.json", tmp_path / "n.txt"
    cur.write_text(json.dumps(results([r for r in RECORDS if r["engine"] in ("python", "c")])))
    base.write_text(json.dumps(results([r for r in RECORDS if r["engine"] in ("python", "c")])))
    hist.write_text(json.dumps({"schema": results_module.HISTORY_SCHEMA, "entries": history()}))
    names.write_text("\n".join(read_names(300)) + "\n")
    log = tmp_path / "given-loss.json"
    log.write_text(json.dumps(loss_log("python", steps=20)))
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "benchmark.py", "report", cur, "--base", base, "--history", hist,
                        "--loss-log", log, "--loss-steps", "20", "--data", names, "--out", out], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "report.md").read_text()
    for stem in ("throughput", "speedup", "roofline", "distributions", "trend", "losses"):
        assert f"]({stem}.png)" in text
        check_written([out / f"{stem}.svg", out / f"{stem}.png"], height_range=(200, 2500))
    assert "| `c C16L1H4 b1 f64 t1` | cpu |" in text
    trained = {json.loads((out / f"loss-{e}.json").read_text())["engine"] for e in ("python", "c")}
    assert trained == {"python", "c"}


def test_report_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "benchmark.py", "report", tmp_path / "missing.json"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: results file") and len(r.stderr.splitlines()) == 1


def test_report_charts_py_draws_from_files(tmp_path, capsys):
    """python report_charts.py RESULTS LOSS_LOG: throughput, speedup and loss charts; bad input is one line."""
    results_path, log_path = tmp_path / "results.json", tmp_path / "loss.json"
    results_path.write_text(json.dumps({"results": RECORDS}))
    log_path.write_text(json.dumps({"engine": "python", "train": [3.3, 3.1, 2.9], "val": [[3, 3.0]]}))
    assert report_charts.main([str(results_path), str(log_path), "--out", str(tmp_path / "charts")]) == 0
    for stem in ("throughput", "speedup", "losses"):
        check_written([tmp_path / "charts" / f"{stem}.svg", tmp_path / "charts" / f"{stem}.png"])
    assert "charts: " in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    for content, message in [('{"results": [{"engine": "c"}]}', "result 0 has no config, batch_size"),
                             ('[1, 2]', "is neither timing results"), ("{", "is not valid JSON")]:
        bad.write_text(content)
        assert report_charts.main([str(bad), "--out", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_without_matplotlib_the_charts_say_so_in_one_line(tmp_path, monkeypatch, capsys):
    # a matplotlib that cannot be imported, as in an install without the dev extra
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    r = subprocess.run([sys.executable, str(REPO / "report_charts.py")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: report_charts.py needs matplotlib, which is not installed here (No module named 'matplotlib'): "
        "pip install matplotlib (or pip install -e '.[dev]')"]
    # the same for the int8 command without torch
    fake_torch = tmp_path / "site" / "torch"
    fake_torch.mkdir()
    (fake_torch / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    r = subprocess.run([sys.executable, "-m", "engines.int8", "--checkpoint", "x.ckpt"], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: python -m engines.int8 needs torch, which is not installed here (No module named 'torch'): "
        "pip install -e '.[torch]'"]
    # roofline.py prints its tables and leaves the chart out with a note
    import roofline
    monkeypatch.setitem(sys.modules, "report_charts", None)
    roofline.draw_chart("roofline_chart", {}, [], str(tmp_path / "chart"))
    assert capsys.readouterr().out.startswith("chart skipped: matplotlib is not installed")
    assert not list(tmp_path.glob("chart*"))

"""A distributed group in the benchmark matrix: cases of ``ranks`` > 1 run as torchrun processes
(benchmarks/distributed.py) and are recorded, compared and reported like any other case. Two processes
over loopback, a tiny model, one round: bounded by the process-group timeout, ~30 s on 2 busy CPUs."""

import json

import pytest
from conftest import read_names, run_cli

from benchmarks.gate import matrix as gate_matrix
from benchmarks.gate.matrix import Case
from microgpt import UserError

pytest.importorskip("torch", reason="data-parallel cases run on torch.distributed: pip install -e '.[torch]'")


def test_ranks_expand_like_threads_and_name_only_distributed_cases(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"m": {"groups": [{"engines": ["c"], "configs": ["C16L1H4"], "threads": [1, 2],
                                                  "ranks": [1, 2]}]},
                                "bad": {"groups": [{"engines": ["c"], "ranks": [0]}]}}))
    _, cases, _ = gate_matrix.load_matrix("m", path)
    assert [c.id for c in cases] == ["c C16L1H4 b1 f64 t1", "c C16L1H4 b1 f64 t1 r2", "c C16L1H4 b1 f64 t2",
                                     "c C16L1H4 b1 f64 t2 r2"]
    assert Case("c", gate_matrix.parse_config("C16L1H4"), 1, "float64", 1).ranks == 1
    with pytest.raises(UserError, match="ranks must be a non-empty list of integers >= 1"):
        gate_matrix.load_matrix("bad", path)


def test_a_distributed_case_is_run_recorded_and_compared(tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps({"d": {
        "rounds": 1, "samples": 2, "min_sample_s": 0.01, "warmup": 1,
        "groups": [{"engines": ["c"], "configs": ["C16L1H4"], "batch_sizes": [4], "ranks": [1, 2]}]}}))
    (tmp_path / "names.txt").write_text("\n".join(read_names(200)) + "\n")
    out = tmp_path / "results.json"
    r = run_cli("run", "--matrix", "d", "--matrix-file", tmp_path / "matrix.json", "--data", tmp_path / "names.txt",
                "-o", out, script="benchmark.py")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    by_id = {x["id"]: x for x in doc["results"]}
    plain, dist = by_id["c C16L1H4 b4 f64 t1"], by_id["c C16L1H4 b4 f64 t1 r2"]
    assert "ranks" not in plain and dist["ranks"] == 2 and not doc["skipped"]
    # the same schema: samples, medians, the documents of every step of the whole batch (4 per step)
    assert set(plain) <= set(dist) | {"ranks"} and len(dist["samples_ms"]) == 2
    assert dist["ms_per_step"] > 0 and dist["tokens_per_step"] == pytest.approx(plain["tokens_per_step"], rel=0.5)
    # each rank's compute, all-reduce and update per step, and the all-reduce's share of a step
    assert len(dist["rank_parts_ms"]) == 2 and all(len(p) == 3 and min(p) > 0 for p in dist["rank_parts_ms"])
    assert 0 < dist["allreduce_share"] < 1 and "rank_parts_ms" not in plain
    c = run_cli("compare", out, out, script="benchmark.py")
    assert c.returncode == 0 and "c C16L1H4 b4 f64 t1 r2" in c.stdout, c.stderr


def test_a_rank_that_cannot_start_is_a_skipped_case_with_its_reason(tmp_path):
    """An engine without data-parallel support (numpy has no compute_grads): the ranks end, the case is skipped."""
    from benchmarks.distributed import DistributedTimer
    names = tmp_path / "names.txt"
    names.write_text("\n".join(read_names(50)) + "\n")
    case = {"id": "x", "engine": "numpy", "config": {"n_embd": 16, "n_layer": 1, "n_head": 4, "block_size": 8},
            "batch_size": 2, "dtype": "float64", "threads": 1, "ranks": 2}
    with pytest.raises(UserError, match="cannot train data-parallel"):
        DistributedTimer(case, str(names), 1, 0.01)

"""benchmarks/yardsticks.py: each textbook version computes the reference's model (so timing it beside the tuned
engine compares like with like): float64 gradients to 1e-9 (MLX: its float64 exp is float32-accurate), and
training steps to 1e-9, or 1e-6 when clipping is on (the frameworks divide by norm + 1e-6)."""

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.config import TrainConfig
from train import PythonEngine

from benchmarks.yardsticks import BESIDE, YARDSTICKS, load_yardstick


def worst(got, want):
    """Largest difference relative to the largest magnitude (entries near zero)."""
    return max(abs(a - b) for a, b in zip(got, want)) / max(map(abs, want))


@pytest.mark.parametrize("name,dtype,clip,tol", [
    ("torch-yardstick", "float64", 0.0, 1e-9),
    ("torch-yardstick", "float32", 0.5, 1e-4),
    ("jax-yardstick", "float64", 0.5, 1e-6),
    ("mlx-yardstick", "float64", 0.0, 1e-4),   # float32-accurate exp, see the module docstring
    ("mlx-yardstick", "float32", 0.5, 1e-4),
])
def test_yardstick_trains_the_reference_model(name, dtype, clip, tol):
    cfg, params = make_setup(16, 2, 4, 8)
    tcfg = TrainConfig(num_steps=10, batch_size=3, grad_clip=clip).validate()
    docs = encode_names(read_names(30), cfg.block_size)
    batches = [docs[3 * s:3 * s + 3] for s in range(8)]   # mixed lengths: padding must not leak
    ref, eng = PythonEngine(cfg, tcfg, params.copy()), load_yardstick(name)(cfg, tcfg, params.copy(), dtype=dtype)
    assert eng.name == name
    loss, grad = eng.loss_and_grad(batches[0])
    want_loss, want_grad = ref.loss_and_grad(batches[0])
    assert loss == pytest.approx(want_loss, rel=tol)
    assert worst(grad, want_grad) < tol
    for step, batch in enumerate(batches):
        assert eng.train_step(batch, 0.01) == pytest.approx(ref.train_step(batch, 0.01), rel=tol), step
    assert worst(eng.export_params().data, ref.export_params().data) < tol


def test_every_yardstick_stands_beside_engines_and_rejects_bad_dtypes():
    from engines import ENGINES
    assert set(BESIDE) == set(YARDSTICKS)
    assert all(e in ENGINES for engines in BESIDE.values() for e in engines)
    cfg, params = make_setup()
    for name in YARDSTICKS:
        with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
            load_yardstick(name)(cfg, TrainConfig(), params, dtype="float16")


def test_engine_table_times_yardsticks_beside_engines_with_the_first_step_apart(names_file, tmp_path):
    import json

    from conftest import run_cli
    out = tmp_path / "table.json"
    r = run_cli("--engines", "numpy", "--yardsticks", "torch-yardstick", "--configs", "tiny", "--batch-sizes", "1",
                "--samples", "1", "-o", out, script="benchmarks/engine_table.py",
                env={"MICROGPT_DATA": str(names_file), "MICROGPT_FRAMEWORKS_ISA": "sse"})
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(row["engine"], row["yardstick"]) for row in rows] == [("numpy", False), ("torch-yardstick", True)]
    # as under benchmarks/framework_isa.py sse: each row says which ISA its libraries were held to
    assert [row["frameworks_isa"] for row in rows] == ["sse", "sse"]
    assert all(row["first_step_ms"] > 0 and row["cpu_ms_per_step"] > 0 for row in rows)
    assert "| torch-yardstick | tiny (16,1,8) | 1 |" in r.stdout
    r = run_cli("--engines", "numpy", "--yardsticks", "numpy", script="benchmarks/engine_table.py")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --yardsticks: unknown numpy (known: auto, none, torch-yardstick, jax-yardstick, mlx-yardstick)"]


def test_engine_table_starts_every_row_with_mlx_buffer_cache_cleared(monkeypatch):
    """MLX's allocator keeps freed buffers across engines in one process; each row clears them first."""
    import sys
    import types

    from benchmarks.engine_table import fresh_allocator_caches
    cleared = []
    monkeypatch.setitem(sys.modules, "mlx.core", types.SimpleNamespace(clear_cache=lambda: cleared.append(1)))
    fresh_allocator_caches()
    assert cleared == [1]
    monkeypatch.delitem(sys.modules, "mlx.core")
    fresh_allocator_caches()          # without MLX loaded: nothing to clear, no import
    assert cleared == [1] and "mlx.core" not in sys.modules

"""engines.jax_jit.JaxEngine beyond the contract (tests/test_engine_contract.py): compiled shapes, x64 and threads, devices."""

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, encode_names, make_setup, read_names
from microgpt.config import TrainConfig
from train import PythonEngine

pytest.importorskip("jax")
from engines.jax_jit import JaxEngine  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    """Two layers, clipping on (the first steps' gradient norms exceed 1), batches of 3 documents of mixed length."""
    cfg, params = make_setup(16, 2, 4, 8)
    tcfg = TrainConfig(num_steps=40, batch_size=3, grad_clip=1.0).validate()
    docs = encode_names(read_names(200), cfg.block_size)
    return cfg, tcfg, params, [docs[3 * s:3 * s + 3] for s in range(40)]


def assert_close(got, want, rel):
    """Elementwise, relative to the largest magnitude (gradients and weights have entries near zero)."""
    scale = max(map(abs, want))
    assert max(abs(a - b) for a, b in zip(got, want)) <= rel * scale


def test_token_major_steps_compile_once_per_bucket(setup):
    """Rows are rounded up to quarter-octave buckets and attention's grid to a power of two: the step compiles
    once per bucketed shape, not once per pattern of document lengths, and the losses stay exact."""
    from engines.batching import grid_batch
    from engines.jax_jit import build_functions
    cfg, tcfg, params, batches = setup
    ref, eng = PythonEngine(cfg, tcfg, params.copy()), JaxEngine(cfg, tcfg, params.copy())
    eng.fns[True] = build_functions(cfg, tcfg)   # its own, not the process's shared cache other tests filled
    short, full = [26, 0, 26], [26] + [1] * 8  # 2 and 8 (= block_size) predictions
    steps = batches[:12] + [[short, short, short], [full, full, full], [short, full, batches[1][0]]]
    for docs in steps:
        assert eng.train_step(docs, 0.01) == pytest.approx(ref.train_step(docs, 0.01), rel=1e-9)
    shapes = {(len(g.tokens), g.gather.shape) for g in (grid_batch(d, cfg, "float64") for d in steps)}
    assert eng.fns[True]["train_step"]._cache_size() == len(shapes) < len(steps)


def test_devices(setup):
    """Only cpu and cuda; cuda where JAX has a GPU, else a one-line refusal (the rest of the contract's bad
    arguments: tests/test_engine_contract.py)."""
    cfg, tcfg, params, _ = setup
    with pytest.raises(ValueError, match="device must be one of cpu, cuda"):
        JaxEngine(cfg, tcfg, params, device="mps")
    JaxEngine(cfg, tcfg, params)  # the first engine starts JAX with its thread count, before jax.devices()
    import jax
    if any(d.platform == "gpu" for d in jax.devices()):
        assert JaxEngine(cfg, tcfg, params, device="cuda").train_step([[26, 0, 26]], 0.01) > 0
    else:
        with pytest.raises(ValueError, match="JAX cannot use device 'cuda'"):
            JaxEngine(cfg, tcfg, params, device="cuda")


def test_float32_matches_reference_to_1e_4_before_and_after_x64():
    """In a fresh process (x64 and XLA's threads are process-wide): a float32 engine matches the reference to
    1e-4, keeps computing in float32 after a float64 engine turns x64 on, and so does one created after;
    the first engine fixes XLA's thread count."""
    script = textwrap.dedent("""
        import os, sys
        sys.path[:0] = ["tests", "."]
        import jax
        from conftest import encode_names, make_setup, read_names
        from microgpt.config import TrainConfig
        from train import PythonEngine
        from engines import jax_jit

        def close(got, want):
            return abs(got - want) <= 1e-4 * abs(want)

        cfg, params = make_setup(16, 2, 4, 8)
        tcfg = TrainConfig(num_steps=40, batch_size=3, grad_clip=1.0).validate()
        docs = encode_names(read_names(200), cfg.block_size)
        batches = [docs[3 * s:3 * s + 3] for s in range(40)]
        ref = PythonEngine(cfg, tcfg, params.copy())
        want_loss, want_grad = ref.loss_and_grad(batches[0])
        want = [ref.train_step(b, 0.01) for b in batches[:20]]

        early = jax_jit.JaxEngine(cfg, tcfg, params.copy(), dtype="float32")
        assert not jax.config.jax_enable_x64
        loss, grad = early.loss_and_grad(batches[0])
        scale = max(map(abs, want_grad))
        assert close(loss, want_loss) and max(abs(a - b) for a, b in zip(grad, want_grad)) <= 1e-4 * scale
        got = [early.train_step(b, 0.01) for b in batches[:10]]
        exact = jax_jit.JaxEngine(cfg, tcfg, params.copy())
        assert jax.config.jax_enable_x64 and exact.params.dtype.name == "float64"
        got += [early.train_step(b, 0.01) for b in batches[10:20]]
        assert early.params.dtype.name == "float32"
        assert all(map(close, got, want)), (got, want)
        late = jax_jit.JaxEngine(cfg, tcfg, params.copy(), dtype="float32")
        assert late.params.dtype.name == "float32" and close(late.train_step(batches[0], 0.01), want[0])

        assert jax_jit.xla_threads == 1 and "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"]
        try:
            jax_jit.JaxEngine(cfg, tcfg, params.copy(), threads=2)
        except ValueError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "threads must be in" in done.stdout or "cannot change" in done.stdout


def test_large_batches_take_the_copied_transpose_gradient(setup):
    """From 128 rows on, linear layers' weight gradients go through engines.jax_jit.linear's own rule."""
    from engines.batching import grid_batch
    cfg, tcfg, params, _ = setup
    docs = encode_names(read_names(200)[100:], cfg.block_size)[:40]
    assert len(grid_batch(docs, cfg, "float64").tokens) >= 128
    loss, grad = JaxEngine(cfg, tcfg, params.copy()).loss_and_grad(docs)
    want_loss, want_grad = PythonEngine(cfg, tcfg, params.copy()).loss_and_grad(docs)
    assert loss == pytest.approx(want_loss, rel=1e-9)
    assert_close(grad, want_grad, 1e-9)

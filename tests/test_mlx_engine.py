"""engines.mlx_cpu (eager "mlx" and "mlx-compile") against train.PythonEngine: float64 to 1e-9, float32 to 1e-4."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from microgpt import UserError
from microgpt.config import TrainConfig
from microgpt.params import AdamState
from train import PythonEngine

mx = pytest.importorskip("mlx.core")
from engines.mlx_cpu import MlxCompiledEngine, MlxEngine  # noqa: E402

ENGINES = pytest.mark.parametrize("engine_cls", [MlxEngine, MlxCompiledEngine], ids=["mlx", "mlx-compile"])


@pytest.fixture(scope="module")
def setup():
    """Two layers, clipping on (the first steps' gradient norms exceed 1), batches of 3 documents of mixed length."""
    cfg, params = make_setup(16, 2, 4, 8)
    tcfg = TrainConfig(num_steps=40, batch_size=3, grad_clip=1.0).validate()
    docs = encode_names(read_names(200), cfg.block_size)
    return cfg, tcfg, params, [docs[3 * s:3 * s + 3] for s in range(40)]


@pytest.fixture(scope="module")
def reference(setup):
    """The reference's step-0 loss and gradient, 20 losses, then its eval loss, logits, weights and moments."""
    cfg, tcfg, params, batches = setup
    ref = PythonEngine(cfg, tcfg, params.copy())
    loss, grad = ref.loss_and_grad(batches[0])
    losses = [ref.train_step(docs, 0.01) for docs in batches[:20]]
    return {"loss": loss, "grad": grad, "losses": losses, "eval": ref.eval_loss(batches[30]),
            "logits": ref.logits([26, 1, 2]), "params": ref.export_params().data, "adam": ref.export_adam()}


def assert_close(got, want, rel):
    """Elementwise, relative to the largest magnitude (gradients and weights have entries near zero)."""
    scale = max(map(abs, want))
    assert max(abs(a - b) for a, b in zip(got, want)) <= rel * scale


# mx.compile builds each fused kernel with g++ (about 20 per dtype, cached under $TMPDIR/mlx); on a cold
# cache that costs ~1 s a kernel on a busy machine, so the compiled engine is checked in float64, the
# strict tolerance, whose fused kernels carry their own exp (see the float64 note in engines/mlx_cpu.py).
@pytest.mark.parametrize("engine_cls, dtype, rel", [(MlxEngine, "float64", 1e-9), (MlxEngine, "float32", 1e-4),
                                                    (MlxCompiledEngine, "float64", 1e-9)],
                         ids=["mlx-float64", "mlx-float32", "mlx-compile-float64"])
def test_matches_reference(setup, reference, engine_cls, dtype, rel):
    cfg, tcfg, params, batches = setup
    eng = engine_cls(cfg, tcfg, params.copy(), dtype=dtype)
    assert eng.params.dtype == getattr(mx, dtype)
    loss, grad = eng.loss_and_grad(batches[0])
    assert isinstance(loss, float) and isinstance(grad, array) and grad.typecode == "d"
    assert loss == pytest.approx(reference["loss"], rel=rel)
    assert_close(grad, reference["grad"], rel)
    losses = [eng.train_step(docs, 0.01) for docs in batches[:20]]
    assert all(isinstance(x, float) for x in losses)
    assert losses == pytest.approx(reference["losses"], rel=rel)
    assert eng.eval_loss(batches[30]) == pytest.approx(reference["eval"], rel=rel)
    assert_close(eng.logits([26, 1, 2]), reference["logits"], rel)
    assert_close(eng.export_params().data, reference["params"], rel)
    state = eng.export_adam()
    assert state.t == 20 and state.m.typecode == "d"
    assert_close(state.m, reference["adam"].m, rel)
    assert_close(state.v, reference["adam"].v, rel)


@ENGINES
def test_checkpoints_move_between_the_reference_and_mlx(setup, reference, engine_cls):
    """The reference trains 10 steps, MLX continues from its exported params and moments: same curve."""
    cfg, tcfg, params, batches = setup
    py = PythonEngine(cfg, tcfg, params.copy())
    got = [py.train_step(b, 0.01) for b in batches[:10]]
    eng = engine_cls(cfg, tcfg, py.export_params())
    eng.import_adam(py.export_adam())
    got += [eng.train_step(b, 0.01) for b in batches[10:20]]
    assert got == pytest.approx(reference["losses"], rel=1e-9)


def test_bad_arguments(setup):
    cfg, tcfg, params, _ = setup
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        MlxEngine(cfg, tcfg, params, dtype="float16")
    with pytest.raises(ValueError, match="threads must be 1"):
        MlxCompiledEngine(cfg, tcfg, params, threads=2)
    with pytest.raises(ValueError, match="device must be one of cpu, mps, cuda"):
        MlxEngine(cfg, tcfg, params, device="tpu")
    if mx.is_available(mx.gpu):
        with pytest.raises(ValueError, match="float64 on the CPU only"):
            MlxEngine(cfg, tcfg, params, device="mps")
        assert MlxEngine(cfg, tcfg, params, dtype="float32", device="mps").train_step([[26, 0, 26]], 0.01) > 0
    else:
        with pytest.raises(ValueError, match="no GPU backend here"):
            MlxEngine(cfg, tcfg, params, dtype="float32", device="mps")
    eng = MlxEngine(cfg, tcfg, params)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 27\)"):
        eng.train_step([[26, 40, 26]], 0.01)
    assert eng.export_adam().t == 0, "a rejected batch is not a step"
    with pytest.raises(ValueError, match="2..9 tokens"):
        eng.eval_loss([[26]])
    with pytest.raises(ValueError, match="at least one document"):
        eng.loss_and_grad([])
    with pytest.raises(ValueError, match="logits need 1..8 tokens"):
        eng.logits([])
    with pytest.raises(UserError, match="Adam state holds 3/3 moments"):
        eng.import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))


@pytest.mark.parametrize("engine", ["mlx", "mlx-compile"])
def test_cli_trains_and_samples(names_file, engine):
    done = run_cli("--engine", engine, "--data", names_file, "--num-steps", "5", "--batch-size", "2",
                   "--eval-every", "0", "--num-samples", "2", "--val-fraction", "0.1")
    assert done.returncode == 0, done.stderr
    assert f"engine {engine} (float64, 1 thread)" in done.stdout and "samples:" in done.stdout

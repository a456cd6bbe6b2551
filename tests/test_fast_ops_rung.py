"""The per-op rung: train_fast.OpsEngine ("c-ops") and the fastops kernels it drives, one per op of train.py."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.config import TrainConfig
from microgpt.params import layout
from train import PythonEngine

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
from train_fast import OpsEngine  # noqa: E402


def rel_err(got, want):
    floor = 1e-6 * max(abs(w) for w in want)
    return max(abs(g - w) / max(abs(w), floor) for g, w in zip(got, want))


@pytest.mark.parametrize("shape, kw", [((16, 1, 4, 8), {}), ((64, 2, 4, 16), {}),
                                       ((24, 2, 3, 8), {"mlp_act": "relu", "zero_init_proj": False})])
def test_step0_gradients_match_reference(shape, kw):
    cfg, params = make_setup(*shape, **kw)
    docs = encode_names(read_names(5), cfg.block_size)
    want_loss, want = PythonEngine(cfg, TrainConfig(), params.copy()).loss_and_grad(docs)
    loss, got = OpsEngine(cfg, TrainConfig(), params.copy()).loss_and_grad(docs)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert rel_err(got, want) <= 1e-10


@pytest.mark.parametrize("shape, steps", [((16, 1, 4, 8), 200), ((64, 2, 4, 16), 20)])
def test_losses_match_reference(shape, steps):
    cfg, params = make_setup(*shape)
    tcfg = TrainConfig(num_steps=steps).validate()
    docs = encode_names(read_names(steps), cfg.block_size)
    ref, ops = PythonEngine(cfg, tcfg, params.copy()), OpsEngine(cfg, tcfg, params.copy())
    lrs = [0.01 * (1 - s / steps) for s in range(steps)]
    want = [ref.train_step([d], lr) for d, lr in zip(docs, lrs)]
    got = [ops.train_step([d], lr) for d, lr in zip(docs, lrs)]
    assert rel_err(got, want) <= 1e-9
    assert ops.export_adam().t == steps


def test_batches_clipping_eval_and_logits_match_reference():
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=5, batch_size=3, grad_clip=0.3).validate()
    docs = encode_names(read_names(30), cfg.block_size)
    ref, ops = PythonEngine(cfg, tcfg, params.copy()), OpsEngine(cfg, tcfg, params.copy())
    for s in range(5):
        assert ops.train_step(docs[3 * s:3 * s + 3], 0.02) == pytest.approx(ref.train_step(docs[3 * s:3 * s + 3], 0.02),
                                                                             rel=1e-10)
    assert ops.eval_loss(docs[15:30]) == pytest.approx(ref.eval_loss(docs[15:30]), rel=1e-10)
    assert ops.logits(docs[0][:6]) == pytest.approx(ref.logits(docs[0][:6]), rel=1e-9, abs=1e-12)
    assert rel_err(ops.export_params().data, ref.export_params().data) <= 1e-9


def test_engine_rejects_what_it_cannot_do():
    cfg, params = make_setup(16, 1, 4, 8)
    with pytest.raises(ValueError, match="float64 on one thread"):
        OpsEngine(cfg, TrainConfig(), params, dtype="float32")
    with pytest.raises(ValueError, match="float64 on one thread"):
        OpsEngine(cfg, TrainConfig(), params, threads=2)
    ops = OpsEngine(cfg, TrainConfig(), params)
    before = ops.export_params().data
    with pytest.raises(ValueError, match="document 1: id 99 is out of range for vocab_size 27"):
        ops.train_step([[26, 1, 26], [26, 99, 26]], 0.01)
    with pytest.raises(ValueError, match="at least one document"):
        ops.train_step([], 0.01)
    assert ops.export_params().data == before and ops.export_adam().t == 0
    with pytest.raises(ValueError, match="2 to block_size"):
        ops.eval_loss([[26] * 12])
    with pytest.raises(ValueError, match="1 to block_size = 8"):
        ops.logits([])


# ---- every kernel checks its arguments ----

def vec(n):
    return array("d", bytes(8 * n))


@pytest.fixture
def flat():
    cfg, params = make_setup(16, 1, 4, 8)
    off = {t.name: t.offset for t in layout(cfg)}
    return cfg, array("d", params.data), vec(len(params)), off


def test_kernel_argument_checks(flat):
    cfg, p, g, off = flat
    x, y = vec(16), vec(16)
    emb = (off["wte"], 27, off["wpe"], 8)
    with pytest.raises(ValueError, match="token id out of range"):
        fastops.embedding(p, *emb, 27, 0, x)
    with pytest.raises(ValueError, match="position out of range"):
        fastops.embedding(p, *emb, 0, 8, x)
    with pytest.raises(ValueError, match="does not fit"):
        fastops.embedding(p, len(p) - 3, 27, off["wpe"], 8, 0, 0, x)
    with pytest.raises(ValueError, match="token id out of range"):
        fastops.embedding_backward(g, *emb, -1, 0, x)
    with pytest.raises(ValueError, match="does not fit"):
        fastops.linear(p, len(p) - 10, x, y)
    with pytest.raises(ValueError, match="does not fit"):
        fastops.linear(p, -1, x, y)
    with pytest.raises(ValueError, match="gx needs the length of x"):
        fastops.linear_backward(p, g, 0, x, y, vec(3))
    with pytest.raises(ValueError, match="params and grads need the same length"):
        fastops.linear_backward(p, vec(10), 0, x, y, x)
    with pytest.raises(TypeError, match="x must be a contiguous float64 buffer"):
        fastops.linear(p, 0, [0.0] * 16, y)
    with pytest.raises(TypeError, match="float64 \\('d'\\) values, not format 'f'"):
        fastops.linear(p, 0, array("f", bytes(64)), y)
    with pytest.raises(TypeError, match="y must be a writable"):
        fastops.linear(p, 0, x, bytes(128))
    with pytest.raises(ValueError, match="same non-zero length"):
        fastops.rmsnorm(x, vec(3))
    with pytest.raises(ValueError, match="same length"):
        fastops.rmsnorm_backward(x, 1.0, x, vec(3))
    with pytest.raises(ValueError, match="same length"):
        fastops.relu_act(x, vec(3), True)
    with pytest.raises(ValueError, match="same length"):
        fastops.relu_act_backward(x, x, vec(3), True)
    K = vec(8 * 16)
    with pytest.raises(ValueError, match="n_head"):
        fastops.attention(x, K, K, 1, 3, y, vec(3))
    with pytest.raises(ValueError, match="must hold n rows"):
        fastops.attention(x, K, K, 9, 4, y, vec(4 * 9))
    with pytest.raises(ValueError, match="must hold n rows"):
        fastops.attention(x, K, K, 2, 4, y, vec(4))
    with pytest.raises(ValueError, match="must hold n rows"):
        fastops.attention_backward(x, K, K, 3, 4, vec(12), x, y, vec(16), K)
    with pytest.raises(ValueError, match="target out of range"):
        fastops.cross_entropy(vec(27), 27, vec(27))
    with pytest.raises(ValueError, match="same non-zero length"):
        fastops.cross_entropy(vec(27), 0, vec(26))
    with pytest.raises(ValueError, match="target out of range"):
        fastops.cross_entropy_backward(vec(27), 1.0, -1, 1.0, vec(27))
    with pytest.raises(ValueError, match="same length"):
        fastops.add(x, x, vec(3))
    with pytest.raises(ValueError, match="same length"):
        fastops.axpy(1.0, x, vec(3))
    with pytest.raises(ValueError, match="same length"):
        fastops.adam(p, g, vec(3), vec(3), 0.01, 0.9, 0.95, 1e-8, 1, 1.0)
    with pytest.raises(ValueError, match="t >= 1"):
        fastops.adam(p, g, vec(len(p)), vec(len(p)), 0.01, 0.9, 0.95, 1e-8, 0, 1.0)
    with pytest.raises(TypeError, match="float64"):
        fastops.sum_squares(array("i", [1, 2]))


def test_kernels_compute_train_py_ops():
    """A few ops by hand: rmsnorm, relu^2 and the cross-entropy against their definitions."""
    import math
    x = array("d", [3.0, -4.0])
    out = vec(2)
    inv = fastops.rmsnorm(x, out)
    assert inv == pytest.approx((12.5 + 1e-5) ** -0.5) and list(out) == pytest.approx([3 * inv, -4 * inv])
    fastops.relu_act(x, out, True)
    assert list(out) == [9.0, 0.0]
    exps = vec(2)
    loss, total = fastops.cross_entropy(array("d", [1.0, 2.0]), 0, exps)
    assert loss == pytest.approx(math.log(math.e + math.e ** 2) - 1.0)

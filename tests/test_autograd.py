"""Finite-difference checks of every vector op in train.py and of the whole model."""

import random

import pytest

import train
from train import PythonEngine, Vec, Weight, attention, cross_entropy, dot, embed, linear, mean, relu_act, rmsnorm, vec_add
from conftest import make_setup

RNG = random.Random(0)
H = 1e-6
TOL = 1e-6


def rand_vec(n):
    return [RNG.uniform(-1.5, 1.5) for _ in range(n)]


def project(out: Vec, r: list[float]) -> Vec:
    """Scalar loss r . out, so every output element gets a distinct gradient."""
    def backward(g):
        out.grad = [a + g[0] * b for a, b in zip(out.grad, r)]
    return Vec([dot(out.data, r)], (out,), backward)


def check(build, tensors):
    """Compare the autograd gradient of build() w.r.t. every float in ``tensors`` (lists, mutated in
    place) with central differences. ``build`` returns (scalar node, {tensor index: grad getter})."""
    loss, grads = build()
    loss.backward()
    analytic = {k: [list(row) for row in get()] for k, get in grads.items()}
    for k, tensor in enumerate(tensors):
        for r, row in enumerate(tensor):
            for c in range(len(row)):
                orig = row[c]
                row[c] = orig + H
                plus = build()[0].data[0]
                row[c] = orig - H
                minus = build()[0].data[0]
                row[c] = orig
                fd = (plus - minus) / (2 * H)
                assert analytic[k][r][c] == pytest.approx(fd, rel=TOL, abs=TOL), (k, r, c)


def test_rmsnorm_and_add():
    a, b, r = [rand_vec(6)], [rand_vec(6)], rand_vec(6)

    def build():
        x, y = Vec(a[0]), Vec(b[0])
        out = project(rmsnorm(vec_add(x, y)), r)
        return out, {0: lambda: [x.grad], 1: lambda: [y.grad]}
    check(build, [a, b])


def test_linear_input_and_weight_grads():
    x0, w, r = [rand_vec(5)], [rand_vec(5) for _ in range(3)], rand_vec(3)

    def build():
        x, weight = Vec(x0[0]), Weight(w)
        return project(linear(x, weight), r), {0: lambda: [x.grad], 1: lambda: weight.grad}
    check(build, [x0, w])


@pytest.mark.parametrize("squared", [True, False])
def test_relu_activations(squared):
    x0, r = [rand_vec(8)], rand_vec(8)

    def build():
        x = Vec(x0[0])
        return project(relu_act(x, squared), r), {0: lambda: [x.grad]}
    check(build, [x0])


def test_attention_reaches_query_keys_and_values():
    n_head, n, t = 2, 6, 4
    q0, ks, vs, r = [rand_vec(n)], [rand_vec(n) for _ in range(t)], [rand_vec(n) for _ in range(t)], rand_vec(n)

    def build():
        q, keys, values = Vec(q0[0]), [Vec(k) for k in ks], [Vec(v) for v in vs]
        out = project(attention(q, keys, values, n_head), r)
        return out, {0: lambda: [q.grad], 1: lambda: [k.grad for k in keys], 2: lambda: [v.grad for v in values]}
    check(build, [q0, ks, vs])


def test_embedding_and_cross_entropy_and_mean():
    wte, wpe = [rand_vec(4) for _ in range(5)], [rand_vec(4) for _ in range(3)]

    def build():
        te, pe = Weight(wte), Weight(wpe)
        losses = [cross_entropy(embed(tok, pos, te, pe), target) for tok, pos, target in [(1, 0, 2), (4, 1, 0), (1, 2, 3)]]
        return mean(losses), {0: lambda: te.grad, 1: lambda: pe.grad}
    check(build, [wte, wpe])


@pytest.mark.parametrize("mlp_act", ["relu2", "relu"])
def test_whole_model_gradient(mlp_act):
    """Every 3rd parameter (every tensor is covered) of a 2-layer model, non-zero init so every path
    carries gradient."""
    cfg, params = make_setup(n_embd=8, n_layer=2, n_head=2, block_size=6, init_std=0.4,
                             zero_init_proj=False, mlp_act=mlp_act)
    docs = [[26, 1, 2, 3, 26], [26, 5, 0, 7, 9, 11, 26]]
    loss, grad = PythonEngine(cfg, None, params).loss_and_grad(docs)
    h = 1e-6
    for i in range(0, len(params), 3):
        p = params.copy()
        p.data[i] += h
        plus = PythonEngine(cfg, None, p).eval_loss(docs)
        p.data[i] -= 2 * h
        minus = PythonEngine(cfg, None, p).eval_loss(docs)
        assert grad[i] == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-8), i


def test_eval_builds_no_graph():
    cfg, params = make_setup()
    engine = PythonEngine(cfg, None, params)
    engine.eval_loss([[26, 1, 2, 26]])
    assert train.GRAD_ENABLED
    with train.no_grad():
        logits_node = engine.model.forward([26, 1, 2])
    assert train.GRAD_ENABLED
    assert logits_node.parents == () and logits_node.backward_fn is None


def test_autograd_demo_prints_hand_checked_gradients(capsys):
    train.autograd_demo()
    out = capsys.readouterr().out
    assert "df/da = [1.5, 5.0]" in out and "df/db = [2.0, -3.0]" in out and "f     = -12.0" in out

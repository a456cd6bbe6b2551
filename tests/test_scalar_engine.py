"""The scalar (micrograd-style) engine computes the same losses and gradients as the vector reference."""

import pytest

from microgpt.config import TrainConfig, lr_at
from train import PythonEngine
from engines.scalar import ScalarEngine
from conftest import encode_names, make_setup, read_names


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


@pytest.mark.parametrize("batch_size,grad_clip", [(1, 0.0), (3, 0.5)])
def test_twenty_steps_match_reference(batch_size, grad_clip):
    cfg, params = make_setup(n_embd=16, n_layer=1, n_head=4, block_size=8)
    tcfg = TrainConfig(num_steps=20, batch_size=batch_size, grad_clip=grad_clip).validate()
    docs = encode_names(read_names(20 * batch_size), cfg.block_size)
    ref, scalar = PythonEngine(cfg, tcfg, params), ScalarEngine(cfg, tcfg, params)
    for step in range(20):
        batch = docs[step * batch_size:(step + 1) * batch_size]
        lr = lr_at(step, tcfg)
        assert rel_err(ref.train_step(batch, lr), scalar.train_step(batch, lr)) < 1e-10, step
    final_ref, final_scalar = ref.export_params().data, scalar.export_params().data
    assert max(abs(a - b) for a, b in zip(final_ref, final_scalar)) < 1e-12


def test_gradients_and_logits_match_reference():
    cfg, params = make_setup(n_embd=8, n_layer=2, n_head=2, block_size=8, zero_init_proj=False, mlp_act="relu")
    docs = encode_names(read_names(2), cfg.block_size)
    loss_ref, grad_ref = PythonEngine(cfg, None, params).loss_and_grad(docs)
    loss_s, grad_s = ScalarEngine(cfg, None, params).loss_and_grad(docs)
    assert rel_err(loss_ref, loss_s) < 1e-12
    assert max(abs(a - b) for a, b in zip(grad_ref, grad_s)) < 1e-12
    tokens = docs[0][:4]
    assert PythonEngine(cfg, None, params).logits(tokens) == pytest.approx(ScalarEngine(cfg, None, params).logits(tokens),
                                                                          rel=1e-12, abs=1e-15)

"""engines/cython_engine.CythonEngine beyond the contract (tests/test_engine_contract.py): more shapes, the kernels' checks."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.config import TrainConfig
from train import PythonEngine

from engines import cython_ops  # built by setup.py with the other extensions; never skipped
from engines.cython_engine import CythonEngine


def assert_close(got, want, rel, floor=1e-12):
    """Elementwise |got - want| <= rel * max(|want|, floor), naming the worst element."""
    worst = max((abs(g - w) / max(abs(w), floor), i) for i, (g, w) in enumerate(zip(got, want)))
    assert len(got) == len(want) and worst[0] <= rel, f"element {worst[1]}: {got[worst[1]]} vs {want[worst[1]]}"


def batches_of(docs, size, count):
    return [docs[size * s:size * (s + 1)] for s in range(count)]


#: Shapes beyond the contract's one model (tests/test_engine_contract.py): three heads of 8, and a wider
#: model with a longer block, where the kernels' loops take other trip counts.
SHAPES = [((24, 2, 3, 8), {"mlp_act": "relu", "zero_init_proj": False}, 1.0),
          ((32, 2, 4, 16), {}, 0.5)]


@pytest.mark.parametrize("shape, kw, clip", SHAPES, ids=["relu-2layer-3heads-clip", "wide-clip"])
def test_twenty_steps_and_step0_gradients_match_reference(shape, kw, clip):
    cfg, params = make_setup(*shape, **kw)
    tcfg = TrainConfig(num_steps=20, batch_size=2, grad_clip=clip).validate()
    batches = batches_of(encode_names(read_names(40), cfg.block_size), 2, 20)
    ref, cy = PythonEngine(cfg, tcfg, params.copy()), CythonEngine(cfg, tcfg, params.copy())
    assert cy.name == "cython"

    loss, grad = cy.loss_and_grad(batches[0])
    want_loss, want_grad = ref.loss_and_grad(batches[0])
    assert isinstance(grad, array) and grad.typecode == "d"
    assert loss == pytest.approx(want_loss, rel=1e-9)
    assert_close(grad, want_grad, rel=1e-9, floor=1e-6)

    lrs = [0.01 * (1 - s / 20) for s in range(20)]
    assert_close([cy.train_step(b, lr) for b, lr in zip(batches, lrs)],
                 [ref.train_step(b, lr) for b, lr in zip(batches, lrs)], rel=1e-9)
    assert_close(cy.export_params().data, ref.export_params().data, rel=1e-9, floor=1e-6)
    got, want = cy.export_adam(), ref.export_adam()
    assert got.t == want.t == 20
    assert_close(got.m, want.m, rel=1e-9, floor=1e-6)
    assert_close(got.v, want.v, rel=1e-9, floor=1e-9)
    assert cy.eval_loss(batches[3]) == pytest.approx(ref.eval_loss(batches[3]), rel=1e-9)
    assert_close(cy.logits([26, 0, 12]), ref.logits([26, 0, 12]), rel=1e-9, floor=1e-6)


def test_the_kernels_check_their_buffers():
    """The kernels check shapes on entry even though their loops run without bounds checks (the engine's
    own bad input: tests/test_engine_contract.py)."""
    x, w, out = (memoryview(array("d", [0.0] * n)).cast("B").cast("d", s) for n, s in
                 ((8, (2, 4)), (12, (3, 4)), (4, (2, 2))))
    with pytest.raises(ValueError, match="linear: x is"):
        cython_ops.linear_forward(x, w, out, 2)
    with pytest.raises(ValueError, match="outside the buffer"):
        cython_ops.rmsnorm_forward(x, x, array("d", [0.0] * 2), 5)
    with pytest.raises(ValueError, match="heads do not divide"):
        cython_ops.attention_forward(x, x, x, memoryview(array("d", [0.0] * 12)).cast("B").cast("d", (3, 2, 2)),
                                     x, 3, 2)

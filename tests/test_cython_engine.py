"""engines/cython_engine.CythonEngine: the reference's losses and gradients, the contract, bad input."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from microgpt import UserError
from microgpt.config import TrainConfig
from microgpt.params import AdamState
from train import PythonEngine

from engines import cython_ops  # built by setup.py with the other extensions; never skipped
from engines.cython_engine import CythonEngine


def assert_close(got, want, rel, floor=1e-12):
    """Elementwise |got - want| <= rel * max(|want|, floor), naming the worst element."""
    worst = max((abs(g - w) / max(abs(w), floor), i) for i, (g, w) in enumerate(zip(got, want)))
    assert len(got) == len(want) and worst[0] <= rel, f"element {worst[1]}: {got[worst[1]]} vs {want[worst[1]]}"


def batches_of(docs, size, count):
    return [docs[size * s:size * (s + 1)] for s in range(count)]


SHAPES = [((16, 1, 4, 8), {}, 0.0),
          ((24, 2, 3, 8), {"mlp_act": "relu", "zero_init_proj": False}, 1.0),
          ((32, 2, 4, 16), {}, 0.5)]


@pytest.mark.parametrize("shape, kw, clip", SHAPES, ids=["default", "relu-2layer-clip", "wide-clip"])
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


def test_float32_follows_reference_within_1e_4():
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=20, batch_size=2).validate()
    batches = batches_of(encode_names(read_names(40), cfg.block_size), 2, 20)
    ref, cy = PythonEngine(cfg, tcfg, params.copy()), CythonEngine(cfg, tcfg, params.copy(), dtype="float32")
    assert cy.loss_and_grad(batches[0])[0] == pytest.approx(ref.loss_and_grad(batches[0])[0], rel=1e-6)
    assert_close([cy.train_step(b, 0.01) for b in batches], [ref.train_step(b, 0.01) for b in batches], rel=1e-4)
    exported = cy.export_params()
    assert exported.data.typecode == "d" and len(exported) == len(params)


def test_checkpoint_handover_with_the_reference_is_exact_to_rounding():
    """Python trains 6 steps, Cython continues 6 (and resumes itself bit for bit)."""
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=12, grad_clip=1.0).validate()
    batches = batches_of(encode_names(read_names(12), cfg.block_size), 1, 12)
    ref = PythonEngine(cfg, tcfg, params.copy())
    want = [ref.train_step(b, 0.01) for b in batches]

    py = PythonEngine(cfg, tcfg, params.copy())
    got = [py.train_step(b, 0.01) for b in batches[:6]]
    cy = CythonEngine(cfg, tcfg, py.export_params())
    cy.import_adam(py.export_adam())
    got += [cy.train_step(b, 0.01) for b in batches[6:9]]
    resumed = CythonEngine(cfg, tcfg, cy.export_params())
    resumed.import_adam(cy.export_adam())
    twin = [cy.train_step(b, 0.01) for b in batches[9:]]
    got += [resumed.train_step(b, 0.01) for b in batches[9:]]
    assert got[9:] == twin
    assert_close(got, want, rel=1e-10)


def test_bad_input_is_a_one_line_error_not_a_crash():
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=5).validate()
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        CythonEngine(cfg, tcfg, params, dtype="float16")
    with pytest.raises(ValueError, match="one thread"):
        CythonEngine(cfg, tcfg, params, threads=2)
    cy = CythonEngine(cfg, tcfg, params)
    with pytest.raises(ValueError, match="token id 40 out of range"):
        cy.train_step([[26, 40, 26]], 0.01)
    with pytest.raises(ValueError, match="target id 27 out of range"):
        cy.eval_loss([[26, 1, 27]])
    with pytest.raises(ValueError, match="must hold 1..8 input tokens"):
        cy.train_step([[26] + [1] * 9 + [26]], 0.01)
    with pytest.raises(ValueError, match="at least one document"):
        cy.train_step([], 0.01)
    with pytest.raises(UserError, match="Adam state holds 3/3 moments"):
        cy.import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))
    # the kernels check shapes on entry even though their loops run without bounds checks
    x, w, out = (memoryview(array("d", [0.0] * n)).cast("B").cast("d", s) for n, s in
                 ((8, (2, 4)), (12, (3, 4)), (4, (2, 2))))
    with pytest.raises(ValueError, match="linear: x is"):
        cython_ops.linear_forward(x, w, out, 2)
    with pytest.raises(ValueError, match="outside the buffer"):
        cython_ops.rmsnorm_forward(x, x, array("d", [0.0] * 2), 5)
    with pytest.raises(ValueError, match="heads do not divide"):
        cython_ops.attention_forward(x, x, x, memoryview(array("d", [0.0] * 12)).cast("B").cast("d", (3, 2, 2)),
                                     x, 3, 2)


def test_cli_trains_and_samples(names_file):
    r = run_cli("--engine", "cython", "--data", names_file, "--num-steps", "8", "--n-embd", "8", "--n-head", "2",
                "--block-size", "8", "--eval-every", "4", "--eval-docs", "10", "--num-samples", "3")
    assert r.returncode == 0, r.stderr
    assert "engine cython (float64, 1 thread)" in r.stdout and "step 8/8 | loss" in r.stdout
    assert len(r.stdout.split("samples:")[1].split()) == 3

"""engines.numpy_manual.NumpyEngine: equivalence with the reference, float32, padding, contract, CLI."""

from array import array

import numpy as np
import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from engines import load_engine
from engines.numpy_manual import NumpyEngine
from microgpt import UserError
from microgpt.config import TrainConfig, lr_at
from microgpt.params import AdamState
from train import PythonEngine


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def max_abs_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("model_kw,batch_size,grad_clip", [
    ({}, 1, 0.0),
    ({}, 4, 0.5),   # documents of different lengths in one padded batch, with clipping active
    ({"n_embd": 8, "n_layer": 2, "n_head": 2, "mlp_act": "relu", "zero_init_proj": False}, 3, 0.0),
])
def test_twenty_steps_match_reference_float64(model_kw, batch_size, grad_clip):
    cfg, params = make_setup(block_size=8, **model_kw)
    tcfg = TrainConfig(num_steps=20, batch_size=batch_size, grad_clip=grad_clip).validate()
    docs = encode_names(read_names(20 * batch_size), cfg.block_size)
    ref, eng = PythonEngine(cfg, tcfg, params), NumpyEngine(cfg, tcfg, params)
    loss_ref, grad_ref = ref.loss_and_grad(docs[:batch_size])
    loss, grad = eng.loss_and_grad(docs[:batch_size])
    assert isinstance(grad, array) and grad.typecode == "d" and len(grad) == len(params)
    assert rel_err(loss, loss_ref) < 1e-12
    assert max_abs_diff(grad, grad_ref) < 1e-13 * max(map(abs, grad_ref))
    for step in range(20):
        batch, lr = docs[step * batch_size:(step + 1) * batch_size], lr_at(step, tcfg)
        assert rel_err(eng.train_step(batch, lr), ref.train_step(batch, lr)) < 1e-9, step
    assert max_abs_diff(eng.export_params().data, ref.export_params().data) < 1e-9
    got, want = eng.export_adam(), ref.export_adam()
    assert got.t == want.t == 20
    assert max_abs_diff(got.v, want.v) < 1e-9 * max(want.v)
    assert rel_err(eng.eval_loss(docs[:7]), ref.eval_loss(docs[:7])) < 1e-12
    assert eng.logits(docs[0][:4]) == pytest.approx(ref.logits(docs[0][:4]), rel=1e-12, abs=1e-14)


def test_float32_matches_reference_to_1e4():
    cfg, params = make_setup(block_size=8)
    tcfg = TrainConfig(num_steps=20, batch_size=4).validate()
    docs = encode_names(read_names(80), cfg.block_size)
    ref, eng = PythonEngine(cfg, tcfg, params), NumpyEngine(cfg, tcfg, params, dtype="float32")
    assert eng.params.dtype == eng.grads.dtype == np.float32
    loss_ref, grad_ref = ref.loss_and_grad(docs[:4])
    loss, grad = eng.loss_and_grad(docs[:4])
    assert rel_err(loss, loss_ref) < 1e-4
    assert max_abs_diff(grad, grad_ref) < 1e-4 * max(map(abs, grad_ref))
    for step in range(20):
        batch, lr = docs[step * 4:(step + 1) * 4], lr_at(step, tcfg)
        assert rel_err(eng.train_step(batch, lr), ref.train_step(batch, lr)) < 1e-4, step
    exported = eng.export_params()
    assert exported.data.typecode == "d"


def test_padding_changes_nothing():
    """A document's loss is the same alone and padded inside a batch of longer ones."""
    cfg, params = make_setup(block_size=8)
    eng = NumpyEngine(cfg, None, params)
    short, long_ = [26, 0, 26], [26, 1, 2, 3, 4, 5, 6, 7, 8]
    alone = [eng.eval_loss([short]), eng.eval_loss([long_])]
    assert eng.eval_loss([short, long_]) == pytest.approx(sum(alone) / 2, rel=1e-14)


def test_resume_through_export_is_exact():
    cfg, params = make_setup(block_size=8)
    tcfg = TrainConfig(num_steps=10, batch_size=2).validate()
    docs = encode_names(read_names(20), cfg.block_size)
    batches = [docs[2 * s:2 * s + 2] for s in range(10)]
    straight = NumpyEngine(cfg, tcfg, params)
    want = [straight.train_step(b, 0.01) for b in batches]
    first = NumpyEngine(cfg, tcfg, params)
    got = [first.train_step(b, 0.01) for b in batches[:5]]
    resumed = NumpyEngine(cfg, tcfg, first.export_params())
    resumed.import_adam(first.export_adam())
    got += [resumed.train_step(b, 0.01) for b in batches[5:]]
    assert got == want


def test_bad_arguments():
    cfg, params = make_setup(block_size=8)
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        NumpyEngine(cfg, None, params, dtype="float16")
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        NumpyEngine(cfg, None, params, threads=0)
    eng = NumpyEngine(cfg, None, params, threads=2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 27\)"):
        eng.eval_loss([[26, 40, 26]])
    with pytest.raises(ValueError, match="documents must hold 2..9 tokens"):
        eng.eval_loss([[26]])
    with pytest.raises(ValueError, match="at least one document"):
        eng.eval_loss([])
    with pytest.raises(UserError, match="Adam state holds 3/3 moments"):
        eng.import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))


def test_registered_and_trains_from_the_cli(names_file, tmp_path):
    assert load_engine("numpy") is NumpyEngine
    ckpt = tmp_path / "numpy.ckpt"
    r = run_cli("--engine", "numpy", "--data", names_file, "--num-steps", "30", "--batch-size", "4",
                "--block-size", "8", "--dtype", "float32", "--threads", "2", "--num-samples", "3", "--save", ckpt)
    assert r.returncode == 0, r.stderr
    assert "engine numpy (float32, 2 threads)" in r.stdout and "samples:" in r.stdout
    # the checkpoint it wrote is sampled from by the reference engine
    r = run_cli("--sample-from", ckpt, "--num-samples", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 2

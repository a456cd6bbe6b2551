"""train_fast.FastEngine: the engine contract, checkpoints across trainers, and float32 export."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt import UserError
from microgpt.config import TrainConfig
from microgpt.params import AdamState
from train import PythonEngine

pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
from train_fast import FastEngine  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=40, batch_size=2).validate()
    docs = encode_names(read_names(200), cfg.block_size)
    return cfg, tcfg, params, [docs[2 * s:2 * s + 2] for s in range(40)]


def test_contract_matches_reference(setup):
    cfg, tcfg, params, batches = setup
    ref, fast = PythonEngine(cfg, tcfg, params.copy()), FastEngine(cfg, tcfg, params.copy())
    assert fast.name == "c"
    loss, grad = fast.loss_and_grad(batches[0])
    want_loss, want_grad = ref.loss_and_grad(batches[0])
    assert isinstance(grad, array) and grad.typecode == "d"
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert max(abs(a - b) for a, b in zip(grad, want_grad)) < 1e-14
    for step, docs in enumerate(batches[:10]):
        assert fast.train_step(docs, 0.01) == pytest.approx(ref.train_step(docs, 0.01), rel=1e-10)
    assert fast.eval_loss(batches[20]) == pytest.approx(ref.eval_loss(batches[20]), rel=1e-10)
    assert fast.logits([26, 1, 2]) == pytest.approx(ref.logits([26, 1, 2]), rel=1e-9, abs=1e-12)
    got, want = fast.export_adam(), ref.export_adam()
    assert got.t == want.t == 10
    assert list(got.m) == pytest.approx(list(want.m), rel=1e-8, abs=1e-15)
    assert list(fast.export_params().data) == pytest.approx(list(ref.export_params().data), rel=1e-9, abs=1e-15)


def test_resume_from_a_checkpoint_is_bit_exact(setup):
    cfg, tcfg, params, batches = setup
    straight = FastEngine(cfg, tcfg, params.copy())
    want = [straight.train_step(b, 0.01) for b in batches]
    first = FastEngine(cfg, tcfg, params.copy())
    got = [first.train_step(b, 0.01) for b in batches[:15]]
    resumed = FastEngine(cfg, tcfg, first.export_params())
    resumed.import_adam(first.export_adam())
    got += [resumed.train_step(b, 0.01) for b in batches[15:]]
    assert got == want
    assert resumed.export_params().data == straight.export_params().data


def test_checkpoints_move_between_train_py_and_train_fast_py(setup):
    """Python trains, C continues (and the other way round): both follow the reference curve."""
    cfg, tcfg, params, batches = setup
    ref = PythonEngine(cfg, tcfg, params.copy())
    want = [ref.train_step(b, 0.01) for b in batches[:20]]

    py = PythonEngine(cfg, tcfg, params.copy())
    got = [py.train_step(b, 0.01) for b in batches[:10]]
    fast = FastEngine(cfg, tcfg, py.export_params())
    fast.import_adam(py.export_adam())
    got += [fast.train_step(b, 0.01) for b in batches[10:20]]
    assert got == pytest.approx(want, rel=1e-10)

    back = PythonEngine(cfg, tcfg, fast.export_params())
    back.import_adam(fast.export_adam())
    assert back.train_step(batches[20], 0.01) == pytest.approx(ref.train_step(batches[20], 0.01), rel=1e-10)


def test_float32_engine_exports_float64(setup):
    cfg, tcfg, params, batches = setup
    ref, fast = PythonEngine(cfg, tcfg, params.copy()), FastEngine(cfg, tcfg, params.copy(), dtype="float32")
    for docs in batches[:20]:
        assert fast.train_step(docs, 0.01) == pytest.approx(ref.train_step(docs, 0.01), rel=1e-4)
    exported = fast.export_params()
    assert exported.data.typecode == "d" and len(exported) == len(params)
    state = fast.export_adam()
    assert state.m.typecode == state.v.typecode == "d" and state.t == 20
    again = FastEngine(cfg, tcfg, exported, dtype="float32")
    again.import_adam(state)
    assert again.export_adam().m == state.m, "float32 moments survive a float64 round trip exactly"


def test_bad_arguments(setup):
    cfg, tcfg, params, _ = setup
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        FastEngine(cfg, tcfg, params, dtype="float16")
    with pytest.raises(ValueError, match="threads must be in"):
        FastEngine(cfg, tcfg, params, threads=0)
    fast = FastEngine(cfg, tcfg, params)
    with pytest.raises(UserError, match="Adam state holds 3/3 moments"):
        fast.import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))
    with pytest.raises(ValueError, match="out of range"):
        fast.train_step([[26, 40, 26]], 0.01)

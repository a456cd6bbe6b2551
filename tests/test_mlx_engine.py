"""engines.mlx_cpu beyond the contract (tests/test_engine_contract.py): devices, one-document batches."""

import mlx.core as mx
import pytest

from conftest import encode_names, make_setup, read_names
from engines import mlx_cpu
from engines.mlx_cpu import MlxCompiledEngine, MlxEngine
from microgpt.config import TrainConfig, lr_at
from train import PythonEngine


def test_devices():
    """cpu, and the GPU (mps/cuda) in float32 where MLX has one, else a one-line refusal (the rest of the
    contract's bad arguments: tests/test_engine_contract.py)."""
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=2).validate()
    with pytest.raises(ValueError, match="device must be one of cpu, mps, cuda"):
        MlxEngine(cfg, tcfg, params, device="tpu")
    if mx.is_available(mx.gpu):
        with pytest.raises(ValueError, match="float64 on the CPU only"):
            MlxEngine(cfg, tcfg, params, device="mps")
        assert MlxEngine(cfg, tcfg, params, dtype="float32", device="mps").train_step([[26, 0, 26]], 0.01) > 0
    else:
        with pytest.raises(ValueError, match="no GPU backend here"):
            MlxEngine(cfg, tcfg, params, dtype="float32", device="mps")


@pytest.mark.parametrize("compiled", [False, True], ids=["mlx", "mlx-compile"])
@pytest.mark.parametrize("dtype,rel", [("float64", 1e-12), ("float32", 1e-4)])
def test_one_document_steps_match_the_reference(compiled, dtype, rel):
    """Batches of one document take their own path (the document is its own grid; eager mlx at its exact
    length, mx.compile at a bucketed one), which the contract's batches of two never reach: a few steps of
    documents of different lengths, with clipping, against train.py's engine."""
    cfg, params = make_setup(8, 2, 2, 8, mlp_act="relu", zero_init_proj=False)
    tcfg = TrainConfig(num_steps=4, grad_clip=0.5).validate()
    docs = sorted(encode_names(read_names(12), cfg.block_size), key=len)[::3]  # short to long
    assert len({len(d) for d in docs}) > 1
    ref, engine = PythonEngine(cfg, tcfg, params.copy()), (MlxCompiledEngine if compiled else MlxEngine)(
        cfg, tcfg, params.copy(), dtype=dtype)
    for step, doc in enumerate(docs):
        want, got = ref.train_step([doc], lr_at(step, tcfg)), engine.train_step([doc], lr_at(step, tcfg))
        assert abs(got - want) <= rel * abs(want)
    want, got = ref.export_params().data, engine.export_params().data
    scale = max(map(abs, want))
    assert max(abs(a - b) for a, b in zip(got, want)) <= rel * scale


@pytest.mark.parametrize("dtype,rel", [("float64", 1e-12), ("float32", 1e-4)])
def test_compiled_exact_shapes_match_the_reference(monkeypatch, dtype, rel):
    """mlx-compile takes batches of several documents at their exact shape from EXACT_SHAPES_FROM parameters
    on (small and up; the contract's models are below it): lowered to 0 here, steps of batches of different
    shapes, with clipping, against train.py's engine: a shape's first step runs eagerly, a shape seen before
    compiled."""
    monkeypatch.setattr(mlx_cpu, "EXACT_SHAPES_FROM", 0)
    cfg, params = make_setup(8, 2, 2, 8, zero_init_proj=False)
    tcfg = TrainConfig(num_steps=5, grad_clip=0.5).validate()
    docs = encode_names(read_names(9), cfg.block_size)
    batches = [docs[0:2], docs[2:5], docs[0:2], docs[5:9], docs[2:5]]   # the 3rd and 5th: a shape seen before
    ref, engine = PythonEngine(cfg, tcfg, params.copy()), MlxCompiledEngine(cfg, tcfg, params.copy(), dtype=dtype)
    assert engine.bucketed == {False: True, True: False}
    for step, batch in enumerate(batches):
        want, got = ref.train_step(batch, lr_at(step, tcfg)), engine.train_step(batch, lr_at(step, tcfg))
        assert abs(got - want) <= rel * abs(want)
    assert len(engine.seen_shapes) == 3
    want, got = ref.export_params().data, engine.export_params().data
    scale = max(map(abs, want))
    assert max(abs(a - b) for a, b in zip(got, want)) <= rel * scale

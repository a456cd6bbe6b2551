"""fastops.InferenceGPT: token-by-token inference with float32 or per-row int8 weights."""

import random
from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.config import TrainConfig
from train import PythonEngine

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
from train_fast import FastEngine  # noqa: E402

ISAS = ["generic"] + (["avx512"] if "avx512" in fastops.available_isas() else [])


@pytest.fixture(scope="module")
def trained():
    """A (32,2,8) model after 300 steps, so that the weights are not the initial Gaussians."""
    cfg, params = make_setup(32, 2, 4, 8)
    docs = encode_names(read_names(1500), cfg.block_size)
    engine = FastEngine(cfg, TrainConfig(num_steps=300).validate(), params)
    engine.train_steps([docs[2 * s:2 * s + 2] for s in range(300)], [0.01] * 300)
    return cfg, engine, docs[1000:1200]


def infer(cfg, params, **kw):
    return fastops.InferenceGPT(params, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size,
                                mlp_act=cfg.mlp_act, **kw)


@pytest.mark.parametrize("isa", ISAS)
def test_float32_inference_matches_the_trainer(isa, trained):
    cfg, engine, val = trained
    model = infer(cfg, engine.export_params().data, int8=False, isa=isa)
    assert not model.int8 and model.isa == isa
    for doc in val[:20]:
        assert model.logits(doc[:-1]) == pytest.approx(engine.logits(doc[:-1]), rel=1e-4, abs=1e-5)
    assert model.eval_loss(val) == pytest.approx(engine.eval_loss(val), rel=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_is_close_to_float32_and_smaller(isa, trained):
    cfg, engine, val = trained
    params = engine.export_params().data
    fp32, int8 = infer(cfg, params, int8=False), infer(cfg, params, isa=isa)
    assert int8.int8
    assert int8.weight_bytes < fp32.weight_bytes / 2.5
    assert abs(int8.eval_loss(val) - fp32.eval_loss(val)) < 0.02
    for doc in val[:20]:
        a, b = int8.logits(doc[:-1]), fp32.logits(doc[:-1])
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.1 * max(abs(y) for y in b)


def test_int8_kernels_agree_across_instruction_sets(trained):
    cfg, engine, val = trained
    params = engine.export_params().data
    models = [infer(cfg, params, isa=isa) for isa in ISAS]
    for doc in val[:10]:
        results = [m.logits(doc[:-1]) for m in models]
        assert all(r == pytest.approx(results[0], rel=1e-6, abs=1e-6) for r in results)


def test_kv_cache_reuse_gives_the_same_logits_as_a_fresh_model(trained):
    cfg, engine, _ = trained
    params = engine.export_params().data
    rng = random.Random(0)
    warm = infer(cfg, params)
    for _ in range(30):
        tokens = [26] + [rng.randrange(26) for _ in range(rng.randrange(cfg.block_size))]
        assert warm.logits(tokens) == infer(cfg, params).logits(tokens)


def test_untrained_model_with_zero_rows():
    """attn_wo and mlp_fc2 start at zero: all-zero rows and all-zero inputs must not divide by zero."""
    cfg, params = make_setup(16, 1, 4, 8)
    ref = PythonEngine(cfg, TrainConfig(), params.copy())
    model = infer(cfg, params.data)
    assert model.logits([26, 3, 4]) == pytest.approx(ref.logits([26, 3, 4]), abs=2e-3)


def test_bad_arguments():
    cfg, params = make_setup(16, 1, 4, 8)
    dims = (27, 16, 1, 4, 8)
    with pytest.raises(ValueError, match="params holds 3 values"):
        fastops.InferenceGPT(array("d", [0.0] * 3), *dims)
    with pytest.raises(TypeError, match="float64 .* or float32"):
        fastops.InferenceGPT(array("i", [0] * len(params)), *dims)
    with pytest.raises(TypeError, match="contiguous float64 or float32 buffer"):
        fastops.InferenceGPT([0.0] * len(params), *dims)
    with pytest.raises(ValueError, match="n_head must divide n_embd"):
        fastops.InferenceGPT(params.data, 27, 16, 1, 3, 8)
    with pytest.raises(ValueError, match="block_size must be in"):
        fastops.InferenceGPT(params.data, 27, 16, 1, 4, 0)
    with pytest.raises(ValueError, match="isa must be"):
        fastops.InferenceGPT(params.data, *dims, isa="neon")
    model = fastops.InferenceGPT(params.data, *dims)
    with pytest.raises(ValueError, match="1 to block_size = 8 token ids, got 9"):
        model.logits([26] * 9)
    with pytest.raises(ValueError, match="got 0"):
        model.logits([])
    with pytest.raises(ValueError, match="id 27 is out of range"):
        model.logits([26, 27])
    with pytest.raises(TypeError, match="token ids must be integers"):
        model.logits([26, "a"])
    with pytest.raises(ValueError, match="document 1 has 1 token ids"):
        model.eval_loss([[26, 1, 26], [26]])
    with pytest.raises(ValueError, match="id 30 is out of range"):
        model.eval_loss([[26, 1, 30]])
    with pytest.raises(ValueError, match="at least one document"):
        model.eval_loss([])
    assert len(model.logits([26, 1])) == 27

"""The flat parameter layout: contiguous, ordered, seeded, and shared by every engine."""

from array import array

import pytest

from microgpt.config import ModelConfig
from microgpt.params import FlatParams, init_params, layout, num_params


def test_layout_is_contiguous_in_the_documented_order():
    cfg = ModelConfig(vocab_size=27, n_embd=8, n_layer=2, n_head=2, block_size=5)
    tensors = layout(cfg)
    assert [t.name for t in tensors] == ["wte", "wpe"] + [f"layer{l}.{n}" for l in range(2) for n in (
        "attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")] + ["lm_head"]
    offset = 0
    for t in tensors:
        assert t.offset == offset
        offset += t.size
    assert num_params(cfg) == offset == 27 * 8 * 2 + 5 * 8 + 2 * (4 * 64 + 2 * 4 * 64)
    shapes = {t.name: (t.rows, t.cols) for t in tensors}
    assert shapes["layer1.mlp_fc1"] == (32, 8) and shapes["layer1.mlp_fc2"] == (8, 32) and shapes["wpe"] == (5, 8)


def test_init_is_seeded_and_zeroes_output_projections():
    cfg = ModelConfig(vocab_size=27)
    a, b, c = init_params(cfg, 1), init_params(cfg, 1), init_params(cfg, 2)
    assert a.data == b.data and a.data != c.data
    wo, fc2, wq = a.tensors["layer0.attn_wo"], a.tensors["layer0.mlp_fc2"], a.tensors["layer0.attn_wq"]
    assert not any(a.data[wo.offset:wo.offset + wo.size]) and not any(a.data[fc2.offset:fc2.offset + fc2.size])
    values = a.data[wq.offset:wq.offset + wq.size]
    std = (sum(v * v for v in values) / len(values)) ** 0.5
    assert 0.015 < std < 0.025
    full = init_params(ModelConfig(vocab_size=27, zero_init_proj=False), 1)
    assert any(full.data[wo.offset:wo.offset + wo.size])


def test_rows_view_and_size_check():
    cfg = ModelConfig(vocab_size=3, n_embd=4, n_head=2, block_size=2)
    p = FlatParams(cfg, array("d", range(num_params(cfg))))
    assert p.rows("wte") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="layout needs"):
        FlatParams(cfg, array("d", [0.0] * 5))

"""The analytic FLOP/byte model (microgpt/flops.py) against torch's FlopCounterMode and against itself."""

import math
import random

import pytest

from microgpt import UserError
from microgpt.config import ModelConfig
from microgpt.flops import (ADAM_FLOPS_PER_PARAM, ADAM_VALUES_PER_PARAM, FUSED_MAX_TOKENS, FUSION_SAVED_VALUES,
                            GRAD_NORM, PHASES, doc_lengths, phase_costs, step_cost, step_ops, working_set_bytes)
from microgpt.params import num_params

CONFIGS = [
    ModelConfig(),                                                        # the default: 16 wide, 1 layer, 4 heads
    ModelConfig(n_embd=32, n_layer=2, n_head=2, block_size=8, mlp_act="relu"),
    ModelConfig(vocab_size=50, n_embd=24, n_layer=3, n_head=6, block_size=12),
]
LENGTHS = [[1], [16, 3, 7], [8, 8, 1, 2]]


def _lengths_for(cfg, lengths):
    return [min(n, cfg.block_size) for n in lengths]


# --- the PyTorch reference forward, written from the model spec -------------------------------------

def _torch_weights(torch, cfg):
    g = torch.Generator().manual_seed(0)
    shapes = {"wte": (cfg.vocab_size, cfg.n_embd), "wpe": (cfg.block_size, cfg.n_embd),
              "lm_head": (cfg.vocab_size, cfg.n_embd)}
    for l in range(cfg.n_layer):
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            shapes[f"layer{l}.{name}"] = (cfg.n_embd, cfg.n_embd)
        shapes[f"layer{l}.mlp_fc1"] = (4 * cfg.n_embd, cfg.n_embd)
        shapes[f"layer{l}.mlp_fc2"] = (cfg.n_embd, 4 * cfg.n_embd)
    return {k: (0.1 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_() for k, shape in shapes.items()}


def _rmsnorm(x):
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def _mlp(torch, W, l, cfg, x):
    h = _rmsnorm(x)
    u = torch.relu(torch.nn.functional.linear(h, W[f"layer{l}.mlp_fc1"]))
    u = u * u if cfg.mlp_act == "relu2" else u
    return torch.nn.functional.linear(u, W[f"layer{l}.mlp_fc2"]) + x


def _doc_loss_dense(torch, W, cfg, doc):
    """One document as matrices: all n x n scores, the future masked out."""
    F = torch.nn.functional
    n, H, D = len(doc) - 1, cfg.n_head, cfg.head_dim
    tokens, targets = torch.tensor(doc[:-1]), torch.tensor(doc[1:])
    x = _rmsnorm(W["wte"][tokens] + W["wpe"][:n])
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    for l in range(cfg.n_layer):
        h = _rmsnorm(x)
        q, k, v = (F.linear(h, W[f"layer{l}.attn_w{c}"]).view(n, H, D).transpose(0, 1) for c in "qkv")
        scores = (q @ k.transpose(1, 2) / math.sqrt(D)).masked_fill(future, float("-inf"))
        o = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, cfg.n_embd)
        x = _mlp(torch, W, l, cfg, F.linear(o, W[f"layer{l}.attn_wo"]) + x)
    return F.cross_entropy(F.linear(x, W["lm_head"]), targets)


def _doc_loss_causal(torch, W, cfg, doc):
    """One document token by token with a KV cache: position p scores exactly p + 1 keys."""
    F = torch.nn.functional
    H, D = cfg.n_head, cfg.head_dim
    keys, values = [[] for _ in range(cfg.n_layer)], [[] for _ in range(cfg.n_layer)]
    losses = []
    for p in range(len(doc) - 1):
        x = _rmsnorm(W["wte"][doc[p]:doc[p] + 1] + W["wpe"][p:p + 1])           # (1, C)
        for l in range(cfg.n_layer):
            h = _rmsnorm(x)
            q, k, v = (F.linear(h, W[f"layer{l}.attn_w{c}"]) for c in "qkv")
            keys[l].append(k)
            values[l].append(v)
            K = torch.cat(keys[l]).view(p + 1, H, D).transpose(0, 1)             # (H, p+1, D)
            Vs = torch.cat(values[l]).view(p + 1, H, D).transpose(0, 1)
            a = torch.softmax(q.view(H, 1, D) @ K.transpose(1, 2) / math.sqrt(D), dim=-1)
            o = (a @ Vs).reshape(1, cfg.n_embd)
            x = _mlp(torch, W, l, cfg, F.linear(o, W[f"layer{l}.attn_wo"]) + x)
        losses.append(F.cross_entropy(F.linear(x, W["lm_head"]), torch.tensor([doc[p + 1]])))
    return torch.stack(losses).mean()


def _counted_matmul_flops(torch, cfg, docs, doc_loss):
    """(forward, backward) FLOPs that FlopCounterMode sees for one batch's loss and gradient."""
    from torch.utils.flop_counter import FlopCounterMode
    W = _torch_weights(torch, cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = torch.stack([doc_loss(torch, W, cfg, doc) for doc in docs]).mean()
    forward = counter.get_total_flops()
    with counter:
        loss.backward()
    return forward, counter.get_total_flops()


def _random_docs(cfg, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(cfg.vocab_size) for _ in range(n + 1)] for n in lengths]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "wide-relu", "deep"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("attention", ["dense", "causal"])
def test_matmul_flops_equal_torch_flop_counter(cfg, lengths, attention):
    torch = pytest.importorskip("torch")
    lengths = _lengths_for(cfg, lengths)
    docs = _random_docs(cfg, lengths)
    forward, backward = _counted_matmul_flops(torch, cfg, docs,
                                              _doc_loss_dense if attention == "dense" else _doc_loss_causal)
    cost = step_cost(cfg, doc_lengths(docs), attention=attention)
    assert (cost.matmul_fwd_flops, cost.matmul_bwd_flops) == (forward, backward)


# --- internal consistency ----------------------------------------------------------------------------

def test_totals_are_the_sum_of_the_ops():
    cfg, lengths = ModelConfig(n_layer=2), [3, 9, 16]
    ops, cost = step_ops(cfg, lengths), step_cost(cfg, lengths)
    assert cost.flops == sum(op.fwd_flops + op.bwd_flops + op.upd_flops for op in ops)
    assert cost.bytes == sum(op.fwd_bytes + op.bwd_bytes + op.upd_bytes for op in ops)
    assert cost.intensity == pytest.approx(cost.flops / cost.bytes)


def test_weight_matmuls_hand_count_for_one_position():
    # one position, default config: q, k, v, o (16x16), fc1/fc2 (64x16), lm_head (27x16), each 2 FLOPs per weight
    cfg = ModelConfig()
    ops = {op.name: op for op in step_ops(cfg, [1])}
    assert ops["attn q/k/v"].fwd_flops == 3 * 2 * 16 * 16
    assert ops["mlp fc1"].fwd_flops == ops["mlp fc2"].fwd_flops == 2 * 64 * 16
    assert ops["lm_head"].fwd_flops == 2 * 27 * 16
    assert ops["attn scores"].fwd_flops == 2 * 16          # one query . one key, all heads together
    assert ops["adam"].upd_flops == 14 * num_params(cfg)


def test_attention_counts_real_lengths_not_full_blocks():
    cfg = ModelConfig()
    short, full = step_cost(cfg, [7]), step_cost(cfg, [16])
    ops = {op.name: op for op in step_ops(cfg, [7])}
    assert ops["attn scores"].fwd_flops == 2 * cfg.n_embd * (7 * 8 // 2)
    assert short.flops < full.flops
    # dense masked attention does n^2 pairs instead of n(n+1)/2
    dense = {op.name: op for op in step_ops(cfg, [7], attention="dense")}
    assert dense["attn scores"].fwd_flops == 2 * cfg.n_embd * 49


def test_bytes_scale_with_dtype_and_clip_adds_work():
    cfg, lengths = ModelConfig(), [5, 6]
    assert step_cost(cfg, lengths, dtype_bytes=4).bytes * 2 == step_cost(cfg, lengths, dtype_bytes=8).bytes
    assert step_cost(cfg, lengths).flops == step_cost(cfg, lengths, dtype_bytes=4).flops
    assert step_cost(cfg, lengths, grad_clip=True).flops == step_cost(cfg, lengths).flops + 3 * num_params(cfg)
    assert working_set_bytes(cfg, lengths) > 4 * 8 * num_params(cfg)


@pytest.mark.parametrize("lengths, dtype_bytes, attention, message", [
    ([], 8, "causal", "at least one document"),
    ([0], 8, "causal", "document lengths"),
    ([17], 8, "causal", "document lengths"),
    ([3], 3, "causal", "dtype size"),
    ([3], 8, "sparse", "attention must be"),
])
def test_bad_input_is_a_user_error(lengths, dtype_bytes, attention, message):
    with pytest.raises(UserError, match=message):
        step_ops(ModelConfig(), lengths, dtype_bytes, attention)


@pytest.mark.parametrize("n", [1, 5, 8])
def test_matmul_flops_equal_flop_counter_on_the_torch_engine(n):
    """The engine itself, not a model written for the test: one document is one (n x n) attention grid.
    Its projections, MLP and lm_head are counted exactly; its attention runs in
    F.scaled_dot_product_attention, whose CPU kernel FlopCounterMode has no formula for, so the counter
    sees every matmul of the model except the two attention products (a blind spot of the counter, which
    the inline models above cover)."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from engines.torch_eager import TorchEngine
    from microgpt.config import TrainConfig
    from microgpt.params import init_params

    cfg = CONFIGS[0]
    engine = TorchEngine(cfg, TrainConfig(), init_params(cfg, 0))
    doc = _random_docs(cfg, [n])[0]
    counter = FlopCounterMode(display=False)
    with counter:
        engine.loss_and_grad([doc])
    ops = {op.name: op for op in step_ops(cfg, [n], attention="dense")}
    expected = sum(op.fwd_flops + op.bwd_flops for name, op in ops.items()
                   if op.matmul and name not in ("attn scores", "attn weighted sum"))
    assert counter.get_total_flops() == expected


# --- the phases of the fused C step ------------------------------------------------------------------

def _linear_weights(cfg):
    return num_params(cfg) - (cfg.vocab_size + cfg.block_size) * cfg.n_embd


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "wide-relu", "deep"])
@pytest.mark.parametrize("lengths", LENGTHS + [[16] * 5], ids=str)
@pytest.mark.parametrize("grad_clip", [False, True], ids=["fused-adam", "clip"])
@pytest.mark.parametrize("dtype_bytes", [8, 4])
def test_phases_sum_to_the_step_totals(cfg, lengths, grad_clip, dtype_bytes):
    lengths = _lengths_for(cfg, lengths)
    phases = phase_costs(cfg, lengths, dtype_bytes, grad_clip)
    cost = step_cost(cfg, lengths, dtype_bytes, grad_clip=grad_clip)
    assert list(phases) == list(PHASES) + ([GRAD_NORM] if grad_clip else [])
    assert sum(p.flops for p in phases.values()) == cost.flops
    assert sum(p.unfused_bytes for p in phases.values()) == cost.bytes
    # every op of the step lands somewhere, and only the Adam fusion moves fewer bytes than the per-op count
    assert {op for p in phases.values() for op in p.ops} == {op.name for op in step_ops(cfg, lengths)}
    assert all(p.fusion_saved_bytes == 0 for name, p in phases.items() if name != "linear_backward")
    path = "fused" if sum(lengths) <= FUSED_MAX_TOKENS else "gemm"
    saved = 0 if grad_clip else dtype_bytes * _linear_weights(cfg) * FUSION_SAVED_VALUES[path]
    assert phases["linear_backward"].fusion_saved_bytes == saved
    assert all(p.flops > 0 and p.bytes > 0 for p in phases.values() if p.name != "adam" or grad_clip)


def test_phase_hand_counts():
    cfg, lengths = ModelConfig(n_layer=2), [5, 9]
    T, C, W = 14, cfg.n_embd, _linear_weights(cfg)
    fused, clipped = phase_costs(cfg, lengths), phase_costs(cfg, lengths, grad_clip=True)
    # 2 FLOPs per weight and token forward (+ the residual adds), 4 backward (dX and dW) + Adam's 14 per weight
    assert fused["linear_forward"].flops == 2 * W * T + 2 * cfg.n_layer * T * C
    assert fused["linear_backward"].flops == 4 * W * T + ADAM_FLOPS_PER_PARAM * W
    assert clipped["linear_backward"].flops == 4 * W * T
    assert clipped["adam"].flops == 15 * num_params(cfg) and clipped[GRAD_NORM].flops == 2 * num_params(cfg)
    assert fused["adam"].flops == fused["adam"].bytes == 0
    # one document, fused pass: W, m, v read and written once per weight (6 values), against the per-op 9
    ops = {op.name: op for op in step_ops(cfg, lengths)}
    linear_bwd = sum(ops[n].bwd_bytes for n in ("attn q/k/v", "attn output", "mlp fc1", "mlp fc2", "lm_head"))
    assert fused["linear_backward"].bytes == linear_bwd + 8 * W * (ADAM_VALUES_PER_PARAM - 3)
    # attention: every op of attention, both ways, and nothing else
    assert fused["attention"].flops == sum(ops[n].fwd_flops + ops[n].bwd_flops
                                           for n in ("attn scores", "attn softmax", "attn weighted sum"))
    assert fused["cross_entropy"].flops == T * (4 * cfg.vocab_size + 3) + T * (2 * cfg.vocab_size + 1)


def test_phases_scale_with_the_batch():
    cfg = ModelConfig(n_embd=32, n_layer=2, block_size=16)
    one, two, three = (phase_costs(cfg, [7] * b) for b in (1, 2, 3))
    # every phase grows by the same amount per document of the same length: per-token work, plus a part that
    # does not depend on the batch (the weights read once per step, Adam's update)
    for name in ("embed", "linear_forward", "attention", "norm_act", "cross_entropy", "linear_backward"):
        for field in ("flops", "bytes"):
            a, b, c = (getattr(p[name], field) for p in (one, two, three))
            assert c - b == b - a > 0, (name, field)
    # no fixed part: activations only (attention is per document, 7 x 8 / 2 pairs each)
    for name in ("attention", "norm_act", "cross_entropy"):
        assert two[name].flops == 2 * one[name].flops and two[name].bytes == 2 * one[name].bytes, name
    assert two["linear_forward"].flops == 2 * one["linear_forward"].flops
    assert 2 * one["linear_forward"].bytes - two["linear_forward"].bytes == 8 * _linear_weights(cfg)  # W once
    fixed = 2 * one["linear_backward"].flops - two["linear_backward"].flops
    assert fixed == ADAM_FLOPS_PER_PARAM * _linear_weights(cfg)
    # attention is quadratic in the document's length, not the batch's
    assert phase_costs(cfg, [14])["attention"].flops > 2 * phase_costs(cfg, [7])["attention"].flops


def test_longer_batches_take_the_gemm_path():
    cfg = ModelConfig(n_embd=32, n_layer=2, block_size=16)
    W = _linear_weights(cfg)
    fused = phase_costs(cfg, [16] * 4)                      # 64 predictions: the fused pass
    gemm = phase_costs(cfg, [16] * 4, fused_max_tokens=63)
    assert gemm["linear_backward"].flops == fused["linear_backward"].flops
    assert gemm["linear_backward"].bytes - fused["linear_backward"].bytes == 8 * W    # W read twice, not once
    assert phase_costs(cfg, [16] * 4 + [1])["linear_backward"].fusion_saved_bytes == 2 * 8 * W
    assert phase_costs(cfg, [5], dtype_bytes=4)["norm_act"].bytes * 2 == phase_costs(cfg, [5])["norm_act"].bytes


def test_fused_threshold_matches_the_c_engine():
    fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
    assert fastops.FUSED_MAX_TOKENS == FUSED_MAX_TOKENS

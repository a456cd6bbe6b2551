"""Exact FLOP and byte counts of one training step, per operation, from the config and the real document lengths.

Names are short (~7 tokens on average against a block size of 16), so every count takes the list of
prediction counts ``n`` of the step's documents (``len(doc) - 1`` each) instead of assuming full blocks;
attention at position p looks at p + 1 keys, so its cost grows with sum(n * (n + 1) / 2), not with n**2.

FLOP conventions:
  * a multiply-add (FMA) is 2 FLOPs; every other scalar add, subtract, multiply, divide, max, compare,
    sqrt, exp and log is 1 FLOP; copies, gathers, index arithmetic and the loss averaging are free;
  * a matmul ``(m, k) @ (k, n)`` is ``2 m k n`` (the convention of torch's FlopCounterMode), and its
    backward is two matmuls of the same size (the input gradient and the weight gradient);
  * attention is counted as a causal implementation does it (``attention="causal"``): position p scores
    p + 1 keys. ``attention="dense"`` counts what a masked-matrix implementation executes instead
    (all n x n scores, the masked half thrown away); the useful work is the causal count.
  * per-element costs: rmsnorm forward 3 C + 4 (sum of squares as FMAs, divide by C, add eps, sqrt,
    reciprocal, scale) and backward 5 C + 1; softmax over k scores 6 k forward (1/sqrt(D) scale, max,
    subtract, exp, sum, divide) and 5 k backward; relu^2 2 forward / 3 backward per element, relu 1 / 1;
    cross-entropy 4 V + 3 forward, 2 V + 1 backward; residual add C each way; embedding C forward
    (wte + wpe), 2 C backward (accumulated into both tables);
  * Adam: 14 FLOPs per parameter (m: 3, v: 4, the bias-corrected update: 7; the bias corrections
    themselves are per-step scalars); gradient clipping adds 2 per parameter for the norm and 1 for the
    rescale.

Byte conventions ("compulsory traffic" at operator granularity): each operation reads each of its
distinct inputs once and writes each of its outputs once per step, at ``dtype_bytes`` per value. A
weight matrix is read once per step per op however many positions use it (it stays in cache while
they stream through) and its gradient written once; activations saved by the forward pass are read
again by the backward pass. Index arrays (token ids) are not counted. These are the fewest bytes an
unfused implementation must move between the core and the memory level that holds its working set;
``working_set_bytes`` says which level that is. Fusing operations moves fewer bytes, re-reading moves more.
"""

from __future__ import annotations

from dataclasses import dataclass

from microgpt import UserError
from microgpt.config import ModelConfig
from microgpt.params import num_params

ATTENTION_MODES = ("causal", "dense")

#: Adam's FLOPs per parameter: m = b1 m + (1 - b1) g (3); v = b2 v + (1 - b2) g g (4);
#: p -= lr_t m / (sqrt(v c2) + eps) with the per-step scalars lr_t and c2 (7).
ADAM_FLOPS_PER_PARAM = 14


@dataclass
class Op:
    """One operation of the step, summed over layers, positions and documents."""

    name: str
    fwd_flops: int
    bwd_flops: int
    fwd_bytes: int
    bwd_bytes: int
    matmul: bool = False        # counted by torch's FlopCounterMode (mm/bmm); the rest is elementwise
    upd_flops: int = 0          # the optimiser update (only Adam has one)
    upd_bytes: int = 0

    @property
    def flops(self) -> int:
        return self.fwd_flops + self.bwd_flops + self.upd_flops

    @property
    def bytes(self) -> int:
        return self.fwd_bytes + self.bwd_bytes + self.upd_bytes


def doc_lengths(docs: list[list[int]]) -> list[int]:
    """Predictions per document: ``len(doc) - 1`` for wrapped documents ``[BOS] + tokens + [BOS]``."""
    return [len(doc) - 1 for doc in docs]


def _check(cfg: ModelConfig, lengths: list[int], dtype_bytes: int, attention: str) -> None:
    if not lengths:
        raise UserError("a step needs at least one document")
    bad = [n for n in lengths if not isinstance(n, int) or not 1 <= n <= cfg.block_size]
    if bad:
        raise UserError(f"document lengths must be integers in [1, block_size={cfg.block_size}] (got {bad[0]!r})")
    if dtype_bytes not in (2, 4, 8):
        raise UserError(f"dtype size must be 2, 4 or 8 bytes (got {dtype_bytes!r})")
    if attention not in ATTENTION_MODES:
        raise UserError(f"attention must be one of {', '.join(ATTENTION_MODES)} (got {attention!r})")


def _linear(name: str, rows_in: int, d_in: int, d_out: int, s: int, copies: int = 1) -> Op:
    """``copies`` weight matrices (d_out, d_in) applied to ``rows_in`` positions each."""
    mm = 2 * rows_in * d_in * d_out
    weights = d_out * d_in
    # forward reads W and X, writes Y; backward reads dY, X, W and writes dX, dW
    fwd_bytes = s * (weights + rows_in * d_in + rows_in * d_out)
    bwd_bytes = s * (rows_in * d_out + rows_in * d_in + weights + rows_in * d_in + weights)
    return Op(name, copies * mm, copies * 2 * mm, copies * fwd_bytes, copies * bwd_bytes, matmul=True)


def step_ops(cfg: ModelConfig, lengths: list[int], dtype_bytes: int = 8, attention: str = "causal",
             grad_clip: bool = False) -> list[Op]:
    """The per-op counts of one training step over documents with ``lengths`` predictions each."""
    _check(cfg, lengths, dtype_bytes, attention)
    s, C, V, H, L = dtype_bytes, cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.n_layer
    F = 4 * cfg.n_embd
    T = sum(lengths)                                    # positions (= predictions) in the step
    if attention == "causal":
        K = sum(n * (n + 1) // 2 for n in lengths)      # (query, key) pairs: position p sees p + 1 keys
    else:
        K = sum(n * n for n in lengths)                 # every pair, the masked half included
    P = num_params(cfg)

    ops = [Op("embedding", T * C, 2 * T * C, s * 3 * T * C, s * (T * C + 2 * T * C))]
    # rmsnorm on the embedding, then before attention and before the MLP in every layer
    norms = 1 + 2 * L
    ops.append(Op("rmsnorm", norms * T * (3 * C + 4), norms * T * (5 * C + 1),
                  norms * s * 2 * T * C, norms * s * 3 * T * C))           # bwd reads x, dy; writes dx
    ops.append(_linear("attn q/k/v", T, C, C, s, copies=3 * L))
    # scores q.k over D dims for each (query, key) pair and head; backward gives dq and dk
    ops.append(Op("attn scores", L * 2 * K * C, L * 4 * K * C,
                  L * s * (2 * T * C + K * H), L * s * (K * H + 2 * T * C + 2 * T * C), matmul=True))
    # the 1/sqrt(D) scale (1 per score each way) folded into the softmax
    ops.append(Op("attn softmax", L * 6 * K * H, L * 5 * K * H, L * s * 2 * K * H, L * s * 3 * K * H))
    ops.append(Op("attn weighted sum", L * 2 * K * C, L * 4 * K * C,
                  L * s * (K * H + T * C + T * C), L * s * (T * C + K * H + T * C + K * H + T * C), matmul=True))
    ops.append(_linear("attn output", T, C, C, s, copies=L))
    ops.append(Op("residual add", 2 * L * T * C, 2 * L * T * C, 2 * L * s * 3 * T * C, 2 * L * s * 3 * T * C))
    ops.append(_linear("mlp fc1", T, C, F, s, copies=L))
    act_fwd, act_bwd = (2, 3) if cfg.mlp_act == "relu2" else (1, 1)
    ops.append(Op(f"mlp {cfg.mlp_act}", L * act_fwd * T * F, L * act_bwd * T * F,
                  L * s * 2 * T * F, L * s * 3 * T * F))
    ops.append(_linear("mlp fc2", T, F, C, s, copies=L))
    ops.append(_linear("lm_head", T, C, V, s))
    ops.append(Op("cross-entropy", T * (4 * V + 3), T * (2 * V + 1), s * T * V, s * 2 * T * V))
    # the update: reads p, g, m, v and writes p, m, v (clipping reads g once more for its norm)
    ops.append(Op("adam", 0, 0, 0, 0, upd_flops=P * (ADAM_FLOPS_PER_PARAM + (3 if grad_clip else 0)),
                  upd_bytes=s * P * (7 + (1 if grad_clip else 0))))
    return ops


@dataclass
class StepCost:
    """Per-step totals of ``step_ops``."""

    flops: int
    bytes: int
    matmul_fwd_flops: int
    matmul_bwd_flops: int
    working_set_bytes: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte."""
        return self.flops / self.bytes


def working_set_bytes(cfg: ModelConfig, lengths: list[int], dtype_bytes: int = 8) -> int:
    """Bytes live during a step: weights, gradients and both Adam moments, plus the forward activations
    the backward pass needs (per position and layer: the x, h, q, k, v, o, u vectors and the attention
    probabilities). It decides which cache level's bandwidth bounds the step."""
    C, F, H = cfg.n_embd, 4 * cfg.n_embd, cfg.n_head
    T = sum(lengths)
    K = sum(n * (n + 1) // 2 for n in lengths)
    per_position = cfg.n_layer * (8 * C + 2 * F) + 3 * C + cfg.vocab_size
    activations = T * per_position + cfg.n_layer * K * H
    return dtype_bytes * (4 * num_params(cfg) + activations)


def step_cost(cfg: ModelConfig, lengths: list[int], dtype_bytes: int = 8, attention: str = "causal",
              grad_clip: bool = False) -> StepCost:
    ops = step_ops(cfg, lengths, dtype_bytes, attention, grad_clip)
    return StepCost(flops=sum(op.flops for op in ops), bytes=sum(op.bytes for op in ops),
                    matmul_fwd_flops=sum(op.fwd_flops for op in ops if op.matmul),
                    matmul_bwd_flops=sum(op.bwd_flops for op in ops if op.matmul),
                    working_set_bytes=working_set_bytes(cfg, lengths, dtype_bytes))

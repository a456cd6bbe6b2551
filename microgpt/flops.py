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

``phase_costs`` groups the same per-op numbers into the phases that the fused C step's profile times
(fastops/profile.h), and takes off the bytes that the C step's fusion of Adam into the backward pass does
not move (see ``phase_costs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from microgpt import UserError
from microgpt.config import ModelConfig
from microgpt.params import layout, num_params

ATTENTION_MODES = ("causal", "dense")

#: Adam's FLOPs per parameter: m = b1 m + (1 - b1) g (3); v = b2 v + (1 - b2) g g (4);
#: p -= lr_t m / (sqrt(v c2) + eps) with the per-step scalars lr_t and c2 (7).
ADAM_FLOPS_PER_PARAM = 14
#: Adam's values moved per parameter: reads p, g, m, v and writes p, m, v.
ADAM_VALUES_PER_PARAM = 7
#: Gradient clipping per parameter: the squared norm (an FMA, reading g once more) and the rescale (a multiply).
CLIP_NORM_FLOPS_PER_PARAM, CLIP_NORM_VALUES_PER_PARAM = 2, 1
CLIP_SCALE_FLOPS_PER_PARAM = 1


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
    clip_flops = CLIP_NORM_FLOPS_PER_PARAM + CLIP_SCALE_FLOPS_PER_PARAM if grad_clip else 0
    ops.append(Op("adam", 0, 0, 0, 0, upd_flops=P * (ADAM_FLOPS_PER_PARAM + clip_flops),
                  upd_bytes=s * P * (ADAM_VALUES_PER_PARAM + (CLIP_NORM_VALUES_PER_PARAM if grad_clip else 0))))
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


# --- the phases of the fused C step ----------------------------------------------------------------------

#: The phases fastops/profile.h times in a step of the fused C engine (GPT.profile()), in run_batch's order.
PHASES = ("embed", "linear_forward", "attention", "norm_act", "cross_entropy", "linear_backward", "adam")
#: Clipping's gradient-norm pass: GPT.train_steps runs it between the backward pass and the adam phase,
#: outside every profiled phase; ``phase_costs`` lists it (after PHASES) only with grad_clip.
GRAD_NORM = "grad_norm"
#: fastops/common.h FUSED_MAX_TOKENS (the module exports it): a step of at most this many predictions takes
#: the fused backward pass of each linear layer (one walk over W, m and v); a longer one, two gemms.
FUSED_MAX_TOKENS = 64
#: Bytes per weight of a linear layer that the C step's backward-with-Adam does not move, against the per-op
#: count (the backward pass reads W and writes dW, then Adam reads p, g, m, v and writes p, m, v: 9 values):
#: the gradient is neither written nor read back (it goes from registers into Adam), and the fused pass also
#: reads the old weight once for both dX and the update (6 values); the gemm path reads it twice (7).
FUSION_SAVED_VALUES = {"fused": 3, "gemm": 2}


@dataclass
class PhaseCost:
    """One phase of the fused C step: FLOPs and the bytes the C step moves (``unfused_bytes`` would be the
    per-op count; ``ops`` names the step_ops entries that feed it)."""

    name: str
    flops: int = 0
    bytes: int = 0
    fusion_saved_bytes: int = 0
    ops: list[str] = field(default_factory=list)

    @property
    def unfused_bytes(self) -> int:
        return self.bytes + self.fusion_saved_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else math.inf

    def add(self, op: str, flops: int, nbytes: int) -> None:
        self.flops += flops
        self.bytes += nbytes
        if op not in self.ops:
            self.ops.append(op)


def _share(value: int, part: int, whole: int) -> int:
    """``value * part / whole`` for a value that is a sum of ``whole`` equal terms (exact)."""
    assert value * part % whole == 0, (value, part, whole)
    return value * part // whole


def phase_costs(cfg: ModelConfig, lengths: list[int], dtype_bytes: int = 8, grad_clip: bool = False,
                fused_max_tokens: int = FUSED_MAX_TOKENS) -> dict[str, PhaseCost]:
    """One step of the fused C engine (fastops/model.h run_batch) in the phases its profile times.

    Every op of ``step_ops`` (causal attention: the useful work) goes to the phase whose PROFILE_LAP
    brackets its kernel, forward and backward apart:

      * embed: the embedding (both ways), the first RMSNorm's forward, and Adam on wte and wpe;
      * linear_forward: every y = W x of the forward pass and the residual adds (the gemm accumulates into x);
      * attention: scores, softmax and weighted sum of every layer, forward and backward;
      * norm_act: the RMSNorms (but the first forward), the MLP activation, and the residual stream's
        backward adds (RMSNorm's backward accumulates into dx), forward and backward;
      * cross_entropy: softmax, loss and its gradient;
      * linear_backward: dX and dW of every linear layer (lm_head included), with Adam on their weights
        fused in; without clipping only -- the bytes are the per-op count less FUSION_SAVED_VALUES per weight;
      * adam (grad_clip only): Adam on every parameter in a pass of its own, the rescale included; the
        linear layers' backward then writes dW and moves exactly the per-op bytes;
      * grad_norm (grad_clip only): the gradient-norm pass, timed outside every phase.

    The FLOPs of the phases sum to ``step_cost(...).flops``; their ``unfused_bytes`` to ``step_cost(...).bytes``.
    Layout copies (the token-major transposes around the fused pass, the zeroed embedding gradient) are
    not counted: copies are free throughout this model.
    """
    ops = step_ops(cfg, lengths, dtype_bytes, "causal", grad_clip)
    names = list(PHASES) + ([GRAD_NORM] if grad_clip else [])
    phases = {name: PhaseCost(name) for name in names}
    linear = ("linear_forward", "linear_backward")
    route = {"embedding": ("embed", "embed"), "rmsnorm": ("norm_act", "norm_act"),
             "attn q/k/v": linear, "attn output": linear, "mlp fc1": linear, "mlp fc2": linear, "lm_head": linear,
             "attn scores": ("attention",) * 2, "attn softmax": ("attention",) * 2,
             "attn weighted sum": ("attention",) * 2, "residual add": ("linear_forward", "norm_act"),
             f"mlp {cfg.mlp_act}": ("norm_act",) * 2, "cross-entropy": ("cross_entropy",) * 2}
    P = num_params(cfg)
    tables = sum(t.size for t in layout(cfg) if t.name in ("wte", "wpe"))
    for op in ops:
        if op.name == "adam":
            if grad_clip:
                per_param = ADAM_FLOPS_PER_PARAM + CLIP_SCALE_FLOPS_PER_PARAM
                whole = per_param + CLIP_NORM_FLOPS_PER_PARAM
                values = ADAM_VALUES_PER_PARAM + CLIP_NORM_VALUES_PER_PARAM
                phases["adam"].add(op.name, _share(op.upd_flops, per_param, whole),
                                   _share(op.upd_bytes, ADAM_VALUES_PER_PARAM, values))
                phases[GRAD_NORM].add(op.name, _share(op.upd_flops, CLIP_NORM_FLOPS_PER_PARAM, whole),
                                      _share(op.upd_bytes, CLIP_NORM_VALUES_PER_PARAM, values))
            else:   # fused where the gradients are computed: the tables' in embed, the rest in linear_backward
                phases["embed"].add(op.name, _share(op.upd_flops, tables, P), _share(op.upd_bytes, tables, P))
                phases["linear_backward"].add(op.name, _share(op.upd_flops, P - tables, P),
                                              _share(op.upd_bytes, P - tables, P))
            continue
        fwd, bwd = route[op.name]
        if op.name == "rmsnorm":    # the first of the 1 + 2 n_layer norms runs in embed on the way forward
            norms = 1 + 2 * cfg.n_layer
            first_flops, first_bytes = _share(op.fwd_flops, 1, norms), _share(op.fwd_bytes, 1, norms)
            phases["embed"].add(op.name, first_flops, first_bytes)
            phases[fwd].add(op.name, op.fwd_flops - first_flops, op.fwd_bytes - first_bytes)
        else:
            phases[fwd].add(op.name, op.fwd_flops, op.fwd_bytes)
        phases[bwd].add(op.name, op.bwd_flops, op.bwd_bytes)
    if not grad_clip:
        path = "fused" if sum(lengths) <= fused_max_tokens else "gemm"
        saved = dtype_bytes * (P - tables) * FUSION_SAVED_VALUES[path]
        phases["linear_backward"].bytes -= saved
        phases["linear_backward"].fusion_saved_bytes = saved
    return phases

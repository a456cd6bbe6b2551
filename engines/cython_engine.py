"""The Cython rung: train.py's ops compiled to C one by one, still sequenced from Python.

Where train.py runs every op in the interpreter and fastops.c runs a whole training step in one C call,
this engine calls one compiled kernel per op (engines/cython_ops.pyx): embedding, RMSNorm, linear,
attention, activation, residual, cross-entropy and Adam, forward and backward, on typed memoryviews of
flat buffers. The Python code below is the model's wiring and nothing else, so the time it adds over
fastops is the price of driving kernels from an interpreter.

Weights, gradients and Adam's moments are four flat buffers in the layout of microgpt/params.py; each
matrix is a 2-D memoryview into them (no copies). Activations are preallocated for ``block_size``
positions; a document runs through them one at a time (the whole sequence per op, causal mask inside
the attention kernel) and its gradients accumulate into the flat gradient buffer.

    python train.py --engine cython [--dtype float32]
"""

from __future__ import annotations

import math
from array import array

from engines.flat import TYPECODES, FlatArraysEngine
from microgpt import UserError
from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import FlatParams, layout



def _kernels():
    try:
        from engines import cython_ops
    except ImportError as e:
        raise UserError(f"the Cython kernels are not built ({e}); run: pip install -e .") from None
    return cython_ops


def _zeros(code: str, *shape: int) -> memoryview:
    """A zeroed buffer viewed with ``shape`` (the kernels take N-D memoryviews; ``.obj`` is the flat array)."""
    flat = array(code, bytes(array(code).itemsize * math.prod(shape)))
    return memoryview(flat).cast("B").cast(code, shape)


def _matrices(flat: array, cfg: ModelConfig) -> dict[str, memoryview]:
    """name -> (rows, cols) view into ``flat``: writes through the view land in the flat buffer."""
    view = memoryview(flat)
    return {t.name: view[t.offset:t.offset + t.size].cast("B").cast(view.format, (t.rows, t.cols))
            for t in layout(cfg)}


class _Layer:
    """One block's saved activations (what its backward pass reads), for up to T positions."""

    def __init__(self, code: str, cfg: ModelConfig):
        T, C = cfg.block_size, cfg.n_embd
        self.inv1, self.inv2 = _zeros(code, T), _zeros(code, T)      # RMSNorm scales
        self.h1, self.q, self.k, self.v, self.o = (_zeros(code, T, C) for _ in range(5))
        self.att = _zeros(code, cfg.n_head, T, T)                    # softmax weights per head
        self.x_mid, self.h2 = _zeros(code, T, C), _zeros(code, T, C)  # after attention; its RMSNorm
        self.u_pre, self.u = _zeros(code, T, 4 * C), _zeros(code, T, 4 * C)
        self.out = _zeros(code, T, C)                                # the block's output


class _Scratch:
    """Gradients of a block's internal activations: one flat buffer, so one kernel call zeroes them."""

    def __init__(self, code: str, cfg: ModelConfig):
        T, C = cfg.block_size, cfg.n_embd
        sizes = {"dh1": C, "dq": C, "dk": C, "dv": C, "do": C, "dh2": C, "du_pre": 4 * C, "du": 4 * C}
        self.flat = array(code, bytes(array(code).itemsize * T * sum(sizes.values())))
        view, offset = memoryview(self.flat), 0
        for name, width in sizes.items():
            setattr(self, name, view[offset:offset + T * width].cast("B").cast(code, (T, width)))
            offset += T * width


class CythonEngine(FlatArraysEngine):
    """Per-op Cython kernels driven from Python (see engines/__init__.py for the contract)."""

    name = "cython"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if threads != 1:
            raise ValueError(f"the Cython engine runs on one thread (got threads={threads})")
        super().__init__(model_cfg, train_cfg, params, dtype)
        self.ops = _kernels()
        code, c = TYPECODES[dtype], model_cfg
        self.step = 0
        self.w, self.dw = _matrices(self.params, c), _matrices(self.grads, c)
        T, C = c.block_size, c.n_embd
        self.emb, self.inv0, self.x0 = _zeros(code, T, C), _zeros(code, T), _zeros(code, T, C)
        self.layers = [_Layer(code, c) for _ in range(c.n_layer)]
        self.logit_rows, self.probs = _zeros(code, T, c.vocab_size), _zeros(code, T, c.vocab_size)
        self.dx, self.demb, self.dlogits = _zeros(code, T, C), _zeros(code, T, C), _zeros(code, T, c.vocab_size)
        self.scratch = _Scratch(code, c)
        self.squared = c.mlp_act == "relu2"

    # ---- one document ----

    def _forward(self, tokens: list[int]) -> int:
        """Run ``tokens`` through the model, keeping every activation; fills ``logit_rows``; returns T."""
        ops, c, w, T = self.ops, self.cfg, self.w, len(tokens)
        if not 1 <= T <= c.block_size:
            raise ValueError(f"a document must hold 1..{c.block_size} input tokens (got {T})")
        ops.embed_forward(tokens, w["wte"], w["wpe"], self.emb)
        ops.rmsnorm_forward(self.emb, self.x0, self.inv0, T)
        x = self.x0
        for i, a in enumerate(self.layers):
            p = f"layer{i}."
            ops.rmsnorm_forward(x, a.h1, a.inv1, T)
            ops.linear_forward(a.h1, w[p + "attn_wq"], a.q, T)
            ops.linear_forward(a.h1, w[p + "attn_wk"], a.k, T)
            ops.linear_forward(a.h1, w[p + "attn_wv"], a.v, T)
            ops.attention_forward(a.q, a.k, a.v, a.att, a.o, c.n_head, T, True)
            ops.linear_forward(a.o, w[p + "attn_wo"], a.out, T)  # a.out as scratch for the branch
            ops.residual_forward(x, a.out, a.x_mid, T)
            ops.rmsnorm_forward(a.x_mid, a.h2, a.inv2, T)
            ops.linear_forward(a.h2, w[p + "mlp_fc1"], a.u_pre, T)
            ops.relu_forward(a.u_pre, a.u, self.squared, T)
            ops.linear_forward(a.u, w[p + "mlp_fc2"], a.out, T)
            ops.residual_forward(a.x_mid, a.out, a.out, T)
            x = a.out
        ops.linear_forward(x, w["lm_head"], self.logit_rows, T)
        return T

    def _backward(self, tokens: list[int], T: int) -> None:
        """Add this document's gradients (from ``dlogits``) into the flat gradient buffer."""
        ops, c, w, dw, s, dx = self.ops, self.cfg, self.w, self.dw, self.scratch, self.dx
        ops.zero(dx.obj)
        ops.linear_backward(self.layers[-1].out, w["lm_head"], self.dlogits, dx,
                            dw["lm_head"], T)
        for i in reversed(range(c.n_layer)):
            p, a = f"layer{i}.", self.layers[i]
            x = self.layers[i - 1].out if i else self.x0
            ops.zero(s.flat)
            # x_out = x_mid + W2 act(W1 rmsnorm(x_mid)): dx already holds d x_out, which x_mid receives too
            ops.linear_backward(a.u, w[p + "mlp_fc2"], dx, s.du, dw[p + "mlp_fc2"], T)
            ops.relu_backward(a.u_pre, s.du, s.du_pre, self.squared, T)
            ops.linear_backward(a.h2, w[p + "mlp_fc1"], s.du_pre, s.dh2, dw[p + "mlp_fc1"], T)
            ops.rmsnorm_backward(a.x_mid, a.inv2, s.dh2, dx, T)
            # x_mid = x + Wo attn(q, k, v), q/k/v = W rmsnorm(x): dx now holds d x_mid
            ops.linear_backward(a.o, w[p + "attn_wo"], dx, s.do, dw[p + "attn_wo"], T)
            ops.attention_backward(a.q, a.k, a.v, a.att, s.do, s.dq, s.dk, s.dv, c.n_head, T, True)
            ops.linear_backward(a.h1, w[p + "attn_wq"], s.dq, s.dh1, dw[p + "attn_wq"], T)
            ops.linear_backward(a.h1, w[p + "attn_wk"], s.dk, s.dh1, dw[p + "attn_wk"], T)
            ops.linear_backward(a.h1, w[p + "attn_wv"], s.dv, s.dh1, dw[p + "attn_wv"], T)
            ops.rmsnorm_backward(x, a.inv1, s.dh1, dx, T)
        ops.zero(self.demb.obj)
        ops.rmsnorm_backward(self.emb, self.inv0, dx, self.demb, T)
        ops.embed_backward(tokens, self.demb, dw["wte"], dw["wpe"])

    # ---- the contract ----

    def _loss_and_grad(self, docs: list[list[int]]) -> float:
        """Batch loss (mean of document means); gradients of it left in ``self.grads``."""
        if not docs:
            raise ValueError("a batch needs at least one document")
        ops = self.ops
        ops.zero(self.grads)
        total = 0.0
        for doc in docs:
            T = self._forward(doc[:-1])
            targets = doc[1:]
            total += ops.cross_entropy_forward(self.logit_rows, targets, self.probs) / T
            ops.cross_entropy_backward(self.probs, targets, self.dlogits, 1.0 / (T * len(docs)))
            self._backward(doc[:-1], T)
        return total / len(docs)

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self._loss_and_grad(docs)
        return loss, array("d", self.grads)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss = self._loss_and_grad(docs)
        ops, c, scale = self.ops, self.tcfg, 1.0
        if c.grad_clip > 0:
            norm = math.sqrt(ops.sum_of_squares(self.grads))
            if norm > c.grad_clip:
                scale = c.grad_clip / norm
        self.step += 1
        ops.adam_update(self.params, self.grads, self.m, self.v, lr, c.beta1, c.beta2, c.eps, self.step, scale)
        return loss

    def eval_loss(self, docs: list[list[int]]) -> float:
        if not docs:
            raise ValueError("a batch needs at least one document")
        total = 0.0
        for doc in docs:
            T = self._forward(doc[:-1])
            total += self.ops.cross_entropy_forward(self.logit_rows, doc[1:], self.probs) / T
        return total / len(docs)

    def logits(self, tokens: list[int]) -> list[float]:
        T, V = self._forward(list(tokens)), self.cfg.vocab_size
        return self.logit_rows.obj[(T - 1) * V:T * V].tolist()

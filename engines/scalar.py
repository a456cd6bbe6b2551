"""Scalar autograd (micrograd style): the slowest honest baseline.

Every number is a ``Value`` node that remembers its children and the local derivative towards each,
exactly as in Karpathy's micrograd and microgpt. It computes the same model as train.py from the same
flat parameters, so its losses match the reference to ~1e-12; it exists to show what the vector
autograd buys (one Python object per multiply-add here, one per activation vector there).
"""

from __future__ import annotations

import math
from array import array
from operator import attrgetter

from microgpt.config import RMS_EPS, ModelConfig, TrainConfig, check_context, check_docs
from microgpt.params import AdamState, FlatParams
from train import topological_order


class Value:
    __slots__ = ("data", "grad", "children", "local_grads")

    def __init__(self, data: float, children: tuple = (), local_grads: tuple = ()):
        self.data = data
        self.grad = 0.0
        self.children = children
        self.local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1.0, 1.0))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, k: float):
        return Value(self.data ** k, (self,), (k * self.data ** (k - 1),))

    def log(self):
        return Value(math.log(self.data), (self,), (1.0 / self.data,))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, (self,), (e,))

    def relu(self):
        return Value(max(0.0, self.data), (self,), (float(self.data > 0),))

    __radd__ = __add__
    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def __truediv__(self, other):
        return self * other ** -1.0

    def backward(self) -> None:
        order = topological_order(self, attrgetter("children"))
        self.grad = 1.0
        for node in reversed(order):
            for child, local in zip(node.children, node.local_grads):
                child.grad += local * node.grad


def linear(x: list[Value], w: list[list[Value]]) -> list[Value]:
    return [sum((wi * xi for wi, xi in zip(row, x)), Value(0.0)) for row in w]


def rmsnorm(x: list[Value]) -> list[Value]:
    ms = sum((xi * xi for xi in x), Value(0.0)) * (1.0 / len(x))
    inv = (ms + RMS_EPS) ** -0.5
    return [xi * inv for xi in x]


def softmax(logits: list[Value]) -> list[Value]:
    top = max(v.data for v in logits)
    exps = [(v - top).exp() for v in logits]
    total = sum(exps, Value(0.0))
    return [e / total for e in exps]


class ScalarEngine:
    name = "scalar"
    #: the trainer's default --eval-docs for this engine: a scalar graph evaluates ~0.36 s of CPU per name
    #: (C16 L1 T16), so 500 documents took minutes after "ETA 0:00:00"; 10 keep a short run short
    default_eval_docs = 10
    #: peak bytes per number of microgpt.flops.working_set_bytes in a training step (tracemalloc, C16 L1 T8,
    #: batch 4: 63 MB for 27,424 numbers): one Value node per multiply-add; the trainer's memory check
    bytes_per_number = 2300

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if dtype != "float64" or threads != 1:
            raise ValueError("the scalar engine computes in float64 on one thread only")
        self.cfg, self.tcfg = model_cfg, train_cfg
        self.params = [Value(x) for x in params.data]
        self.w = {t.name: [self.params[t.offset + r * t.cols: t.offset + (r + 1) * t.cols] for r in range(t.rows)]
                  for t in params.tensors.values()}
        self.adam = AdamState.zeros(len(self.params))

    def forward(self, tokens: list[int], targets: list[int] | None = None):
        cfg, w = self.cfg, self.w
        d = cfg.head_dim
        keys = [[] for _ in range(cfg.n_layer)]
        values = [[] for _ in range(cfg.n_layer)]
        losses = []
        for pos, tok in enumerate(tokens):
            x = rmsnorm([t + p for t, p in zip(w["wte"][tok], w["wpe"][pos])])
            for layer in range(cfg.n_layer):
                p = f"layer{layer}."
                h = rmsnorm(x)
                q = linear(h, w[p + "attn_wq"])
                keys[layer].append(linear(h, w[p + "attn_wk"]))
                values[layer].append(linear(h, w[p + "attn_wv"]))
                o = []
                for hs in range(0, cfg.n_embd, d):
                    scores = [sum((qi * ki for qi, ki in zip(q[hs:hs + d], k[hs:hs + d])), Value(0.0)) * d ** -0.5
                              for k in keys[layer]]
                    a = softmax(scores)
                    o += [sum((aj * v[i] for aj, v in zip(a, values[layer])), Value(0.0)) for i in range(hs, hs + d)]
                x = [a + b for a, b in zip(linear(o, w[p + "attn_wo"]), x)]
                u = [ui.relu() for ui in linear(rmsnorm(x), w[p + "mlp_fc1"])]
                if cfg.mlp_act == "relu2":
                    u = [ui * ui for ui in u]
                x = [a + b for a, b in zip(linear(u, w[p + "mlp_fc2"]), x)]
            logits = linear(x, w["lm_head"])
            if targets is None:
                continue
            top = max(v.data for v in logits)
            total = sum(((v - top).exp() for v in logits), Value(0.0))
            losses.append(total.log() - (logits[targets[pos]] - top))
        return sum(losses, Value(0.0)) * (1.0 / len(losses)) if targets is not None else logits

    def _batch_loss(self, docs: list[list[int]]) -> Value:
        check_docs(docs, self.cfg)
        return sum((self.forward(doc[:-1], doc[1:]) for doc in docs), Value(0.0)) * (1.0 / len(docs))

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        for p in self.params:
            p.grad = 0.0
        loss = self._batch_loss(docs)
        loss.backward()
        return loss.data, array("d", (p.grad for p in self.params))

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss, grads = self.loss_and_grad(docs)
        c, s = self.tcfg, self.adam
        if c.grad_clip > 0:
            norm = math.sqrt(sum(g * g for g in grads))
            if norm > c.grad_clip:
                grads = array("d", (g * (c.grad_clip / norm) for g in grads))
        s.t += 1
        bc1, bc2 = 1.0 - c.beta1 ** s.t, 1.0 - c.beta2 ** s.t
        for i, (p, g) in enumerate(zip(self.params, grads)):
            s.m[i] = c.beta1 * s.m[i] + (1 - c.beta1) * g
            s.v[i] = c.beta2 * s.v[i] + (1 - c.beta2) * g * g
            p.data -= lr * (s.m[i] / bc1) / (math.sqrt(s.v[i] / bc2) + c.eps)
        return loss

    def eval_loss(self, docs: list[list[int]]) -> float:
        return self._batch_loss(docs).data

    def logits(self, tokens: list[int]) -> list[float]:
        check_context(tokens, self.cfg)
        return [v.data for v in self.forward(tokens)]

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", (p.data for p in self.params)))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.adam.m), array("d", self.adam.v), self.adam.t)

    def import_adam(self, state: AdamState) -> None:
        state.check(len(self.params))
        self.adam = AdamState(array("d", state.m), array("d", state.v), state.t)

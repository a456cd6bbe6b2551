"""The reference trainer: a character-level GPT in pure Python with a vector-level autograd.

Every other engine in the lab must reproduce the losses this file computes. It uses only the standard
library and reads top to bottom:

  1. vector helpers    a few list operations that run at C speed inside CPython's builtins
  2. autograd          ``Vec``: a node holding a 1-D vector, and fused vector ops with their own backward
  3. the model         embedding, RMSNorm, causal multi-head attention, squared-ReLU MLP, cross-entropy
  4. the engine        loss and gradients for a batch of documents, global-norm clipping, Adam
  5. main              the shared command line (microgpt.trainer): data, progress, checkpoints, sampling

Why vectors and not scalars? A micrograd-style scalar graph (engines/scalar.py) allocates one Python
object per multiply-add. Here a node holds a whole activation vector and each op runs its inner loops in
``sum(map(...))``, so the interpreter pays per vector, not per number: the same maths, tens of times faster.
"""

from __future__ import annotations

import math
from array import array
from contextlib import contextmanager
from itertools import repeat
from math import sqrt
from operator import add, attrgetter, mul, sub, truediv

from microgpt.config import RMS_EPS, ModelConfig, TrainConfig, check_context, check_docs
from microgpt.params import AdamState, FlatParams


# ----------------------------------------------------------------------------------------------------
# 1. Vector helpers. map() over builtins keeps the per-element loop in C; a list comprehension would
#    run one bytecode loop per element and be several times slower.


def dot(a: list[float], b: list[float]) -> float:
    return sum(map(mul, a, b))


def vadd(a: list[float], b: list[float]) -> list[float]:
    return list(map(add, a, b))


def scale(s: float, a: list[float]) -> list[float]:
    return list(map(s.__mul__, a))


def axpy(s: float, x: list[float], y: list[float]) -> list[float]:
    """s * x + y, the workhorse of every backward pass."""
    return list(map(add, y, map(s.__mul__, x)))


# ----------------------------------------------------------------------------------------------------
# 2. Autograd. A Vec is a node of the computation graph; each op creates one and attaches a closure
#    that, given the node's gradient, adds the contributions into its parents' gradients. Weights are
#    not nodes: ops that read a Weight add their gradient straight into its gradient rows.

GRAD_ENABLED = True  # no_grad() switches this off so evaluation keeps no graph


@contextmanager
def no_grad():
    global GRAD_ENABLED
    GRAD_ENABLED = False
    try:
        yield
    finally:
        GRAD_ENABLED = True


def topological_order(root, parents) -> list:
    """Every node reachable from ``root``, each after all of its ``parents(node)``.

    An iterative depth-first search: a recursive one would overflow Python's recursion limit on the
    deep graphs of long documents (and on scalar graphs, whose depth is every multiply-add).
    """
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in parents(node))
    return order


class Vec:
    __slots__ = ("data", "grad", "parents", "backward_fn")

    def __init__(self, data: list[float], parents: tuple = (), backward_fn=None):
        self.data = data
        self.grad = None
        self.parents = parents if GRAD_ENABLED else ()
        self.backward_fn = backward_fn if GRAD_ENABLED else None

    def backward(self) -> None:
        """Reverse-mode sweep from this (scalar) node: topological order, then each node's closure."""
        order = topological_order(self, attrgetter("parents"))
        for node in order:
            node.grad = [0.0] * len(node.data)
        self.grad = [1.0]
        for node in reversed(order):
            if node.backward_fn is not None:
                node.backward_fn(node.grad)


class Weight:
    """A weight matrix as rows (for W x), as columns (for W^T g, refreshed after every update), and the
    rows of its gradient. Keeping the transpose turns the backward pass into dot products, which CPython
    runs twice as fast as the equivalent row-by-row axpy."""

    __slots__ = ("rows", "cols", "grad")

    def __init__(self, rows: list[list[float]]):
        self.rows = rows
        self.refresh()
        self.zero_grad()

    def refresh(self) -> None:
        self.cols = list(zip(*self.rows))

    def zero_grad(self) -> None:
        self.grad = [[0.0] * len(row) for row in self.rows]


def vec_add(a: Vec, b: Vec) -> Vec:
    def backward(g):
        a.grad = vadd(a.grad, g)
        b.grad = vadd(b.grad, g)
    return Vec(vadd(a.data, b.data), (a, b), backward)


def embed(tok: int, pos: int, wte: Weight, wpe: Weight) -> Vec:
    """Token embedding row plus position embedding row."""
    def backward(g):
        wte.grad[tok] = vadd(wte.grad[tok], g)
        wpe.grad[pos] = vadd(wpe.grad[pos], g)
    return Vec(vadd(wte.rows[tok], wpe.rows[pos]), (), backward)


def rmsnorm(x: Vec) -> Vec:
    """y = x / rms(x), rms = sqrt(mean(x^2) + eps); no learned gain."""
    n = len(x.data)
    inv = (dot(x.data, x.data) / n + RMS_EPS) ** -0.5

    def backward(g):
        # dy/dx = inv * (I - x x^T inv^2 / n), applied to g
        x.grad = axpy(-inv ** 3 * dot(x.data, g) / n, x.data, axpy(inv, g, x.grad))
    return Vec(scale(inv, x.data), (x,), backward)


def linear(x: Vec, w: Weight) -> Vec:
    """y = W x for W of shape (out, in); backward adds W^T g into x and g x^T into W's gradient."""
    def backward(g):
        x.grad = vadd(x.grad, [dot(col, g) for col in w.cols])
        xd, dw = x.data, w.grad
        for i, gi in enumerate(g):
            if gi:  # zero entries of g (e.g. ReLU-killed units) contribute nothing
                dw[i] = axpy(gi, xd, dw[i])
    return Vec([dot(row, x.data) for row in w.rows], (x,), backward)


def relu_act(x: Vec, squared: bool) -> Vec:
    """relu(x)^2 (default) or relu(x)."""
    if squared:
        out = [v * v if v > 0 else 0.0 for v in x.data]

        def backward(g):
            x.grad = [gx + 2.0 * v * gi if v > 0 else gx for gx, v, gi in zip(x.grad, x.data, g)]
    else:
        out = [v if v > 0 else 0.0 for v in x.data]

        def backward(g):
            x.grad = [gx + gi if v > 0 else gx for gx, v, gi in zip(x.grad, x.data, g)]
    return Vec(out, (x,), backward)


def attention(q: Vec, keys: list[Vec], values: list[Vec], n_head: int) -> Vec:
    """Causal multi-head attention of one query over the cached keys/values of positions 0..t.

    Fused into one node: per head, scores s_j = q.k_j / sqrt(D), weights a = softmax(s), output
    o = sum_j a_j v_j. The backward pass reaches the query and every cached key and value.
    """
    d = len(q.data) // n_head
    inv_sqrt_d = 1.0 / math.sqrt(d)
    out = [0.0] * len(q.data)
    weights = []  # per head, the softmax weights over positions, kept for backward
    for h in range(0, len(q.data), d):
        qh = q.data[h:h + d]
        scores = [dot(qh, k.data[h:h + d]) * inv_sqrt_d for k in keys]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        a = [e / total for e in exps]
        oh = [0.0] * d
        for aj, v in zip(a, values):
            oh = axpy(aj, v.data[h:h + d], oh)
        out[h:h + d] = oh
        weights.append(a)

    def backward(g):
        dq = []
        for a, h in zip(weights, range(0, len(q.data), d)):
            gh = g[h:h + d]
            # through the weighted sum: dv_j += a_j g,  da_j = g . v_j
            da = []
            for aj, v in zip(a, values):
                v.grad[h:h + d] = axpy(aj, gh, v.grad[h:h + d])
                da.append(dot(gh, v.data[h:h + d]))
            # through the softmax: ds_j = a_j (da_j - sum_k a_k da_k)
            mean_da = dot(a, da)
            qh = q.data[h:h + d]
            dqh = [0.0] * d
            for aj, daj, k in zip(a, da, keys):
                ds = aj * (daj - mean_da) * inv_sqrt_d
                dqh = axpy(ds, k.data[h:h + d], dqh)
                k.grad[h:h + d] = axpy(ds, qh, k.grad[h:h + d])
            dq += dqh
        q.grad = vadd(q.grad, dq)
    return Vec(out, (q, *keys, *values), backward)


def cross_entropy(logits: Vec, target: int) -> Vec:
    """-log softmax(logits)[target], as a 1-element node."""
    top = max(logits.data)
    exps = [math.exp(v - top) for v in logits.data]
    total = sum(exps)

    def backward(g):
        # d/dlogits = softmax - onehot(target)
        probs = scale(g[0] / total, exps)
        probs[target] -= g[0]
        logits.grad = vadd(logits.grad, probs)
    return Vec([top + math.log(total) - logits.data[target]], (logits,), backward)


def mean(nodes: list[Vec]) -> Vec:
    """Mean of 1-element nodes."""
    n = len(nodes)

    def backward(g):
        for node in nodes:
            node.grad[0] += g[0] / n
    return Vec([sum(node.data[0] for node in nodes) / n], tuple(nodes), backward)


# ----------------------------------------------------------------------------------------------------
# 3. The model. Weights are kept as lists of rows (the fastest shape for dot products in CPython); the
#    flat layout of microgpt.params is only for import and export.


class GPT:
    def __init__(self, cfg: ModelConfig, params: FlatParams):
        self.cfg = cfg
        self.w = {name: Weight(params.rows(name)) for name in params.tensors}

    def forward(self, tokens: list[int], targets: list[int] | None = None):
        """Run the tokens one position at a time with a KV cache.

        Returns the mean cross-entropy node when ``targets`` are given, else the last position's logits.
        """
        cfg, w = self.cfg, self.w
        keys = [[] for _ in range(cfg.n_layer)]
        values = [[] for _ in range(cfg.n_layer)]
        losses = []
        for pos, tok in enumerate(tokens):
            x = rmsnorm(embed(tok, pos, w["wte"], w["wpe"]))
            for layer in range(cfg.n_layer):
                p = f"layer{layer}."
                h = rmsnorm(x)
                keys[layer].append(linear(h, w[p + "attn_wk"]))
                values[layer].append(linear(h, w[p + "attn_wv"]))
                o = attention(linear(h, w[p + "attn_wq"]), keys[layer], values[layer], cfg.n_head)
                x = vec_add(x, linear(o, w[p + "attn_wo"]))
                h = relu_act(linear(rmsnorm(x), w[p + "mlp_fc1"]), cfg.mlp_act == "relu2")
                x = vec_add(x, linear(h, w[p + "mlp_fc2"]))
            logits = linear(x, w["lm_head"])
            if targets is not None:
                losses.append(cross_entropy(logits, targets[pos]))
        return mean(losses) if targets is not None else logits

    def batch_loss(self, docs: list[list[int]]) -> Vec:
        """Mean over documents of each document's mean next-token loss."""
        return mean([self.forward(doc[:-1], doc[1:]) for doc in docs])

    @staticmethod
    def flat(tensors: dict[str, list[list[float]]]) -> array:
        """Concatenate row lists (in the flat layout's order, which dicts preserve)."""
        out = array("d")
        for rows in tensors.values():
            for row in rows:
                out.extend(row)
        return out


# ----------------------------------------------------------------------------------------------------
# 4. The engine: the contract every engine implements (see engines/__init__.py).


class PythonEngine:
    name = "python"
    #: peak bytes per number of microgpt.flops.working_set_bytes in a training step (tracemalloc, C16 L1 T8,
    #: batch 4: 1.35 MB for 27,424 numbers): float objects in lists, Vec nodes and closures; the memory check
    bytes_per_number = 48

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if dtype != "float64" or threads != 1:
            raise ValueError("the pure-Python engine computes in float64 on one thread only")
        self.cfg, self.tcfg = model_cfg, train_cfg
        self.model = GPT(model_cfg, params)
        self.m = {name: [[0.0] * len(row) for row in w.rows] for name, w in self.model.w.items()}
        self.v = {name: [[0.0] * len(row) for row in w.rows] for name, w in self.model.w.items()}
        self.t = 0

    def _backward(self, docs: list[list[int]]) -> float:
        check_docs(docs, self.cfg)
        for w in self.model.w.values():
            w.zero_grad()
        loss = self.model.batch_loss(docs)
        loss.backward()
        return loss.data[0]

    def _grads(self) -> dict[str, list[list[float]]]:
        return {name: w.grad for name, w in self.model.w.items()}

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self._backward(docs)
        return loss, self.model.flat(self._grads())

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss = self._backward(docs)
        self._clip_grad()
        self._adam(lr)
        return loss

    def _clip_grad(self) -> None:
        """Scale all gradients so their global L2 norm is at most grad_clip (if enabled)."""
        if self.tcfg.grad_clip <= 0:
            return
        weights = self.model.w.values()
        norm = math.sqrt(sum(dot(row, row) for w in weights for row in w.grad))
        if norm > self.tcfg.grad_clip:
            s = self.tcfg.grad_clip / norm
            for w in weights:
                w.grad = [scale(s, row) for row in w.grad]

    def _adam(self, lr: float) -> None:
        """One Adam update with bias correction, row by row.

        Per element: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g g;  p -= lr (m/bc1) / (sqrt(v/bc2) + eps),
        written with map() so the loops run in C, in exactly the formula's operations and order.
        """
        c = self.tcfg
        self.t += 1
        b1, b2, eps = c.beta1, c.beta2, c.eps
        c1, c2 = 1 - b1, 1 - b2
        bc1, bc2 = repeat(1.0 - b1 ** self.t), repeat(1.0 - b2 ** self.t)
        for name, w in self.model.w.items():
            ms, vs = self.m[name], self.v[name]
            for r, g in enumerate(w.grad):
                m = ms[r] = list(map(add, map(b1.__mul__, ms[r]), map(c1.__mul__, g)))
                v = vs[r] = list(map(add, map(b2.__mul__, vs[r]), map(mul, map(c2.__mul__, g), g)))
                denom = map(add, map(sqrt, map(truediv, v, bc2)), repeat(eps))
                w.rows[r] = list(map(sub, w.rows[r], map(truediv, map(lr.__mul__, map(truediv, m, bc1)), denom)))
            w.refresh()

    def eval_loss(self, docs: list[list[int]]) -> float:
        check_docs(docs, self.cfg)
        with no_grad():
            return self.model.batch_loss(docs).data[0]

    def logits(self, tokens: list[int]) -> list[float]:
        check_context(tokens, self.cfg)
        with no_grad():
            return self.model.forward(tokens).data

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, self.model.flat({name: w.rows for name, w in self.model.w.items()}))

    def export_adam(self) -> AdamState:
        return AdamState(self.model.flat(self.m), self.model.flat(self.v), self.t)

    def import_adam(self, state: AdamState) -> None:
        state.check(sum(len(row) for rows in self.m.values() for row in rows))
        m, v = FlatParams(self.cfg, state.m), FlatParams(self.cfg, state.v)
        self.m = {name: m.rows(name) for name in self.m}
        self.v = {name: v.rows(name) for name in self.v}
        self.t = state.t


# ----------------------------------------------------------------------------------------------------
# 5. main


def autograd_demo() -> None:
    """f(a, b) = a.b + sum(a): two hand-written ops, one backward sweep, gradients checked by hand."""
    def vec_dot(a: Vec, b: Vec) -> Vec:
        def backward(g):
            a.grad = axpy(g[0], b.data, a.grad)
            b.grad = axpy(g[0], a.data, b.grad)
        return Vec([dot(a.data, b.data)], (a, b), backward)

    def vec_sum(a: Vec) -> Vec:
        def backward(g):
            a.grad = [ga + g[0] for ga in a.grad]
        return Vec([sum(a.data)], (a,), backward)

    a, b = Vec([2.0, -3.0]), Vec([0.5, 4.0])
    f = mean([vec_add(vec_dot(a, b), vec_sum(a))])
    f.backward()
    print("f(a, b) = a.b + sum(a)   with a = [2, -3], b = [0.5, 4]")
    print(f"f     = {f.data[0]}   (2*0.5 - 3*4 + 2 - 3 = -12)")
    print(f"df/da = {a.grad}   (b + 1)")
    print(f"df/db = {b.grad}   (a)")


if __name__ == "__main__":
    import sys

    if "--autograd-demo" in sys.argv[1:]:
        autograd_demo()
    else:
        import engines
        from microgpt.trainer import main
        main(sys.argv[1:], engines, default_engine="python", description=__doc__)

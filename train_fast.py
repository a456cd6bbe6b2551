"""The C trainer: the same model and training loop as train.py, computed by the C extension fastops.

The engine keeps four flat buffers in the layout of microgpt/params.py -- parameters, gradients and
Adam's two moments -- as Python arrays, and hands them to ``fastops.GPT``, which reads and writes them in
place through the buffer protocol: no copies between Python and C, and no Python per op, per token or
per layer. One C call runs a whole optimizer step (forward, backward, clipping, Adam) or several.

``--dtype float64`` (the default) mirrors train.py to rounding; ``--dtype float32`` is the fast path.
Everything else -- the command line, data order, progress line, validation, checkpoints, sampling -- is
the shared code in microgpt/trainer.py, so checkpoints move freely between train.py and this file.

Two rungs, both kept and both measured (benchmarks/bench_fastops.py):
  * FastEngine ("c"): the fused rung above;
  * OpsEngine ("c-ops"): train.py's graph walked in Python op by op, each op one fastops kernel -- what
    moving the kernels alone to C buys, and what the Python between them still costs.
``--int8`` draws the samples through fastops.InferenceGPT instead of the engine: the trained weights
quantised per row to int8, VNNI where the CPU has it, whichever engine trained them.
``--isa`` picks the instruction set of the fused engine's kernels (default auto: the best this CPU and
build run; ``fastops.available_isas()`` lists them); the startup line names the one that runs.

    python train_fast.py --num-steps 1000            # fused C engine ("c")
    python train_fast.py --isa avx2                  # the same, on the AVX2 kernels
    python train_fast.py --dtype float32 --threads 2 --batch-size 32
    python train_fast.py --engine c-ops              # per-op rung: train.py's graph, each op in C
    python train_fast.py --num-steps 300 --int8      # train, then sample with int8 weights
    python train_fast.py --sample-from run.ckpt --int8
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable
from operator import attrgetter

from microgpt import UserError, native
from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import FlatParams, layout
from engines.flat import FlatArraysEngine
from train import topological_order



def _fastops():
    try:
        return native.import_fastops()
    except ImportError as e:
        raise UserError(f"the C extension fastops is not built ({e}); run: pip install -e .") from None


#: --isa names the fused engine knows of (fastops.available_isas() says which this CPU and build run)
ISA_NAMES = ("avx512", "avx2", "sse", "neon", "generic")
ISA_HELP = ("instruction set of the c engine's kernels: auto (default: the best available), "
            + ", ".join(ISA_NAMES) + "; fastops.available_isas() lists this machine's")


def available_isas() -> list[str]:
    """The instruction sets fastops.GPT can run on this CPU and build, best first."""
    return list(_fastops().available_isas())


def check_isa(name: str | None, flag: str = "--isa") -> str | None:
    """``name`` if the fused engine can run it here, None for auto (the best); a one-line UserError if not."""
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    name = name.strip().lower()
    available = available_isas()
    if name not in available:
        raise UserError(f"{flag} {name} is not available on this CPU or build (available: {', '.join(available)}; "
                        f"or auto)")
    return name


def parse_isas(text: str | None, flag: str = "--isa") -> list[str | None]:
    """A comma list of instruction sets: each name checked, 'auto' -> None (the best), 'all' -> every
    available one, best first; duplicates dropped."""
    out: list[str | None] = []
    for item in (text or "auto").split(","):
        names = available_isas() if item.strip().lower() == "all" else [check_isa(item, flag)]
        out += [n for n in names if n not in out]
    return out


class FastEngine(FlatArraysEngine):
    """The fused rung: one C call per optimizer step (see engines/__init__.py for the contract)."""

    name = "c"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1, isa: str | None = None):
        super().__init__(model_cfg, train_cfg, params, dtype)
        c = model_cfg
        fastops = _fastops()
        try:
            self.model = fastops.GPT(self.params, self.grads, self.m, self.v, c.vocab_size, c.n_embd, c.n_layer,
                                     c.n_head, c.block_size, mlp_act=c.mlp_act, beta1=train_cfg.beta1,
                                     beta2=train_cfg.beta2, eps=train_cfg.eps, grad_clip=train_cfg.grad_clip,
                                     threads=threads, isa=None if isa == "auto" else isa)
        except ValueError as e:
            if isa not in (None, "auto") and isa not in fastops.available_isas():  # say what would run instead
                raise ValueError(f"isa {isa!r} is not available on this CPU or build (available: "
                                 f"{', '.join(fastops.available_isas())})") from None
            raise

    check_isa = staticmethod(check_isa)   # the trainer checks --isa with it before reading any data

    @property
    def isa(self) -> str:
        """The instruction set of the kernels in use (results and the startup line record it)."""
        return self.model.isa

    @property
    def step(self) -> int:
        return self.model.step

    @step.setter
    def step(self, t: int) -> None:
        self.model.step = t

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self.compute_grads(docs)
        return loss, array("d", self.grads)

    def compute_grads(self, docs: list[list[int]]) -> float:
        """The docs' mean loss, its gradient left in the grads buffer (no update, no copy): the first half
        of a data-parallel step (microgpt/distributed.py), whose all-reduce runs on that buffer itself."""
        return self.model.loss_and_grad(docs)

    def apply_adam(self, lr: float) -> None:
        """Clip the grads buffer (by its global norm) and take one Adam step from it: a step's second half.
        One process keeps the fused call (train_step), whose update runs inside the backward pass."""
        self.model.apply_adam(lr)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        return self.model.train_steps([docs], [lr])[0]

    def train_steps(self, batches: list[list[list[int]]], lrs: list[float]) -> list[float]:
        """Several optimizer steps in one C call (what the benchmarks time)."""
        return self.model.train_steps(batches, lrs)

    def eval_loss(self, docs: list[list[int]]) -> float:
        return self.model.eval_loss(docs)

    def logits(self, tokens: list[int]) -> list[float]:
        return self.model.logits(tokens)


def int8_sampler(cfg: ModelConfig, params: FlatParams,
                 isa: str | None = None) -> tuple[Callable[[list[int]], list[float]], str]:
    """``--int8``: the logits of fastops.InferenceGPT over ``params`` in int8, and a line saying what runs.

    ``isa`` (--isa) goes to InferenceGPT when it has int8 kernels for that instruction set; when it has
    none (its set differs from the training engine's), InferenceGPT picks its best and the line says so."""
    fastops = _fastops()
    shape = (params.data, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size)
    isa = None if isa in (None, "auto") else isa
    note = ""
    try:
        try:
            model = fastops.InferenceGPT(*shape, mlp_act=cfg.mlp_act, isa=isa)
        except ValueError as e:
            if isa is None or "isa" not in str(e):
                raise
            model = fastops.InferenceGPT(*shape, mlp_act=cfg.mlp_act)
            note = f"; --isa {isa} has no int8 kernels here"
    except ValueError as e:
        raise UserError(f"--int8: fastops.InferenceGPT cannot run this model ({e})") from None
    fp32_bytes = 4 * len(params)  # every parameter is a weight (no biases, no norm gains)
    return model.logits, (f"int8 weights ({model.isa}): {model.weight_bytes:,} bytes, "
                          f"{fp32_bytes / model.weight_bytes:.2f}x smaller than float32{note}")


# ----------------------------------------------------------------------------------------------------
# The per-op rung: train.py's graph, op for op, each op one C kernel on array('d') vectors.


def zeros(n: int) -> array:
    return array("d", bytes(8 * n))


class Node:
    """train.py's Vec, holding array('d') data and gradient so that the C kernels can work in place."""

    __slots__ = ("data", "grad", "parents", "backward_fn")

    def __init__(self, data, parents: tuple = (), backward_fn=None, grad=None):
        self.data, self.grad, self.parents, self.backward_fn = data, grad, parents, backward_fn

    def backward(self) -> None:
        """Topological order (train.py's), then each node's closure in reverse."""
        order = topological_order(self, attrgetter("parents"))
        for node in order:
            if node.grad is None:  # the KV cache rows come with views into the cache's gradient
                node.grad = zeros(len(node.data))
        self.grad[0] = 1.0
        for node in reversed(order):
            if node.backward_fn is not None:
                node.backward_fn(node.grad)


class OpsGPT:
    """train.py's GPT with every op a fastops kernel on the flat params and grads buffers."""

    def __init__(self, cfg: ModelConfig, params: array, grads: array):
        self.cfg, self.p, self.g = cfg, params, grads
        self.ops = _fastops()
        self.off = {t.name: t.offset for t in layout(cfg)}
        self.record = True  # False: evaluation, no graph

    def node(self, data, parents, backward_fn, grad=None) -> Node:
        return Node(data, parents, backward_fn, grad) if self.record else Node(data, grad=grad)

    def embed(self, tok: int, pos: int) -> Node:
        c = self.cfg
        where = (self.off["wte"], c.vocab_size, self.off["wpe"], c.block_size, tok, pos)
        out = zeros(c.n_embd)
        self.ops.embedding(self.p, *where, out)
        return self.node(out, (), lambda g: self.ops.embedding_backward(self.g, *where, g))

    def rmsnorm(self, x: Node) -> Node:
        out = zeros(len(x.data))
        inv = self.ops.rmsnorm(x.data, out)
        return self.node(out, (x,), lambda g: self.ops.rmsnorm_backward(x.data, inv, g, x.grad))

    def linear(self, x: Node, name: str, rows: int, out=None, grad=None) -> Node:
        off = self.off[name]
        out = zeros(rows) if out is None else out
        self.ops.linear(self.p, off, x.data, out)
        return self.node(out, (x,), lambda g: self.ops.linear_backward(self.p, self.g, off, x.data, g, x.grad), grad)

    def relu_act(self, x: Node) -> Node:
        squared = self.cfg.mlp_act == "relu2"
        out = zeros(len(x.data))
        self.ops.relu_act(x.data, out, squared)
        return self.node(out, (x,), lambda g: self.ops.relu_act_backward(x.data, g, x.grad, squared))

    def attention(self, q: Node, cache, keys: list[Node], values: list[Node]) -> Node:
        K, V, dK, dV = cache
        n, n_head = len(keys), self.cfg.n_head
        out, weights = zeros(len(q.data)), zeros(n_head * n)
        self.ops.attention(q.data, K, V, n, n_head, out, weights)
        return self.node(out, (q, *keys, *values),
                         lambda g: self.ops.attention_backward(q.data, K, V, n, n_head, weights, g, q.grad, dK, dV))

    def vec_add(self, a: Node, b: Node) -> Node:
        out = zeros(len(a.data))
        self.ops.add(a.data, b.data, out)

        def backward(g):
            self.ops.axpy(1.0, g, a.grad)
            self.ops.axpy(1.0, g, b.grad)
        return self.node(out, (a, b), backward)

    def cross_entropy(self, logits: Node, target: int) -> Node:
        exps = zeros(len(logits.data))
        loss, total = self.ops.cross_entropy(logits.data, target, exps)
        return self.node(array("d", [loss]), (logits,),
                         lambda g: self.ops.cross_entropy_backward(exps, total, target, g[0], logits.grad))

    def mean(self, nodes: list[Node]) -> Node:
        n = len(nodes)

        def backward(g):
            for node in nodes:
                node.grad[0] += g[0] / n
        return self.node(array("d", [sum(node.data[0] for node in nodes) / n]), tuple(nodes), backward)

    def forward(self, tokens: list[int], targets: list[int] | None = None) -> Node:
        """train.py's forward: one position at a time, keys and values cached per layer."""
        c = self.cfg
        C = c.n_embd
        caches = [[memoryview(zeros(c.block_size * C)) for _ in range(4)] for _ in range(c.n_layer)]
        keys = [[] for _ in range(c.n_layer)]
        values = [[] for _ in range(c.n_layer)]
        losses = []
        for pos, tok in enumerate(tokens):
            row = slice(pos * C, (pos + 1) * C)
            x = self.rmsnorm(self.embed(tok, pos))
            for layer in range(c.n_layer):
                p = f"layer{layer}."
                K, V, dK, dV = caches[layer]
                h = self.rmsnorm(x)
                keys[layer].append(self.linear(h, p + "attn_wk", C, K[row], dK[row]))
                values[layer].append(self.linear(h, p + "attn_wv", C, V[row], dV[row]))
                o = self.attention(self.linear(h, p + "attn_wq", C), caches[layer], keys[layer], values[layer])
                x = self.vec_add(x, self.linear(o, p + "attn_wo", C))
                h = self.relu_act(self.linear(self.rmsnorm(x), p + "mlp_fc1", 4 * C))
                x = self.vec_add(x, self.linear(h, p + "mlp_fc2", C))
            logits = self.linear(x, "lm_head", c.vocab_size)
            if targets is not None:
                losses.append(self.cross_entropy(logits, targets[pos]))
        return self.mean(losses) if targets is not None else logits

    def batch_loss(self, docs: list[list[int]]) -> Node:
        return self.mean([self.forward(doc[:-1], doc[1:]) for doc in docs])


class OpsEngine(FlatArraysEngine):
    """The per-op rung ("c-ops"): Python walks the graph as train.py does, C computes each op. float64."""

    name = "c-ops"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if dtype != "float64" or threads != 1:
            raise ValueError("the per-op C engine computes in float64 on one thread only")
        super().__init__(model_cfg, train_cfg, params, dtype)
        self.model = OpsGPT(model_cfg, self.params, self.grads)
        self.step = 0

    def _check(self, docs: list[list[int]]) -> None:
        """The fused engine's checks, before any op runs (the kernels check again, one op at a time)."""
        if not docs:
            raise ValueError("a batch needs at least one document")
        for i, doc in enumerate(docs):
            if not 2 <= len(doc) <= self.cfg.block_size + 1:
                raise ValueError(f"document {i} has {len(doc)} token ids; each needs 2 to block_size + 1 = "
                                 f"{self.cfg.block_size + 1}")
            bad = [t for t in doc if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise ValueError(f"document {i}: id {bad[0]} is out of range for vocab_size {self.cfg.vocab_size}")

    def _backward(self, docs: list[list[int]]) -> float:
        self._check(docs)
        self.grads[:] = zeros(len(self.grads))
        self.model.record = True
        loss = self.model.batch_loss(docs)
        loss.backward()
        return loss.data[0]

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self._backward(docs)
        return loss, array("d", self.grads)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss = self._backward(docs)
        c = self.tcfg
        scale = 1.0
        if c.grad_clip > 0:
            norm = math.sqrt(self.model.ops.sum_squares(self.grads))
            if norm > c.grad_clip:
                scale = c.grad_clip / norm
        self.step += 1
        self.model.ops.adam(self.params, self.grads, self.m, self.v, lr, c.beta1, c.beta2, c.eps, self.step, scale)
        return loss

    def eval_loss(self, docs: list[list[int]]) -> float:
        self._check(docs)
        self.model.record = False
        return self.model.batch_loss(docs).data[0]

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits needs 1 to block_size = {self.cfg.block_size} token ids, got {len(tokens)}")
        self.model.record = False
        return self.model.forward(tokens).data.tolist()


if __name__ == "__main__":
    import engines
    from microgpt.trainer import main

    main(sys.argv[1:], engines, default_engine="c", description=__doc__, int8_sampler=int8_sampler)

"""MLX engines ("mlx" and "mlx-compile"): the same training step in Apple's array framework.

MLX is lazy: each operation only records a node, and the graph runs when a result is needed (``mx.eval``).
"mlx" builds and runs that graph afresh every step; "mlx-compile" wraps the very same step function in
``mx.compile``, which traces it once per input shape and fuses chains of elementwise operations into
single kernels. Both keep the weights and Adam's moments as three flat vectors in the layout of
microgpt/params.py: the matrices are static slices of the parameter vector, their gradients are
concatenated back into the flat layout, and the Adam update is part of the same graph.

Batching: the rows of engines.batching.grid_batch, as the jax engine (see its docstring): the batch's
real positions back to back, bucketed to a quarter-octave, attention on a power-of-two (B, T) grid
reached by gathers whose gradients are gathers too (``permute``, an ``mx.custom_function``: MLX's own
gradient of a gather is a scatter-add); a one-document batch is its own grid. The first version padded
every document to block_size: medium b32 float64 went from 1393 to 364 ms (mlx) and from 1348 to 346 ms
(mlx-compile) with this layout (one process, interleaved, CPU time; MLX's own textbook version,
benchmarks/yardsticks.py, 479 ms in the same run). MLX's CPU matrix products run at ~5 GFLOP/s here
(256 x 128 x 512, float32 or float64), a tenth of NumPy's BLAS, which is why MLX stays the slowest
framework on this CPU whatever the layout.

Why mx.compile looked slower than eager (README: 1,501 against 945 ms). MLX's compile guide says the first
call of a compiled function builds, optimises and *generates and compiles code*; on the CPU backend that is
C++ source per fused kernel built by the system compiler into /tmp/mlx/<version>/cpu/*.so (seconds per
kernel: 5.7 s for one three-op kernel on this loaded machine), cached on disk for later processes. The old
engine_table decided an engine was "slow" when its first step (the probe) took over 2 s, and then timed it
with no warm-up: the compiler's seconds landed in mlx-compile's "steady" samples. engine_table now reports
the first step apart and warms every engine up; measured so, compile is not slower than eager (medium b32
float64 346 against 364 ms; small b32 57 against 61 ms), and ``shapeless=True`` is not needed: a new
bucketed shape retraces the graph but reuses the compiled kernels.

Precision: MLX's CPU backend computes in float64 as well as float32; its GPU backends (Metal on Apple
silicon, CUDA with ``mlx[cuda]``) have no float64, so asking for it there is a ValueError. One catch,
measured here with mlx 0.32: in float64, ``mx.exp`` (and so ``mx.softmax`` and ``mx.logsumexp``) is only
float32-accurate (~2e-7 relative), which would put a float64 run 1e-8 away from the reference. So the
softmax and log-sum-exp are written out, and float64 engines compute e^x as ``mx.power(e, x)``, which is
exact to rounding.
Threads: on Linux the CPU backend runs each operation on one thread (its BLAS is the reference BLAS),
so ``threads`` must be 1.

    python train.py --engine mlx --num-steps 1000
    python train.py --engine mlx-compile --dtype float32 --batch-size 32
"""

from __future__ import annotations

import math
from array import array

import mlx.core as mx
import numpy as np

from engines.batching import fused_blocks, grid_batch
from microgpt.config import RMS_EPS, ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

DTYPES = {"float64": (mx.float64, np.float64), "float32": (mx.float32, np.float32)}
DEVICES = {"cpu": mx.cpu, "mps": mx.gpu, "cuda": mx.gpu}  # --device name -> MLX device


@mx.custom_function
def permute(x, index, inverse):
    """Rows ``x[index]``, index == len(x) reading a row of zeros; the gradient is a gather by ``inverse`` (see
    engines/jax_jit.py's permute, and engines.batching.Grid), not a scatter-add."""
    return mx.concatenate([x, mx.zeros_like(x[:1])])[index]


@permute.vjp
def _permute_vjp(primals, cotangent, output):
    x, index, inverse = primals
    return permute(cotangent, inverse, index), mx.zeros_like(index), mx.zeros_like(inverse)


def build_functions(cfg: ModelConfig, tcfg: TrainConfig, dtype, token_major: bool) -> dict:
    """The step, gradient, loss and logits functions of one model shape, optimiser, dtype and layout (not
    compiled); the batch arrives as engines.batching.Grid arrays."""
    parts = fused_blocks(cfg)
    heads, head_dim, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    if dtype == mx.float64:
        e = mx.array(math.e, dtype=mx.float64)
        exp = lambda x: mx.power(e, x)  # noqa: E731  (float64 mx.exp is float32-accurate, see above)
    else:
        exp = mx.exp

    def rmsnorm(x):
        return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)

    def shifted_exp(x):
        """exp(x - max(x)) along the last axis; the shift cancels in the result, so no gradient flows to it."""
        return exp(x - mx.stop_gradient(mx.max(x, axis=-1, keepdims=True)))

    def softmax(x):
        z = shifted_exp(x)
        return z / mx.sum(z, axis=-1, keepdims=True)

    def logsumexp(x):
        return mx.stop_gradient(mx.max(x, axis=-1)) + mx.log(mx.sum(shifted_exp(x), axis=-1))

    def unflatten(flat):
        return {name: flat[off:off + rows * cols].reshape(rows, cols) for name, off, rows, cols in parts}

    def flatten(w):
        return mx.concatenate([w[name].reshape(-1) for name, *_ in parts])

    def onehot(ids, n):
        return (ids[:, None] == mx.arange(n)).astype(dtype)

    def forward(w, tokens, positions, gather, slots):
        """Logits (rows, vocab) of a batch's rows (see jax_jit.build_functions, the same program)."""
        B, T = gather.shape
        causal = mx.tril(mx.ones((T, T), dtype=mx.bool_))
        x = rmsnorm(onehot(tokens, cfg.vocab_size) @ w["wte"] + onehot(positions, cfg.block_size) @ w["wpe"])
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            qkv = rmsnorm(x) @ w[p + "qkv"].T
            grid = permute(qkv, gather.reshape(-1), slots) if token_major else qkv
            grid = grid.reshape(B, T, 3, heads, head_dim)
            q, k, v = (grid[:, :, i].transpose(0, 2, 1, 3) for i in range(3))       # (B, H, T, D)
            scores = mx.where(causal, (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(head_dim), -math.inf)
            o = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B * T, C)
            x = x + (permute(o, slots, gather.reshape(-1)) if token_major else o) @ w[p + "attn_wo"].T
            u = rmsnorm(x) @ w[p + "mlp_fc1"].T
            u = mx.where(u > 0, u * u if cfg.mlp_act == "relu2" else u, 0)
            x = x + u @ w[p + "mlp_fc2"].T
        return x @ w["lm_head"].T

    def batch_loss(w, tokens, positions, targets, weights, gather, slots):
        logits = forward(w, tokens, positions, gather, slots)
        picked = mx.sum(logits * onehot(targets, cfg.vocab_size), axis=-1)
        return mx.sum((logsumexp(logits) - picked) * weights)

    def loss_and_grad(flat, *batch):
        """The gradient is taken per matrix and concatenated once; the gradient of each slice of the flat
        vector would be a zero-padded full-length vector, one per matrix, all summed."""
        loss, grads = mx.value_and_grad(batch_loss)(unflatten(flat), *batch)
        return loss, flatten(grads)

    def train_step(flat, m, v, hyper, *batch):
        """One optimiser step; ``hyper`` = (lr, 1 - beta1^t, 1 - beta2^t), computed on the host per step."""
        loss, g = loss_and_grad(flat, *batch)
        if tcfg.grad_clip > 0:
            norm = mx.sqrt(mx.sum(g * g))
            g = mx.where(norm > tcfg.grad_clip, g * (tcfg.grad_clip / norm), g)
        m = tcfg.beta1 * m + (1 - tcfg.beta1) * g
        v = tcfg.beta2 * v + (1 - tcfg.beta2) * g * g
        lr, bias1, bias2 = hyper[0], hyper[1], hyper[2]
        flat = flat - lr * (m / bias1) / (mx.sqrt(v / bias2) + tcfg.eps)
        return flat, m, v, loss

    return {"train_step": train_step, "loss_and_grad": loss_and_grad,
            "eval_loss": lambda flat, *batch: batch_loss(unflatten(flat), *batch),
            "logits": lambda flat, *batch: forward(unflatten(flat), *batch)}


class MlxEngine:
    """MLX, lazy graph run every step (see engines/__init__.py for the contract)."""

    name = "mlx"
    compiled = False

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1, device: str = "cpu"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        if threads != 1:
            raise ValueError(f"MLX's CPU backend computes on one thread; threads must be 1 (got {threads!r})")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)} for MLX (got {device!r})")
        self.device = DEVICES[device]
        if not mx.is_available(self.device):
            raise ValueError(f"MLX has no GPU backend here for device {device!r}")
        if dtype == "float64" and self.device != mx.cpu:
            raise ValueError("MLX computes float64 on the CPU only; use --dtype float32 on a GPU")
        self.cfg, self.tcfg = model_cfg, train_cfg
        self.dtype, self.np_dtype = DTYPES[dtype]
        self.fns = {}   # token-major or not -> the functions; a one-document batch is its own grid
        for layout in (True, False):
            fns = build_functions(model_cfg, train_cfg, self.dtype, layout)
            self.fns[layout] = {name: mx.compile(f) for name, f in fns.items()} if self.compiled else fns
        self.params = self._put(params.data)
        self.m, self.v = self._put(bytes(8 * len(params))), self._put(bytes(8 * len(params)))
        self.t = 0

    def _put(self, flat: array | bytes) -> mx.array:
        """A float64 host buffer (array('d') or zero bytes) as a vector in this engine's dtype."""
        return mx.array(np.frombuffer(flat, np.float64), dtype=self.dtype)

    def _batch(self, docs: list[list[int]]) -> tuple[dict, list[mx.array]]:
        """The functions for this batch's layout, and the batch as MLX arrays."""
        token_major = len(docs) > 1
        g = grid_batch(docs, self.cfg, self.np_dtype, token_major)
        return self.fns[token_major], [mx.array(a, dtype=self.dtype) if a is g.weights else mx.array(a) for a in g]

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        fn, batch = self._batch(docs)
        with mx.stream(self.device):
            loss, grad = fn["loss_and_grad"](self.params, *batch)
            mx.eval(loss, grad)
        return loss.item(), self._host(grad)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        fn, batch = self._batch(docs)  # bad documents raise before the step count moves
        self.t += 1
        c = self.tcfg
        hyper = mx.array([lr, 1 - c.beta1 ** self.t, 1 - c.beta2 ** self.t], dtype=self.dtype)
        with mx.stream(self.device):
            self.params, self.m, self.v, loss = fn["train_step"](self.params, self.m, self.v, hyper, *batch)
            mx.eval(self.params, self.m, self.v, loss)  # the step is finished before the loss is returned
        return loss.item()

    def eval_loss(self, docs: list[list[int]]) -> float:
        fn, batch = self._batch(docs)
        with mx.stream(self.device):
            loss = fn["eval_loss"](self.params, *batch)
            mx.eval(loss)
        return loss.item()

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits need 1..{self.cfg.block_size} tokens (got {len(tokens)})")
        fn, batch = self._batch([list(tokens) + [0]])  # a dummy target makes it a one-document batch
        tokens_, positions, _, _, gather, slots = batch
        with mx.stream(self.device):
            logits = fn["logits"](self.params, tokens_, positions, gather, slots)
            mx.eval(logits)
        return np.array(logits, np.float64)[len(tokens) - 1].tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, self._host(self.params))

    def export_adam(self) -> AdamState:
        return AdamState(self._host(self.m), self._host(self.v), self.t)

    def import_adam(self, state: AdamState) -> None:
        n = self.params.size
        state.check(n)
        self.m, self.v, self.t = self._put(array("d", state.m)), self._put(array("d", state.v)), state.t

    @staticmethod
    def _host(x: mx.array) -> array:
        return array("d", np.array(x, np.float64).tobytes())


class MlxCompiledEngine(MlxEngine):
    """The same functions through mx.compile: traced once per batch size, elementwise chains fused."""

    name = "mlx-compile"
    compiled = True

"""MLX engines ("mlx" and "mlx-compile"): the same training step in Apple's array framework.

MLX is lazy: each operation only records a node, and the graph runs when a result is needed (``mx.eval``).
"mlx" builds and runs that graph afresh every step; "mlx-compile" wraps the very same step function in
``mx.compile``, which traces it once per input shape and fuses chains of elementwise operations into
single kernels. Both keep the weights and Adam's moments as lists of matrices, the flat layout of
microgpt/params.py cut at engines.batching.fused_blocks (a layer's q, k, v as one block); the Adam update
is part of the step's graph, and export concatenates the matrices on the host.

Batching: the rows of engines.batching.grid_batch, as the jax engine (see its docstring): the batch's
real positions back to back, attention on a (B, T) grid reached by gathers whose gradients are gathers
too (``permute``, an ``mx.custom_function``: MLX's own gradient of a gather is a scatter-add); a
one-document batch is its own grid. Eager "mlx" takes each batch at its exact shape (buckets only spare a
compiler its retracing, and cost eager rows: names padded to T = 8 or 16 are 29% more rows than their real
positions over the first 400 training names). "mlx-compile" buckets (rows to a quarter-octave, T to a power
of two: a handful of shapes) one-document batches always, and multi-document ones below
``EXACT_SHAPES_FROM`` parameters; from there on, it takes them at their exact shape (see "Buckets or exact
shapes"). The first version padded every document to block_size: medium b32 float64 went from 1393 to
364 ms (mlx) and from 1348 to 346 ms (mlx-compile) with this layout (one process, interleaved, CPU
time; MLX's own textbook version, benchmarks/yardsticks.py, 479 ms in the same run). MLX's CPU matrix
products run at ~5 GFLOP/s here (256 x 128 x 512, float32 or float64), a tenth of NumPy's BLAS, which is
why MLX stays the slowest framework on this CPU whatever the layout.

Why mx.compile looked slower than eager (README: 1,501 against 945 ms). MLX's compile guide says the first
call of a compiled function builds, optimises and *generates and compiles code*; on the CPU backend that is
C++ source per fused kernel built by the system compiler into /tmp/mlx/<version>/cpu/*.so (seconds per
kernel: 5.7 s for one three-op kernel on this loaded machine), cached on disk for later processes. The old
engine_table decided an engine was "slow" when its first step (the probe) took over 2 s, and then timed it
with no warm-up: the compiler's seconds landed in mlx-compile's "steady" samples. engine_table now reports
the first step apart and warms every engine up; measured so, compile is not slower than eager (medium b32
float64 346 against 364 ms; small b32 57 against 61 ms). A new shape retraces the graph but reuses the
compiled kernels (named by their operations, types and contiguity; the shape is an argument).

Buckets or exact shapes for mx.compile (mlx 0.32.4, one engine per process, CPU ms, medians of 3-5 runs
on the shared machine). Once eager mlx ran exact shapes, bucketed mx.compile lost at medium b32 (float64 356
against 332, 314 against 284): its padded rows (~12% at 32 names, and T = 16) cost more than fusion saves,
for matrix products and gathers are most of that step and compile does not change them; at a shape it has
seen, the compiled step is only 0-3% faster than eager (medium b32 float64 268-273 against 277; small b32
float32 42.6-44.1 against 43.9-44.2). A retrace costs ~3 ms (tiny), ~4 (small), ~10 (medium), and at 32
names nearly every step is a new exact shape (12 in 12 medium steps, 26 in 30 small ones), so compiling
each exact shape on sight lost at small (float32 49.0 against 45.7, 5 runs). Hence, from EXACT_SHAPES_FROM
parameters (small: 102,784, medium: 797,440), a multi-document batch runs at its exact shape, eagerly the
first time its shape comes and compiled from the second (a shape's retrace is paid once, and only for a
shape that recurs; in a long run most steps find theirs compiled): small b32 float32 46.4 against eager 45.7
(5 runs), float64 47.9 against 50.2; medium b32 float64 282 against 276. Below it (tiny: 4,064) a padded
row is cheap and a retrace dear, and the buckets stay (tiny b32 float64 2.5-2.8 against eager 3.6-3.9;
exact shapes 3.7, tiered 3.4, rows to a multiple of 8 or 16 2.9 and 2.7). One-document batches stay
bucketed at every size (T = 8 or 16, two shapes): tiered exact lengths lost at small b1 (3.0 against 2.7).
Also measured: rows to a multiple of 16 at medium b32 (302 and 273 against eager 284 and 273), an eager
gradient with only clipping and Adam compiled (333 against 332). ``shapeless=True`` throws on this step
("CustomTransforms cannot infer output shapes": ``linear`` and ``permute`` are ``mx.custom_function``; ``x[:1]``
is a Slice, which has no output-shape rule either). So at small and medium b32 mlx-compile and mlx are
within a few percent of each other, either side from run to run (engine_table's few steps per row): no
choice of shapes beats a step that compile can make only 0-3% faster.

Why eager mlx lost to its yardstick at medium b1, and what changed (issue 13). The README's table had it at
31.2 ms against the textbook mlx.nn + optim.Adam version's 26.2 (float64; 27.3 against 23.2 in float32),
while mlx-compile was faster (21.8). Measured with mlx 0.32.4 (perf, ``ru_minflt``, the graph through
``mx.export_to_dot``, the BLAS calls logged by an LD_PRELOAD shim):

* The flat vectors. Medium's are 6.4 MB in float64, and an eager step allocated four afresh (the concatenated
  gradient and the Adam temporaries that cannot take over an input's buffer). MLX's CPU allocator keeps at
  most 32 MB of freed buffers and does not evict on free (mlx/backend/no_gpu/allocator.cpp): once smaller
  buffers fill it, each 6.4 MB buffer goes back to malloc and from there to the kernel, ~4,600 page faults per
  step. Whether that happens depends on what the process allocated before: the same code took 30 ms (no
  faults; still more than the yardstick's 26.6: the next two items) in one process and 38-44 in others.
  Per-matrix arrays (the largest 512 x 128, 512 KB) come back from the cache: no faults in any run. Adam is
  then 13 operations per matrix rather than 13 in all, ~4 us of dispatch each: tiny and small lose up to 4%
  (tiny b32), far inside their margin to the yardstick. ``mx.set_cache_limit`` would be the other way out, but
  it is process-wide: it would change the memory of the yardstick and of any MLX code run beside the engine
  (engine_table runs them in one process).
* Weight gradients: MLX's vjp of ``x @ w.T`` is a transposed view (``linear``), which the flattening
  copied with strides (``copy_general_general``, 10% of the step in perf). Computed contiguous:
  mlx-compile medium b1 float64 24.1 -> 19.5 ms, eager ~4% (one engine per process, alternating, 3-5 runs).
* Buckets cost eager rows (above); Adam divided by both bias corrections (now two host scalars, one
  division); a slice's gradient is a zero array plus a slice update (``mx.split`` for q, k, v now) and
  ``mx.where``'s is another select (an additive causal mask now): 820 -> 760 nodes in the gradient graph.

Not the cause: the number of operations (the step's graph had 868 nodes, the yardstick's 1,928); the
matrix products (the same ones, q, k, v fused in one call here and three there; 7.2 against 6.8 ms of
the step in perf); the float64 ``exp`` (float32 showed the same) and RMSNorm (``mx.fast.rms_norm`` was no
faster and is float32-accurate in float64). Before -> after (yardstick), one engine per process, order
alternating, CPU ms per step, medians of 3-5 runs on the shared machine: medium b1 float64 37.1 (a
faulting run) -> 19.1 (24.3), float32 18.5 -> 13.7 (16.5); medium b32 float64 331 -> 282 (396), float32
302 -> 261 (381); small b1 float64 3.95 -> 4.04 (5.09), b32 50.4 -> 43.8 (64.3); tiny b1 1.49 -> 1.38
(1.86), b32 3.73 -> 3.88 (4.37). mlx-compile medium b1 float64 26.8 -> 24.2, float32 15.3 -> 12.7; at
b32 unchanged (float64 306 against 307, float32 331 against 332). engine_table.py over tiny, small and
medium x b1, b32 in both precisions, twice: eager mlx under its yardstick in all 24 cells (by 5% or more).

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
#: From this many parameters on, mlx-compile takes batches of several documents at their exact shape (eagerly
#: the first time a shape comes, compiled from its second) rather than bucketed (padded rows): see "Buckets or
#: exact shapes" above.
EXACT_SHAPES_FROM = 50_000


@mx.custom_function
def permute(x, index, inverse):
    """Rows ``x[index]``, index == len(x) reading a row of zeros; the gradient is a gather by ``inverse`` (see
    engines/jax_jit.py's permute, and engines.batching.Grid), not a scatter-add."""
    return mx.concatenate([x, mx.zeros_like(x[:1])])[index]


@permute.vjp
def _permute_vjp(primals, cotangent, output):
    x, index, inverse = primals
    return permute(cotangent, inverse, index), mx.zeros_like(index), mx.zeros_like(inverse)


@mx.custom_function
def linear(x, w):
    """``x @ w.T``, whose weight gradient is computed as ``cotangent.T @ x``: contiguous in ``w``'s (out, in)
    layout. MLX's own vjp gives ``(x.T @ cotangent).T``, a transposed view, which Adam's elementwise
    operations then read with strides (see the module docstring)."""
    return x @ w.T


@linear.vjp
def _linear_vjp(primals, cotangent, output):
    x, w = primals
    return cotangent @ w, cotangent.T @ x


def build_functions(cfg: ModelConfig, tcfg: TrainConfig, dtype, token_major: bool) -> dict:
    """The step, gradient, loss and logits functions of one model shape, optimiser, dtype and layout (not
    compiled); the batch arrives as engines.batching.Grid arrays."""
    names = [name for name, *_ in fused_blocks(cfg)]
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

    def onehot(ids, n):
        return (ids[:, None] == mx.arange(n)).astype(dtype)

    def forward(matrices, tokens, positions, gather, slots):
        """Logits (rows, vocab) of a batch's rows (see jax_jit.build_functions, the same program)."""
        w = dict(zip(names, matrices))
        B, T = gather.shape
        # 0 on and below the diagonal, -inf above: added to the scores (an addition's gradient is the
        # cotangent itself, where mx.where's is another select)
        mask = mx.triu(mx.full((T, T), -math.inf, dtype=dtype), k=1)
        x = rmsnorm(onehot(tokens, cfg.vocab_size) @ w["wte"] + onehot(positions, cfg.block_size) @ w["wpe"])
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            qkv = linear(rmsnorm(x), w[p + "qkv"])
            grid = permute(qkv, gather.reshape(-1), slots) if token_major else qkv
            grid = grid.reshape(B, T, 3, heads, head_dim)
            q, k, v = (a.squeeze(2).transpose(0, 2, 1, 3) for a in mx.split(grid, 3, axis=2))  # (B, H, T, D)
            scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(head_dim) + mask
            o = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B * T, C)
            x = x + linear(permute(o, slots, gather.reshape(-1)) if token_major else o, w[p + "attn_wo"])
            u = linear(rmsnorm(x), w[p + "mlp_fc1"])
            u = mx.where(u > 0, u * u if cfg.mlp_act == "relu2" else u, 0)
            x = x + linear(u, w[p + "mlp_fc2"])
        return linear(x, w["lm_head"])

    def batch_loss(w, tokens, positions, targets, weights, gather, slots):
        logits = forward(w, tokens, positions, gather, slots)
        picked = mx.sum(logits * onehot(targets, cfg.vocab_size), axis=-1)
        return mx.sum((logsumexp(logits) - picked) * weights)

    def loss_and_grad(w, *batch):
        return mx.value_and_grad(batch_loss)(w, *batch)

    def train_step(w, m, v, hyper, *batch):
        """One optimiser step over the matrices (lists in fused_blocks order); ``hyper`` = (lr / (1 - beta1^t),
        1 / sqrt(1 - beta2^t)), computed on the host per step: w -= lr m^ / (sqrt(v^) + eps) as two products
        where train.py divides twice (a rounding apart; in an eager step each operation is a pass over memory)."""
        loss, g = loss_and_grad(w, *batch)
        if tcfg.grad_clip > 0:
            norm = mx.sqrt(sum(mx.sum(mx.square(gi)) for gi in g))
            factor = mx.where(norm > tcfg.grad_clip, tcfg.grad_clip / norm, 1)
            g = [gi * factor for gi in g]
        step, scale = hyper[0], hyper[1]
        m = [tcfg.beta1 * mi + (1 - tcfg.beta1) * gi for mi, gi in zip(m, g)]
        v = [tcfg.beta2 * vi + (1 - tcfg.beta2) * mx.square(gi) for vi, gi in zip(v, g)]
        w = [wi - (step * mi) / (mx.sqrt(vi) * scale + tcfg.eps) for wi, mi, vi in zip(w, m, v)]
        return w, m, v, loss

    return {"train_step": train_step, "loss_and_grad": loss_and_grad, "eval_loss": batch_loss, "logits": forward}


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
        self.eager = {layout: build_functions(model_cfg, train_cfg, self.dtype, layout) for layout in (True, False)}
        # token-major or not -> the functions; a one-document batch is its own grid
        self.fns = ({layout: {name: mx.compile(f) for name, f in fns.items()} for layout, fns in self.eager.items()}
                    if self.compiled else self.eager)
        self.params = self._put(params.data)
        self.m, self.v = self._put(bytes(8 * len(params))), self._put(bytes(8 * len(params)))
        self.t = 0
        # bucketed shapes: mx.compile's one-document batches always, its multi-document ones for small models;
        # an exact shape runs eagerly the first time it comes, compiled from its second (see the docstring)
        self.bucketed = {False: self.compiled,
                         True: self.compiled and sum(w.size for w in self.params) < EXACT_SHAPES_FROM}
        self.seen_shapes: set[tuple[int, ...]] = set()

    def _put(self, flat: array | bytes) -> list[mx.array]:
        """A float64 host buffer in the flat layout (array('d') or zero bytes) as this engine's matrices."""
        data = np.frombuffer(flat, np.float64)
        return [mx.array(data[off:off + rows * cols].reshape(rows, cols), dtype=self.dtype)
                for _, off, rows, cols in fused_blocks(self.cfg)]

    def _batch(self, docs: list[list[int]]) -> tuple[dict, list[mx.array]]:
        """The functions for this batch's layout, and the batch as MLX arrays."""
        token_major = len(docs) > 1
        g = grid_batch(docs, self.cfg, self.np_dtype, token_major, bucketed=self.bucketed[token_major])
        fns = self.fns[token_major]
        if self.compiled and not self.bucketed[token_major]:
            shape = g.gather.shape + g.tokens.shape
            if shape not in self.seen_shapes:
                self.seen_shapes.add(shape)
                fns = self.eager[token_major]
        return fns, [mx.array(a, dtype=self.dtype) if a is g.weights else mx.array(a) for a in g]

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
        hyper = mx.array([lr / (1 - c.beta1 ** self.t), 1 / math.sqrt(1 - c.beta2 ** self.t)], dtype=self.dtype)
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
        n = sum(w.size for w in self.params)
        state.check(n)
        self.m, self.v, self.t = self._put(array("d", state.m)), self._put(array("d", state.v)), state.t

    @staticmethod
    def _host(matrices: list[mx.array]) -> array:
        """The matrices back in the flat layout, as array('d')."""
        return array("d", np.concatenate([np.array(w, np.float64).ravel() for w in matrices]).tobytes())


class MlxCompiledEngine(MlxEngine):
    """The same functions through mx.compile: traced once per batch size, elementwise chains fused."""

    name = "mlx-compile"
    compiled = True

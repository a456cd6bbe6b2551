"""JAX engine ("jax"): the whole training step -- forward, gradient, clipping, Adam -- as one jax.jit function.

The weights and Adam's two moments live on the device as three flat vectors in the layout of
microgpt/params.py. Inside the compiled step the matrices are static slices of the parameter vector,
their gradients are concatenated back into the flat layout, and the Adam update runs in the same program:
a step moves only the batch's token ids in and one loss out.

Batching: token-major rows, bucketed. jit compiles one program per input shape (JAX's "Just-in-time
compilation" guide: a new shape retraces and recompiles; its 201 pages recommend few, static shapes and
buffer donation, both used here). The first version padded every document to block_size and mapped a
one-document loss with ``jax.vmap``: one shape per batch size, but names average ~7 of 32 positions, so
~4.5x of the work was padding. Two ways out were measured side by side (one process, interleaved samples,
CPU time, 2-core Xeon shared with other jobs, float64, one thread):

* token-major rows (kept): the batch's real positions back to back, one matrix product per linear layer
  over all of them, rows rounded up to a quarter-octave ``engines.batching.bucket`` (< 25% padding, at most
  four shapes per doubling); attention alone runs on a (B, T) grid, T the longest document rounded up to
  a power of two, reached by gathers (``permute``). medium b32: 47 ms against numpy's 49 (the padded
  vmap engine took 196 ms), small b32 8.4 ms against 11.7, tiny b32 1.2 against 1.6;
* length bucketing (``JaxPaddedEngine``, kept only to measure against): each document padded to the
  batch's power-of-two T, the (B, T) grid as the rows -- no gathers, fewer shapes, but still ~2.2x the real
  positions at b32: medium b32 108 ms, small b32 15.2 ms. It wins only for one document, where the grid
  is the document (tiny b1 0.32 against 0.40 ms, medium b1 13.9 against 16.5), so a one-document batch
  runs on its own grid and several documents run token-major.

Three more changes, each measured on XLA's CPU backend: the gradient of a gather is a scatter-add, which
XLA's CPU backend runs slowly, so the grid moves are gathers both ways (``permute``'s custom VJP gathers by
the inverse index) and the embeddings and the target logits are one-hot products (their gradients are
products too): the medium b32 step 66 -> 46 ms. Autodiff's weight gradient dy.T @ x is a dot with a
transposed operand that XLA's CPU dot runs at half speed; transposing dy into memory first (``linear``,
from 128 rows on) took medium b32 from 54 to 47 ms. Each layer's q, k and v matrices lie side by side in
the flat layout and are one (3 n_embd, n_embd) product. Compilation is reported apart (engine_table's
"first step"): ~2 s per new shape at medium on this machine, a handful of shapes per run.

float64. JAX computes in float32 unless ``jax_enable_x64`` is on; a float64 engine switches it on for the
whole process before it creates any array. Everything a float32 engine creates names its dtype, so
float32 engines keep computing in float32 whether or not x64 is on.

Threads. XLA reads its CPU thread settings from the XLA_FLAGS environment variable once, when JAX
starts its CPU client, and has no way to change them afterwards (and no hard cap: they steer the
Eigen thread pool XLA's matmuls use). The first engine in a process sets them and records the count in
``xla_threads``; asking for a different count later is a ValueError (run another process instead).

    python train.py --engine jax --num-steps 1000
    python train.py --engine jax --dtype float32 --batch-size 32
"""

from __future__ import annotations

import math
import os
from array import array

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import xla_bridge  # backends_are_initialized(): JAX has no public way to ask if XLA started

from engines.batching import Grid, fused_blocks, grid_batch
from microgpt.config import RMS_EPS, ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

DTYPES = {"float64": np.float64, "float32": np.float32}
DEVICES = {"cpu": "cpu", "cuda": "cuda"}  # --device name -> JAX platform

#: Jitted functions per (model shape, optimiser), shared by engines so each compiles once per process.
_JITTED: dict[tuple, dict] = {}

#: The thread count XLA's CPU client was started with in this process (None until an engine starts it).
xla_threads: int | None = None


def _start_xla(threads: int) -> None:
    """Set XLA's CPU thread flags before JAX starts, or check that the running client has them."""
    global xla_threads
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= os.cpu_count():
        raise ValueError(f"threads must be in [1, {os.cpu_count()}] (got {threads!r})")
    if xla_threads is None:
        if xla_bridge.backends_are_initialized():
            raise ValueError("JAX was started before the jax engine could set XLA's thread count; "
                             "create the engine before running other JAX code")
        multi = "true" if threads > 1 else "false"
        flags = f"--xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={threads}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
        xla_threads = threads
    elif threads != xla_threads:
        raise ValueError(f"XLA was started with {xla_threads} thread(s) in this process and cannot change; "
                         f"run threads={threads} in a new process")


@jax.custom_vjp
def permute(x, index, inverse):
    """Rows ``x[index]``, where index == len(x) reads a row of zeros; ``inverse`` is index's inverse partial
    permutation (engines.batching.Grid's ``gather`` and ``slots``), so the gradient is a gather too. Measured:
    XLA's CPU scatter-add, jax's own gradient of a gather, made the step's backward several times slower."""
    return jnp.concatenate([x, jnp.zeros_like(x[:1])])[index]


def _permute_fwd(x, index, inverse):
    return permute(x, index, inverse), (index, inverse)


def _permute_bwd(saved, dy):
    index, inverse = saved
    return permute(dy, inverse, index), None, None


permute.defvjp(_permute_fwd, _permute_bwd)


def linear(x, w):
    """x @ w.T. From 128 rows on, the weight gradient transposes dy into memory first: XLA's CPU dot with a
    transposed left operand (dy.T @ x, what autodiff emits) measured 1.4 ms against 0.8 ms for the same
    product after an explicit transpose (256 x 512 x 128, float64, one thread); below that the copy and the
    custom gradient cost more than they save (tiny and small at batch 1: 2x slower steps)."""
    return x @ w.T if x.shape[0] < 128 else _linear_copied_dy(x, w)


@jax.custom_vjp
def _linear_copied_dy(x, w):
    return x @ w.T


def _linear_fwd(x, w):
    return x @ w.T, (x, w)


def _linear_bwd(saved, dy):
    x, w = saved
    # the optimization barrier keeps XLA from folding the transpose back into the dot
    return dy @ w, jax.lax.optimization_barrier(dy.T) @ x


_linear_copied_dy.defvjp(_linear_fwd, _linear_bwd)


def build_functions(cfg: ModelConfig, tcfg: TrainConfig, token_major: bool = True) -> dict:
    """The jitted functions of one model shape and optimiser; weights are always the first argument.

    The batch arrives as ``engines.batching.Grid`` arrays: rows for the linear layers (token-major, or the
    (B, T) grid itself when ``token_major`` is False) and the gathers between rows and attention's grid."""
    parts = fused_blocks(cfg)
    heads, head_dim, C = cfg.n_head, cfg.head_dim, cfg.n_embd

    def rmsnorm(x):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)

    def unflatten(flat):
        return {name: flat[off:off + rows * cols].reshape(rows, cols) for name, off, rows, cols in parts}

    def flatten(w):
        return jnp.concatenate([w[name].ravel() for name, *_ in parts])

    def forward(w, tokens, positions, gather, slots):
        """Logits (rows, vocab) of a batch's rows."""
        B, T = gather.shape
        causal = jnp.tril(jnp.ones((T, T), bool))

        def to_grid(rows):   # (R, C) -> (B, T, C), a zero row in the padded slots
            if not token_major:
                return rows.reshape(B, T, -1)
            return permute(rows, gather.reshape(-1), slots).reshape(B, T, -1)

        # Embeddings as one-hot matrix products: their gradients are then products too, not scatter-adds.
        onehot = lambda ids, n: jax.nn.one_hot(ids, n, dtype=w["wte"].dtype)  # noqa: E731
        x = rmsnorm(onehot(tokens, cfg.vocab_size) @ w["wte"] + onehot(positions, cfg.block_size) @ w["wpe"])
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            qkv = to_grid(linear(rmsnorm(x), w[p + "qkv"])).reshape(B, T, 3, heads, head_dim)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))       # (B, H, T, D)
            scores = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim), -jnp.inf)
            o = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B * T, C)
            x = x + linear(o if not token_major else permute(o, slots, gather.reshape(-1)), w[p + "attn_wo"])
            u = linear(rmsnorm(x), w[p + "mlp_fc1"])
            u = jnp.where(u > 0, u * u if cfg.mlp_act == "relu2" else u, 0)
            x = x + linear(u, w[p + "mlp_fc2"])
        return linear(x, w["lm_head"])

    def batch_loss(w, tokens, positions, targets, weights, gather, slots):
        """Sum of weighted row losses = the mean over documents of each document's mean loss."""
        logits = forward(w, tokens, positions, gather, slots)
        picked = jnp.sum(logits * jax.nn.one_hot(targets, cfg.vocab_size, dtype=logits.dtype), axis=-1)
        losses = jax.nn.logsumexp(logits, axis=-1) - picked
        return jnp.sum(losses * weights)

    def loss_and_grad(flat, *batch):
        """The gradient is taken per matrix and concatenated once: differentiating the slices of the flat
        vector instead makes XLA pad every matrix's gradient to the full vector length and sum the pads,
        a dozen-fold slower for the larger models."""
        loss, grads = jax.value_and_grad(batch_loss)(unflatten(flat), *batch)
        return loss, flatten(grads)

    def train_step(flat, m, v, hyper, *batch):
        """One optimiser step; ``hyper`` = (lr, 1 - beta1^t, 1 - beta2^t), computed on the host per step."""
        loss, g = loss_and_grad(flat, *batch)
        if tcfg.grad_clip > 0:
            norm = jnp.sqrt(jnp.sum(g * g))
            g = jnp.where(norm > tcfg.grad_clip, g * (tcfg.grad_clip / norm), g)
        m = tcfg.beta1 * m + (1 - tcfg.beta1) * g
        v = tcfg.beta2 * v + (1 - tcfg.beta2) * g * g
        lr, bias1, bias2 = hyper[0], hyper[1], hyper[2]
        flat = flat - lr * (m / bias1) / (jnp.sqrt(v / bias2) + tcfg.eps)
        return flat, m, v, loss

    return {
        # Donating the weights and moments lets XLA update them in place instead of allocating new buffers.
        "train_step": jax.jit(train_step, donate_argnums=(0, 1, 2)),
        "loss_and_grad": jax.jit(loss_and_grad),
        "eval_loss": jax.jit(lambda flat, *batch: batch_loss(unflatten(flat), *batch)),
        "logits": jax.jit(lambda flat, tokens, positions, gather, slots, last:
                          forward(unflatten(flat), tokens, positions, gather, slots)[last]),
    }


def jitted(cfg: ModelConfig, tcfg: TrainConfig, token_major: bool = True) -> dict:
    """The functions of ``build_functions``, built once per model shape, optimiser and layout in this process."""
    key = (tuple(cfg.to_dict().items()), tcfg.beta1, tcfg.beta2, tcfg.eps, tcfg.grad_clip, token_major)
    if key not in _JITTED:
        _JITTED[key] = build_functions(cfg, tcfg, token_major)
    return _JITTED[key]


class JaxEngine:
    """One jitted step on a flat parameter vector, token-major rows (see engines/__init__.py for the contract)."""

    name = "jax"
    token_major = True   # for batches of several documents; one document is its own grid (no gathers)

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1, device: str = "cpu"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)} for JAX (got {device!r})")
        _start_xla(threads)
        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        try:
            self.device = jax.devices(DEVICES[device])[0]
        except RuntimeError as e:
            raise ValueError(f"JAX cannot use device {device!r} here ({e})") from None
        self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, DTYPES[dtype]
        # layout (token-major or not) -> the jitted functions
        self.fns = {layout: jitted(model_cfg, train_cfg, layout) for layout in {self.token_major, False}}
        self.params = self._put(params.data)
        self.m, self.v = self._put(bytes(8 * len(params))), self._put(bytes(8 * len(params)))
        self.t = 0

    def _put(self, flat: array | bytes) -> jax.Array:
        """A float64 host buffer (array('d') or zero bytes) as a device vector in this engine's dtype."""
        return jax.device_put(np.frombuffer(flat, np.float64).astype(self.dtype), self.device)

    def _batch(self, docs: list[list[int]]) -> tuple[dict, Grid]:
        """The functions for this batch's layout, and the batch."""
        token_major = self.token_major and len(docs) > 1
        return self.fns[token_major], grid_batch(docs, self.cfg, self.dtype, token_major)

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        fn, batch = self._batch(docs)
        loss, grad = fn["loss_and_grad"](self.params, *batch)
        return float(loss), self._host(grad)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        fn, batch = self._batch(docs)  # bad documents raise before the step count moves
        self.t += 1
        c = self.tcfg
        hyper = np.array([lr, 1 - c.beta1 ** self.t, 1 - c.beta2 ** self.t], self.dtype)
        self.params, self.m, self.v, loss = fn["train_step"](self.params, self.m, self.v, hyper, *batch)
        return float(loss)  # waits for the device: the step is finished when the loss is known

    def eval_loss(self, docs: list[list[int]]) -> float:
        fn, batch = self._batch(docs)
        return float(fn["eval_loss"](self.params, *batch))

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits need 1..{self.cfg.block_size} tokens (got {len(tokens)})")
        fn, g = self._batch([list(tokens) + [0]])  # a dummy target makes it a one-document batch
        logits = fn["logits"](self.params, g.tokens, g.positions, g.gather, g.slots, len(tokens) - 1)
        return np.asarray(logits, np.float64).tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, self._host(self.params))

    def export_adam(self) -> AdamState:
        return AdamState(self._host(self.m), self._host(self.v), self.t)

    def import_adam(self, state: AdamState) -> None:
        n = self.params.shape[0]
        state.check(n)
        self.m, self.v, self.t = self._put(array("d", state.m)), self._put(array("d", state.v)), state.t

    @staticmethod
    def _host(x: jax.Array) -> array:
        return array("d", np.asarray(x, np.float64).tobytes())


class JaxPaddedEngine(JaxEngine):
    """Length bucketing instead of token-major rows: every document padded to the batch's bucketed length T,
    the (B, T) grid the linear layers' rows. Kept to measure against (see the module docstring)."""

    token_major = False

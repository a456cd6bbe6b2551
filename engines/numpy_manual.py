"""NumPy engine: the model as batched matrix products, every backward pass written by hand (no autograd).

A step's B documents are computed together. Every position of every document is one row (N rows in all,
no padding), so each linear layer, where nearly all the work is, is ONE matrix product over real tokens.
Attention alone needs a (B, T) grid, T = the longest document's length: rows are scattered into it, padded
with zeros, and gathered back. The padding needs no mask of its own: padded slots come after every real
position, so the causal mask already hides them. Each row's loss weighs 1 / (B n_b) (n_b = its document's
length), so the weighted sum is exactly the reference's mean over documents of per-document mean losses.
(Measured against looping over the documents one at a time: 2-5x faster at batch 32.)

Parameters, gradients and Adam's moments are four flat arrays in the layout of microgpt/params.py; the
named matrices are views into them, so backward writes straight into the flat gradient and Adam is a
handful of whole-buffer operations. threadpoolctl holds BLAS to ``threads`` threads during each call.

    python train.py --engine numpy [--dtype float32] [--threads 2] [--batch-size 32]
"""

from __future__ import annotations

from array import array

import numpy as np
from threadpoolctl import ThreadpoolController

from engines.batching import pack_batch
from microgpt.config import RMS_EPS, ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

DTYPES = {"float64": np.float64, "float32": np.float32}


def rmsnorm(x):
    inv = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + RMS_EPS)
    return x * inv, inv


def rmsnorm_backward(g, y, inv):
    """y = x inv: dx = inv (g - y mean(g y)), the reference's rule written in terms of the output."""
    return inv * (g - y * (g * y).mean(-1, keepdims=True))


def to_grid(rows, slots, B, T, n_head):
    """(N, C) rows -> (B, H, T, D) for attention, zeros in the padded slots."""
    grid = np.zeros((B * T, rows.shape[1]), dtype=rows.dtype)
    grid[slots] = rows
    return grid.reshape(B, T, n_head, -1).transpose(0, 2, 1, 3)


def from_grid(grid, slots):
    """(B, H, T, D) -> the (N, C) rows of the real positions."""
    B, H, T, D = grid.shape
    return grid.transpose(0, 2, 1, 3).reshape(B * T, H * D)[slots]


class NumpyEngine:
    """Batched NumPy forward and hand-written backward (see engines/__init__.py for the contract)."""

    name = "numpy"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 (got {threads!r})")
        self.cfg, self.tcfg, self.dtype, self.threads = model_cfg, train_cfg, DTYPES[dtype], threads
        self.params = np.array(params.data, dtype=self.dtype)
        self.grads, self.m, self.v, self.scratch = (np.zeros_like(self.params) for _ in range(4))
        self.t = 0
        self.w = self._views(self.params, params)
        self.dw = self._views(self.grads, params)
        self._blas = ThreadpoolController()   # finds the BLAS libraries once; limiting is then cheap

    def _blas_threads(self):
        """A context in which NumPy's BLAS uses ``threads`` threads (restored on exit)."""
        return self._blas.limit(limits=self.threads, user_api="blas")

    @staticmethod
    def _views(flat, params: FlatParams) -> dict:
        return {t.name: flat[t.offset:t.offset + t.size].reshape(t.rows, t.cols) for t in params.tensors.values()}

    # ------------------------------------------------------------------------------------------------
    # forward: activations are (N, n) matrices, one row per real position, so each linear layer is one
    # large matrix product (B small (T, n) products would be several times slower)

    def _forward(self, tokens, positions, slots, B, T):
        """Logits (N, V) for the rows of a packed batch, and the activations backward needs."""
        cfg, w = self.cfg, self.w
        x0, inv0 = rmsnorm(w["wte"][tokens] + w["wpe"][positions])
        x = x0
        causal = np.triu(np.ones((T, T), dtype=bool), 1)
        scale = cfg.head_dim ** -0.5   # a Python float, so float32 arrays stay float32
        layers = []
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            h, inv1 = rmsnorm(x)
            q, k, v = (to_grid(h @ w[p + name].T, slots, B, T, cfg.n_head)
                       for name in ("attn_wq", "attn_wk", "attn_wv"))
            s = (q @ k.transpose(0, 1, 3, 2)) * scale
            s[..., causal] = -np.inf
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            o = from_grid(a @ v, slots)
            x = x + o @ w[p + "attn_wo"].T
            h2, inv2 = rmsnorm(x)
            u = h2 @ w[p + "mlp_fc1"].T
            act = np.where(u > 0, u * u, 0.0) if cfg.mlp_act == "relu2" else np.maximum(u, 0.0)
            x = x + act @ w[p + "mlp_fc2"].T
            layers.append((h, inv1, q, k, v, a, o, h2, inv2, u, act))
        logits = x @ w["lm_head"].T
        return logits, (tokens, positions, slots, B, T, x0, inv0, layers, x)

    def _loss(self, logits, targets, weights):
        """Weighted cross-entropy over the rows and its gradient w.r.t. the logits."""
        targets, weights = targets.reshape(-1, 1), weights.reshape(-1, 1)
        top = logits.max(-1, keepdims=True)
        exps = np.exp(logits - top)
        total = exps.sum(-1, keepdims=True)
        loss = float(((top + np.log(total) - np.take_along_axis(logits, targets, -1)) * weights).sum())
        dlogits = exps / total   # softmax - onehot(target), weighted
        np.put_along_axis(dlogits, targets, np.take_along_axis(dlogits, targets, -1) - 1.0, -1)
        return loss, dlogits * weights.astype(self.dtype)

    # ------------------------------------------------------------------------------------------------
    # backward: every op's gradient by hand, in reverse order, into the flat gradient's views

    def _backward(self, dlogits, saved) -> None:
        cfg, w, dw = self.cfg, self.w, self.dw
        tokens, positions, slots, B, T, x0, inv0, layers, x = saved
        scale = cfg.head_dim ** -0.5
        dw["wte"].fill(0.0)   # the embeddings accumulate; every other gradient is written whole below
        dw["wpe"].fill(0.0)
        np.matmul(dlogits.T, x, out=dw["lm_head"])
        dx = dlogits @ w["lm_head"]
        for layer in reversed(range(cfg.n_layer)):
            p = f"layer{layer}."
            h, inv1, q, k, v, a, o, h2, inv2, u, act = layers[layer]
            # MLP: x = x + W2 act(W1 h2)
            np.matmul(dx.T, act, out=dw[p + "mlp_fc2"])
            dact = dx @ w[p + "mlp_fc2"]
            du = np.where(u > 0, 2.0 * u * dact, 0.0) if cfg.mlp_act == "relu2" else np.where(u > 0, dact, 0.0)
            np.matmul(du.T, h2, out=dw[p + "mlp_fc1"])
            dx = dx + rmsnorm_backward(du @ w[p + "mlp_fc1"], h2, inv2)
            # attention: x = x + Wo o, o = softmax(q k^T / sqrt(D)) v per document and head
            np.matmul(dx.T, o, out=dw[p + "attn_wo"])
            do = to_grid(dx @ w[p + "attn_wo"], slots, B, T, cfg.n_head)   # a gather's gradient is a scatter
            dv = a.transpose(0, 1, 3, 2) @ do
            da = do @ v.transpose(0, 1, 3, 2)
            ds = a * (da - (a * da).sum(-1, keepdims=True)) * scale   # softmax backward; masked entries have a = 0
            dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
            dh = np.zeros_like(h)
            for name, d in (("attn_wq", dq), ("attn_wk", dk), ("attn_wv", dv)):
                d = from_grid(d, slots)
                np.matmul(d.T, h, out=dw[p + name])
                dh += d @ w[p + name]
            dx = dx + rmsnorm_backward(dh, h, inv1)
        de = rmsnorm_backward(dx, x0, inv0)
        np.add.at(dw["wte"], tokens, de)   # unbuffered: a token seen twice adds twice
        np.add.at(dw["wpe"], positions, de)

    # ------------------------------------------------------------------------------------------------
    # the contract

    def _pack(self, docs):
        b = pack_batch(docs, self.cfg)
        ints = (np.asarray(a, dtype=np.intp) for a in (b.tokens, b.positions, b.targets))
        return (*ints, np.asarray(b.weights), np.asarray(b.slots, dtype=np.intp), b.B, b.T)

    def _loss_and_grad(self, docs) -> float:
        tokens, positions, targets, weights, slots, B, T = self._pack(docs)
        logits, saved = self._forward(tokens, positions, slots, B, T)
        loss, dlogits = self._loss(logits, targets, weights)
        self._backward(dlogits, saved)
        return loss

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        with self._blas_threads():
            loss = self._loss_and_grad(docs)
        return loss, array("d", self.grads.astype(np.float64).tobytes())

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        with self._blas_threads():
            loss = self._loss_and_grad(docs)
        self._clip_grad()
        self._adam(lr)
        return loss

    def _clip_grad(self) -> None:
        if self.tcfg.grad_clip <= 0:
            return
        norm = float(np.sqrt(self.grads @ self.grads))
        if norm > self.tcfg.grad_clip:
            self.grads *= self.tcfg.grad_clip / norm

    def _adam(self, lr: float) -> None:
        """p -= lr (m / bc1) / (sqrt(v / bc2) + eps), in place through one scratch buffer: on a large model
        this step streams the whole flat state, and fresh temporaries would cost page faults on top."""
        c, g, tmp = self.tcfg, self.grads, self.scratch
        self.t += 1
        bc1, bc2 = 1.0 - c.beta1 ** self.t, 1.0 - c.beta2 ** self.t
        self.m *= c.beta1
        self.m += np.multiply(g, 1 - c.beta1, out=tmp)
        self.v *= c.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - c.beta2
        self.v += tmp
        np.divide(self.v, bc2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += c.eps
        np.divide(self.m, tmp, out=tmp)
        tmp *= lr / bc1
        self.params -= tmp

    def eval_loss(self, docs: list[list[int]]) -> float:
        tokens, positions, targets, weights, slots, B, T = self._pack(docs)
        with self._blas_threads():
            logits, _ = self._forward(tokens, positions, slots, B, T)
        return self._loss(logits, targets, weights)[0]

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits needs 1..{self.cfg.block_size} tokens (got {len(tokens)})")
        ids = np.array(tokens, dtype=np.intp)
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        positions = np.arange(len(ids))
        with self._blas_threads():
            logits, _ = self._forward(ids, positions, positions, 1, len(ids))
        return logits[-1].astype(np.float64).tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.params.astype(np.float64).tobytes()))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m.astype(np.float64).tobytes()),
                         array("d", self.v.astype(np.float64).tobytes()), self.t)

    def import_adam(self, state: AdamState) -> None:
        n = len(self.params)
        state.check(n)
        self.m[:] = state.m
        self.v[:] = state.v
        self.t = state.t

"""NumPy engine: the model as batched matrix products, every backward pass written by hand (no autograd).

A step's B documents are padded to the longest one, T tokens, and computed together as (B, T, C)
arrays. Padding needs no attention mask of its own: padded positions come after every real one, so
the causal mask already hides them from real queries, and their loss weight is zero, so no gradient
flows out of them. Each token's loss weighs 1 / (B n_b) (n_b = document b's length), which makes the
weighted sum exactly the reference's mean over documents of per-document mean losses.

Parameters, gradients and Adam's moments are four flat arrays in the layout of microgpt/params.py; the
named matrices are views into them, so backward writes straight into the flat gradient and Adam is a
handful of whole-buffer operations. threadpoolctl holds BLAS to ``threads`` threads during each call.

    python train.py --engine numpy [--dtype float32] [--threads 2] [--batch-size 32]
"""

from __future__ import annotations

from array import array

import numpy as np
from threadpoolctl import ThreadpoolController

from microgpt import UserError
from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

RMS_EPS = 1e-5
DTYPES = {"float64": np.float64, "float32": np.float32}


def pad_batch(docs: list[list[int]], cfg: ModelConfig):
    """Inputs, targets and per-token loss weights as (B, T) arrays, T = the longest document's length."""
    if not docs:
        raise ValueError("a batch needs at least one document")
    lengths = [len(d) - 1 for d in docs]
    if min(lengths) < 1 or max(lengths) > cfg.block_size:
        raise ValueError(f"documents must hold 2..{cfg.block_size + 1} tokens (got lengths {min(lengths) + 1}.."
                         f"{max(lengths) + 1})")
    B, T = len(docs), max(lengths)
    tokens = np.zeros((B, T + 1), dtype=np.intp)  # padding uses token 0: any valid id will do
    weights = np.zeros((B, T))
    for b, (doc, n) in enumerate(zip(docs, lengths)):
        tokens[b, :n + 1] = doc
        weights[b, :n] = 1.0 / (n * B)
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size}) (got {tokens.min()}..{tokens.max()})")
    return tokens[:, :-1], tokens[:, 1:], weights


def rmsnorm(x):
    inv = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + RMS_EPS)
    return x * inv, inv


def rmsnorm_backward(g, y, inv):
    """y = x inv: dx = inv (g - y mean(g y)), the reference's rule written in terms of the output."""
    return inv * (g - y * (g * y).mean(-1, keepdims=True))


def split_heads(x, B, n_head):
    """(B T, C) rows -> (B, H, T, D): one T x T attention per document and head."""
    N, C = x.shape
    return x.reshape(B, N // B, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * T, H * D)


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
    # forward. Activations are (B T, n) rows, so every linear layer is ONE matrix product (a (B, T, n)
    # array times a matrix would be B small products, several times slower); attention alone is per document.

    def _forward(self, tokens):
        """Logits (B T, V) for (B, T) token ids, and the activations backward needs."""
        cfg, w = self.cfg, self.w
        B, T = tokens.shape
        x0, inv0 = rmsnorm((w["wte"][tokens] + w["wpe"][:T]).reshape(B * T, cfg.n_embd))
        x = x0
        causal = np.triu(np.ones((T, T), dtype=bool), 1)
        scale = cfg.head_dim ** -0.5   # a Python float, so float32 arrays stay float32
        layers = []
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            h, inv1 = rmsnorm(x)
            q, k, v = (split_heads(h @ w[p + name].T, B, cfg.n_head) for name in ("attn_wq", "attn_wk", "attn_wv"))
            s = (q @ k.transpose(0, 1, 3, 2)) * scale
            s[..., causal] = -np.inf
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            o = merge_heads(a @ v)
            x = x + o @ w[p + "attn_wo"].T
            h2, inv2 = rmsnorm(x)
            u = h2 @ w[p + "mlp_fc1"].T
            act = np.where(u > 0, u * u, 0.0) if cfg.mlp_act == "relu2" else np.maximum(u, 0.0)
            x = x + act @ w[p + "mlp_fc2"].T
            layers.append((h, inv1, q, k, v, a, o, h2, inv2, u, act))
        logits = x @ w["lm_head"].T
        return logits, (tokens, x0, inv0, layers, x)

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
        tokens, x0, inv0, layers, x = saved
        B, T = tokens.shape
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
            do = split_heads(dx @ w[p + "attn_wo"], B, cfg.n_head)
            dv = a.transpose(0, 1, 3, 2) @ do
            da = do @ v.transpose(0, 1, 3, 2)
            ds = a * (da - (a * da).sum(-1, keepdims=True)) * scale   # softmax backward; masked entries have a = 0
            dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
            dh = np.zeros_like(h)
            for name, d in (("attn_wq", dq), ("attn_wk", dk), ("attn_wv", dv)):
                d = merge_heads(d)
                np.matmul(d.T, h, out=dw[p + name])
                dh += d @ w[p + name]
            dx = dx + rmsnorm_backward(dh, h, inv1)
        de = rmsnorm_backward(dx, x0, inv0)
        np.add.at(dw["wte"], tokens.ravel(), de)   # unbuffered: a token seen twice adds twice
        dw["wpe"][:T] += de.reshape(B, T, cfg.n_embd).sum(0)

    # ------------------------------------------------------------------------------------------------
    # the contract

    def _loss_and_grad(self, docs) -> float:
        tokens, targets, weights = pad_batch(docs, self.cfg)
        logits, saved = self._forward(tokens)
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
        tokens, targets, weights = pad_batch(docs, self.cfg)
        with self._blas_threads():
            logits, _ = self._forward(tokens)
        return self._loss(logits, targets, weights)[0]

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits needs 1..{self.cfg.block_size} tokens (got {len(tokens)})")
        ids = np.array([tokens], dtype=np.intp)
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        with self._blas_threads():
            logits, _ = self._forward(ids)
        return logits[-1].astype(np.float64).tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.params.astype(np.float64).tobytes()))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m.astype(np.float64).tobytes()),
                         array("d", self.v.astype(np.float64).tobytes()), self.t)

    def import_adam(self, state: AdamState) -> None:
        n = len(self.params)
        if len(state.m) != n or len(state.v) != n:
            raise UserError(f"Adam state holds {len(state.m)}/{len(state.v)} moments; this model has {n} parameters")
        self.m[:] = state.m
        self.v[:] = state.v
        self.t = state.t

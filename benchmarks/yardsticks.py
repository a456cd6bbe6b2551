"""Yardsticks: each framework's model written the way its tutorials write it, timed beside the tuned engines.

A tuned engine is only worth its tuning against what a user would write first. These are those first
versions: the same model (engines/__init__.py) and the same numbers, in each framework's textbook idiom,
with nothing done for speed. They are benchmark rows, not engines: ``engine_table.py`` times them beside
the engines (``torch-yardstick`` next to ``torch`` and ``torch-compile``, ...), and they answer only what
timing needs (``train_step``) plus ``loss_and_grad`` and ``export_params`` for the tests that check they
compute the reference's model.

* torch: an ``nn.Module`` GPT (``nn.Embedding``, ``nn.Linear``, ``nn.RMSNorm``,
  ``F.scaled_dot_product_attention``) on a batch padded to its longest document, masked per-document
  mean cross-entropy, ``clip_grad_norm_`` and ``torch.optim.Adam``.
* jax: parameters as a dict of matrices, the batch padded to block_size (one compiled shape), one
  ``jax.jit`` step of ``jax.value_and_grad`` + global-norm clipping + a hand Adam over ``tree_map``, the
  textbook pattern without flax/optax.
* mlx: an ``mlx.nn`` Module, ``nn.value_and_grad``, ``optim.clip_grad_norm`` and ``optim.Adam`` (with
  bias correction, as the reference), batch padded to its longest document, ``mx.eval`` after each step.

The frameworks' clipping divides by ``norm + 1e-6`` where the reference divides by ``norm``: with
clipping active the yardsticks drift from the reference by ~1e-6 relative, as a user's code would.
MLX's float64 ``exp`` is float32-accurate (engines/mlx_cpu.py), so its float64 yardstick is too.
"""

from __future__ import annotations

import math
from array import array

from microgpt.config import RMS_EPS, ModelConfig, TrainConfig, check_docs
from microgpt.params import FlatParams, layout


#: yardstick name -> the engines it stands beside in engine_table.py
BESIDE = {"torch-yardstick": ("torch", "torch-compile"), "jax-yardstick": ("jax",),
          "mlx-yardstick": ("mlx", "mlx-compile")}


def padded(docs: list[list[int]], cfg: ModelConfig, width: int | None = None):
    """Inputs, targets and a 0/1 mask as (B, width) lists, width = the longest document by default."""
    lengths = check_docs(docs, cfg)
    width = width or max(lengths)
    inputs = [d[:-1] + [0] * (width - n) for d, n in zip(docs, lengths)]
    targets = [d[1:] + [0] * (width - n) for d, n in zip(docs, lengths)]
    mask = [[1.0] * n + [0.0] * (width - n) for n in lengths]
    return inputs, targets, mask


def matrices(params: FlatParams) -> dict:
    """name -> (rows, cols) nested list of each matrix in the flat layout."""
    return {t.name: [list(params.data[t.offset + r * t.cols:t.offset + (r + 1) * t.cols]) for r in range(t.rows)]
            for t in params.tensors.values()}


def flat(cfg: ModelConfig, named: dict) -> FlatParams:
    """FlatParams from name -> anything that converts to a float64 NumPy matrix."""
    import numpy as np
    return FlatParams(cfg, array("d", np.concatenate([np.asarray(named[t.name], np.float64).ravel()
                                                       for t in layout(cfg)]).tobytes()))


def module_names(cfg: ModelConfig) -> dict:
    """The flat layout's names -> the parameter names of the torch and MLX modules below (same structure)."""
    out = {"wte": "wte.weight", "wpe": "wpe.weight", "lm_head": "lm_head.weight"}
    for i in range(cfg.n_layer):
        for ours, theirs in (("attn_wq", "wq"), ("attn_wk", "wk"), ("attn_wv", "wv"), ("attn_wo", "wo"),
                             ("mlp_fc1", "fc1"), ("mlp_fc2", "fc2")):
            out[f"layer{i}.{ours}"] = f"blocks.{i}.{theirs}.weight"
    return out


def check_dtype(dtype: str) -> None:
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be one of float64, float32 (got {dtype!r})")


# ----------------------------------------------------------------------------------------------------------
# PyTorch

def torch_yardstick():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cfg: ModelConfig):
            super().__init__()
            C = cfg.n_embd
            self.cfg = cfg
            self.norm1, self.norm2 = nn.RMSNorm(C, eps=RMS_EPS, elementwise_affine=False), \
                nn.RMSNorm(C, eps=RMS_EPS, elementwise_affine=False)
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(C, C, bias=False) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

        def forward(self, x):
            B, T, C = x.shape
            H = self.cfg.n_head
            h = self.norm1(x)
            q, k, v = (w(h).view(B, T, H, C // H).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.wo(o.transpose(1, 2).reshape(B, T, C))
            u = F.relu(self.fc1(self.norm2(x)))
            return x + self.fc2(u * u if self.cfg.mlp_act == "relu2" else u)

    class GPT(nn.Module):
        def __init__(self, cfg: ModelConfig):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
            self.norm = nn.RMSNorm(cfg.n_embd, eps=RMS_EPS, elementwise_affine=False)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

        def forward(self, idx):
            x = self.norm(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(x)

    class TorchYardstick:
        name = "torch-yardstick"

        def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams,
                     dtype: str = "float64", threads: int = 1):
            check_dtype(dtype)
            torch.set_num_threads(threads)
            self.cfg, self.tcfg = model_cfg, train_cfg
            self.model = GPT(model_cfg).to(getattr(torch, dtype))
            self.names = module_names(model_cfg)
            state = {self.names[k]: torch.tensor(v, dtype=torch.float64) for k, v in matrices(params).items()}
            self.model.load_state_dict(state)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=train_cfg.learning_rate,
                                        betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)

        def _loss(self, docs):
            inputs, targets, mask = map(torch.tensor, padded(docs, self.cfg))
            logits = self.model(inputs)
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            mask = mask.to(logits.dtype)
            return ((losses * mask).sum(1) / mask.sum(1)).mean()

        def loss_and_grad(self, docs):
            self.opt.zero_grad()
            loss = self._loss(docs)
            loss.backward()
            params = dict(self.model.named_parameters())
            grads = flat(self.cfg, {k: params[v].grad.detach() for k, v in self.names.items()})
            return loss.item(), grads.data

        def train_step(self, docs, lr: float) -> float:
            self.opt.zero_grad()
            loss = self._loss(docs)
            loss.backward()
            if self.tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.step()
            return loss.item()

        def export_params(self) -> FlatParams:
            state = self.model.state_dict()
            return flat(self.cfg, {k: state[v] for k, v in self.names.items()})

    return TorchYardstick


# ----------------------------------------------------------------------------------------------------------
# JAX

def jax_yardstick():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from engines.jax_jit import _start_xla   # one thread, as every benchmark row

    def forward(cfg, w, inputs):
        B, T = inputs.shape
        H, D = cfg.n_head, cfg.head_dim

        def rmsnorm(x):
            return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)

        x = rmsnorm(w["wte"][inputs] + w["wpe"][:T])
        mask = jnp.tril(jnp.ones((T, T), bool))
        for i in range(cfg.n_layer):
            p = f"layer{i}."
            h = rmsnorm(x)
            q, k, v = ((h @ w[p + n].T).reshape(B, T, H, D).transpose(0, 2, 1, 3)
                       for n in ("attn_wq", "attn_wk", "attn_wv"))
            att = jax.nn.softmax(jnp.where(mask, q @ k.transpose(0, 1, 3, 2) / math.sqrt(D), -jnp.inf), axis=-1)
            x = x + (att @ v).transpose(0, 2, 1, 3).reshape(B, T, -1) @ w[p + "attn_wo"].T
            u = jax.nn.relu(rmsnorm(x) @ w[p + "mlp_fc1"].T)
            x = x + (u * u if cfg.mlp_act == "relu2" else u) @ w[p + "mlp_fc2"].T
        return x @ w["lm_head"].T

    def loss_fn(cfg, w, inputs, targets, mask):
        logp = jax.nn.log_softmax(forward(cfg, w, inputs), axis=-1)
        losses = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(jnp.sum(losses * mask, axis=1) / jnp.sum(mask, axis=1))

    def make_step(cfg, tcfg):
        @jax.jit
        def step(w, m, v, t, lr, inputs, targets, mask):
            loss, g = jax.value_and_grad(lambda w: loss_fn(cfg, w, inputs, targets, mask))(w)
            if tcfg.grad_clip > 0:
                norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
                g = jax.tree_util.tree_map(lambda x: x * jnp.minimum(1.0, tcfg.grad_clip / (norm + 1e-6)), g)
            m = jax.tree_util.tree_map(lambda m, g: tcfg.beta1 * m + (1 - tcfg.beta1) * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: tcfg.beta2 * v + (1 - tcfg.beta2) * g * g, v, g)
            mhat, vhat = 1 - tcfg.beta1 ** t, 1 - tcfg.beta2 ** t
            w = jax.tree_util.tree_map(lambda w, m, v: w - lr * (m / mhat) / (jnp.sqrt(v / vhat) + tcfg.eps), w, m, v)
            return w, m, v, loss
        return step

    class JaxYardstick:
        name = "jax-yardstick"

        def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams,
                     dtype: str = "float64", threads: int = 1):
            check_dtype(dtype)
            _start_xla(threads)
            if dtype == "float64":
                jax.config.update("jax_enable_x64", True)
            self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, np.dtype(dtype)
            self.w = {k: jnp.asarray(v, self.dtype) for k, v in matrices(params).items()}
            self.m = jax.tree_util.tree_map(jnp.zeros_like, self.w)
            self.v = jax.tree_util.tree_map(jnp.zeros_like, self.w)
            self.t = 0
            self.step = make_step(model_cfg, train_cfg)

        def _batch(self, docs):
            inputs, targets, mask = padded(docs, self.cfg, self.cfg.block_size)
            return jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(mask, self.dtype)

        def loss_and_grad(self, docs):
            loss, g = jax.value_and_grad(lambda w: loss_fn(self.cfg, w, *self._batch(docs)))(self.w)
            return float(loss), flat(self.cfg, g).data

        def train_step(self, docs, lr: float) -> float:
            batch = self._batch(docs)
            self.t += 1
            self.w, self.m, self.v, loss = self.step(self.w, self.m, self.v, self.t, lr, *batch)
            return float(loss)

        def export_params(self) -> FlatParams:
            return flat(self.cfg, self.w)

    return JaxYardstick


# ----------------------------------------------------------------------------------------------------------
# MLX

def mlx_yardstick():
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    class Block(nn.Module):
        def __init__(self, cfg: ModelConfig):
            super().__init__()
            C = cfg.n_embd
            self.n_head, self.relu2 = cfg.n_head, cfg.mlp_act == "relu2"
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(C, C, bias=False) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

        def __call__(self, x, mask):
            B, T, C = x.shape
            H = self.n_head
            h = mx.fast.rms_norm(x, None, RMS_EPS)
            q, k, v = (w(h).reshape(B, T, H, C // H).transpose(0, 2, 1, 3) for w in (self.wq, self.wk, self.wv))
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(C // H), mask=mask)
            x = x + self.wo(o.transpose(0, 2, 1, 3).reshape(B, T, C))
            u = nn.relu(self.fc1(mx.fast.rms_norm(x, None, RMS_EPS)))
            return x + self.fc2(u * u if self.relu2 else u)

    class GPT(nn.Module):
        def __init__(self, cfg: ModelConfig):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
            self.blocks = [Block(cfg) for _ in range(cfg.n_layer)]
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

        def __call__(self, idx):
            T = idx.shape[1]
            x = mx.fast.rms_norm(self.wte(idx) + self.wpe(mx.arange(T)), None, RMS_EPS)
            mask = nn.MultiHeadAttention.create_additive_causal_mask(T).astype(x.dtype)
            for block in self.blocks:
                x = block(x, mask)
            return self.lm_head(x)

    class MlxYardstick:
        name = "mlx-yardstick"

        def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams,
                     dtype: str = "float64", threads: int = 1):
            check_dtype(dtype)
            if threads != 1:
                raise ValueError(f"MLX's CPU backend computes on one thread; threads must be 1 (got {threads!r})")
            mx.set_default_device(mx.cpu)
            self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, getattr(mx, dtype)
            self.model = GPT(model_cfg)
            self.names = module_names(model_cfg)
            self.model.load_weights([(self.names[k], mx.array(v, self.dtype)) for k, v in matrices(params).items()])
            self.opt = optim.Adam(learning_rate=train_cfg.learning_rate, betas=[train_cfg.beta1, train_cfg.beta2],
                                  eps=train_cfg.eps, bias_correction=True)
            self.loss_and_grad_fn = nn.value_and_grad(self.model, self._loss)

        def _loss(self, model, inputs, targets, mask):
            losses = nn.losses.cross_entropy(model(inputs), targets, reduction="none")
            return mx.mean(mx.sum(losses * mask, axis=1) / mx.sum(mask, axis=1))

        def _batch(self, docs):
            inputs, targets, mask = padded(docs, self.cfg)
            return mx.array(inputs), mx.array(targets), mx.array(mask, self.dtype)

        def loss_and_grad(self, docs):
            loss, grads = self.loss_and_grad_fn(self.model, *self._batch(docs))
            named = dict(tree_flatten(grads))
            return loss.item(), flat(self.cfg, {k: named[v] for k, v in self.names.items()}).data

        def train_step(self, docs, lr: float) -> float:
            loss, grads = self.loss_and_grad_fn(self.model, *self._batch(docs))
            if self.tcfg.grad_clip > 0:
                grads, _ = optim.clip_grad_norm(grads, self.tcfg.grad_clip)
            self.opt.learning_rate = lr
            self.opt.update(self.model, grads)
            mx.eval(self.model.parameters(), self.opt.state, loss)
            return loss.item()

        def export_params(self) -> FlatParams:
            named = dict(tree_flatten(self.model.parameters()))
            return flat(self.cfg, {k: named[v] for k, v in self.names.items()})

    return MlxYardstick


YARDSTICKS = {"torch-yardstick": torch_yardstick, "jax-yardstick": jax_yardstick, "mlx-yardstick": mlx_yardstick}


def load_yardstick(name: str):
    """The yardstick class called ``name`` (its framework imported now); ImportError if it is not installed."""
    return YARDSTICKS[name]()

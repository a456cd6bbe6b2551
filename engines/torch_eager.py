"""PyTorch engines: the model in a few lines of tensor code, gradients by autograd ("torch"), optionally
compiled by torch.compile ("torch-compile"); on the CPU, or on a GPU with ``--device cuda`` / ``mps``.

A step's B documents run as ONE forward and ONE backward. Every position of every document is one row
(N rows in all, no padding), so the linear layers, which do nearly all the work, compute real tokens only;
attention alone needs a (B, T) grid, T = the longest document's length: the rows are scattered into it,
padded with zeros, and gathered back. The padding needs no mask of its own: padded slots come after
every real position, so the causal mask already hides them. Each row's loss weighs 1 / (B n_b) (n_b = its
document's length), so the weighted sum is exactly the reference's batch loss: the mean over documents of
each document's mean token loss.

Parameters live in one flat tensor in the layout of microgpt/params.py, and each named matrix is a leaf
tensor that is a *view* into it, whose ``.grad`` is preset to a view into one flat gradient tensor:
autograd accumulates in place into that buffer, so clipping is two whole-buffer operations, Adam is
``torch.optim.Adam(fused=True)`` on the flat vector (its moments are the engine's m and v), and export is
one copy.

What was tried and measured (one process, interleaved, CPU time, 2-core Xeon shared with other jobs, one
thread), following PyTorch's Performance Tuning Guide (fused kernels for pointwise chains, fused
optimizers, ``torch.set_num_threads`` before any work) and the torch.optim docs ("fused" > "foreach" >
for-loop):

* Adam: the hand-written in-place update took five passes over the flat buffers, 4.6 ms for medium's
  820k float64 parameters (2.2 ms float32); the fused kernel takes one, 1.8 ms (0.6 ms). It computes
  sqrt(v) / sqrt(1 - beta2^t) where train.py computes sqrt(v / (1 - beta2^t)): a rounding apart, inside
  the contract's float64 tolerance (tests/test_engine_contract.py). "foreach" is moot on one tensor.
* q, k, v as one product (one scatter into attention's grid instead of three); the three matrices are
  one leaf, a (3C, C) view of the flat buffer, since a concatenation per step (and its backward split)
  cost 1-6% of a step (medium b32 float64 0.942, float32 0.988, small b1 0.948, interleaved); and ``F.rms_norm`` (0.53 against 0.59 ms forward and backward
  of a (227, 128) float64 batch): medium b32 65 -> 58 ms with the fused Adam, numpy taking 56 in the same
  run (float64); the matrix products are ~60% of the step, the rest is pointwise work and scatters.
* ``F.embedding`` and ``index_select`` instead of indexing (``w[tokens]``, ``o[slots]``), whose gradient
  is ``index_put_(accumulate=True)``: medium b32 float32 52.3 -> 47.5 ms, numpy 47.0 in the same run.
* Tried and dropped: attention written out (q k^T, masked softmax, @ v) instead of
  ``F.scaled_dot_product_attention`` -- no difference measurable at T = 16 on the shared machine.
* torch.compile: the loss (forward, and through AOTAutograd the backward) compiled with dynamic shapes,
  so every batch length reuses one graph; the fused Adam stays outside (it is already one kernel).
  Compilation, 15-35 s on this machine, shows as the first step (engine_table's "first step" column).
* Threads: ``torch.set_num_threads(threads)``; at one thread the lab's figures compare engines per core.

    python train.py --engine torch [--dtype float32] [--threads 2] [--batch-size 32] [--device cuda]
    python train.py --engine torch-compile ...       # compile time shows as the first steps' time
"""

from __future__ import annotations

from array import array
from functools import partial

import torch
import torch.nn.functional as F

from engines.batching import fused_blocks, pack_batch
from microgpt.config import RMS_EPS, ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch.device, or a one-line ValueError if this machine cannot run on it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or mps (got {name!r})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} is not available here (torch.cuda.is_available() is False)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name} is not available here (torch.backends.mps.is_available() is False)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda or mps (got {name!r})")
    return device


def rmsnorm(x):
    return F.rms_norm(x, x.shape[-1:], eps=RMS_EPS)


def forward(cfg: ModelConfig, w: dict, tokens, positions, slots, B: int, T: int):
    """Logits (N, vocab) for the N rows of a packed batch (see ``Batch``)."""
    C, H, D = cfg.n_embd, cfg.n_head, cfg.head_dim

    def heads(rows):   # (N, 3C) rows -> q, k, v (B, H, T, D), padded with zeros that the causal mask hides
        grid = rows.new_zeros(B * T, 3 * C).index_copy(0, slots, rows).view(B, T, 3, H, D)
        return (grid[:, :, i].transpose(1, 2) for i in range(3))

    # F.embedding and index_select: their gradients are dense index_add kernels; plain indexing's
    # gradient goes through index_put_(accumulate=True), which sorts the indices first
    x = rmsnorm(F.embedding(tokens, w["wte"]) + F.embedding(positions, w["wpe"]))
    for layer in range(cfg.n_layer):
        p = f"layer{layer}."
        h = rmsnorm(x)
        q, k, v = heads(F.linear(h, w[p + "qkv"]))   # one product for the three (see fused_blocks)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # softmax(q k^T / sqrt(D)) v, causal
        x = x + F.linear(o.transpose(1, 2).reshape(B * T, C).index_select(0, slots), w[p + "attn_wo"])
        u = F.relu(F.linear(rmsnorm(x), w[p + "mlp_fc1"]))
        x = x + F.linear(u * u if cfg.mlp_act == "relu2" else u, w[p + "mlp_fc2"])
    return F.linear(x, w["lm_head"])


def batch_loss(cfg: ModelConfig, w: dict, tokens, positions, targets, weights, slots, B: int, T: int):
    """Sum of weighted token losses = mean over documents of each document's mean loss."""
    logits = forward(cfg, w, tokens, positions, slots, B, T)
    return (F.cross_entropy(logits, targets, reduction="none") * weights).sum()


class TorchEngine:
    """Eager PyTorch with autograd (see engines/__init__.py for the contract)."""

    name = "torch"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1, device: str = "cpu"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 (got {threads!r})")
        self.device = resolve_device(device)
        if self.device.type == "mps" and dtype == "float64":
            raise ValueError("mps has no float64; use dtype float32")
        torch.set_num_threads(threads)   # process-wide: the CPU threads of every op from here on
        self.threads = torch.get_num_threads()
        self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, DTYPES[dtype]
        self.params = torch.frombuffer(params.data, dtype=torch.float64).to(self.device, self.dtype, copy=True)
        self.grads, self.m, self.v = (torch.zeros_like(self.params) for _ in range(3))
        self.t = 0
        # torch's fused Adam (one pass over the flat buffers; the hand-written in-place update took five) on
        # the flat parameter vector, its moments our m and v: export and import see them directly
        self.params.grad = self.grads
        c = train_cfg or TrainConfig()   # an engine made for evaluation only has no optimiser settings
        self.opt = torch.optim.Adam([self.params], betas=(c.beta1, c.beta2), eps=c.eps, fused=True)
        self.opt.state[self.params] = {"step": torch.zeros((), dtype=torch.float32, device=self.device),
                                       "exp_avg": self.m, "exp_avg_sq": self.v}
        # a leaf per matrix, each layer's query, key and value matrices as one: they lie side by side in
        # the flat layout, so one (3C, C) view serves one product and one gradient (no concatenation)
        self.w = {}
        for name, offset, rows, cols in fused_blocks(model_cfg):
            weight = self.params[offset:offset + rows * cols].view(rows, cols).requires_grad_()
            weight.grad = self.grads[offset:offset + rows * cols].view(rows, cols)
            self.w[name] = weight
        self._loss = self._make_loss()

    def _make_loss(self):
        return partial(batch_loss, self.cfg)

    def _batch_loss(self, docs) -> torch.Tensor:
        batch = pack_batch(docs, self.cfg)
        as_tensor = lambda rows, dtype=torch.long: torch.tensor(rows, dtype=dtype).to(self.device)   # noqa: E731
        return self._loss(self.w, as_tensor(batch.tokens), as_tensor(batch.positions), as_tensor(batch.targets),
                          as_tensor(batch.weights, self.dtype), as_tensor(batch.slots), batch.B, batch.T)

    def _backward(self, docs) -> torch.Tensor:
        self.grads.zero_()   # in place: the weights' .grad views must keep pointing into this buffer
        loss = self._batch_loss(docs)
        loss.backward()
        return loss

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self._backward(docs)
        return loss.item(), array("d", self.grads.double().cpu().tolist())

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss = self._backward(docs)
        self.apply_adam(lr)
        return loss.item()   # the one host sync per step: the clock stops after the GPU has finished

    def compute_grads(self, docs: list[list[int]]) -> float:
        """The docs' mean loss, its gradient left in ``self.grads`` (no update, no copy): the first half of
        a data-parallel step (microgpt/distributed.py), whose all-reduce runs on ``self.grads`` itself."""
        return self._backward(docs).item()

    def apply_adam(self, lr: float) -> None:
        """Clip ``self.grads`` (by its global norm) and take one Adam step from it: a step's second half."""
        with torch.no_grad():
            self._clip_grad()
            self._adam(lr)

    def _clip_grad(self) -> None:
        """Scale by grad_clip / norm when norm > grad_clip, on the device: no sync to decide."""
        if self.tcfg.grad_clip > 0:
            norm = torch.linalg.vector_norm(self.grads)
            self.grads.mul_(torch.clamp(self.tcfg.grad_clip / norm, max=1.0))

    def _adam(self, lr: float) -> None:
        """p -= lr (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), torch's fused kernel: the reference's formula
        but for sqrt(v / bc2) taken as sqrt(v) / sqrt(bc2), a rounding apart."""
        self.t += 1
        self.opt.param_groups[0]["lr"] = lr
        self.opt.step()

    def eval_loss(self, docs: list[list[int]]) -> float:
        with torch.no_grad():
            return self._batch_loss(docs).item()

    def logits(self, tokens: list[int]) -> list[float]:
        if not 1 <= len(tokens) <= self.cfg.block_size:
            raise ValueError(f"logits needs 1..{self.cfg.block_size} tokens (got {len(tokens)})")
        if not all(0 <= tok < self.cfg.vocab_size for tok in tokens):
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        ids, positions = torch.tensor(tokens, device=self.device), torch.arange(len(tokens), device=self.device)
        with torch.no_grad():
            return forward(self.cfg, self.w, ids, positions, positions, 1, len(tokens))[-1].double().cpu().tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.params.double().cpu().tolist()))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m.double().cpu().tolist()), array("d", self.v.double().cpu().tolist()),
                         self.t)

    def import_adam(self, state: AdamState) -> None:
        n = self.params.numel()
        state.check(n)
        self.m.copy_(torch.frombuffer(state.m, dtype=torch.float64))
        self.v.copy_(torch.frombuffer(state.v, dtype=torch.float64))
        self.t = state.t
        self.opt.state[self.params]["step"].fill_(state.t)


class TorchCompileEngine(TorchEngine):
    """The same engine with the loss (forward, and through AOTAutograd the backward) compiled by
    torch.compile. Shapes are dynamic, so batches of any length reuse one compiled graph per mode."""

    name = "torch-compile"

    def _make_loss(self):
        # Dynamo keeps its compiled graphs per Python function, shared by every engine in the process: each
        # (config, dtype, batch of one or of many, training or evaluation) is one entry. A benchmark run needs
        # more than the default 8, past which dynamo would silently fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        return torch.compile(super()._make_loss(), dynamic=True)

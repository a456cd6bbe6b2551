"""A masked-diffusion language model (MDLM / LLaDA style) on the lab's transformer.

Same weights layout, same blocks, two differences: attention is BIDIRECTIONAL (every position sees every
other; no causal mask) and the vocabulary has one extra token, [MASK], after BOS. Instead of predicting
the next token, the model fills in masked tokens of a whole name at once.

The sequence. A document ``[BOS] + name + [BOS]`` (cut to block_size + 1, as everywhere in the lab)
becomes the ``block_size`` tokens after its leading BOS, padded with BOS:

    "emma", block 8:   e m m a BOS BOS BOS BOS

The leading BOS is dropped because it is the same for every document (it would carry no information
here), and so the sequence fits the ``block_size`` position embeddings. Every position is maskable,
the padding included: the model learns where a name ends by predicting BOS, which is how sampling knows
the length.

Training (the MDLM ELBO with the linear schedule alpha_t = 1 - t): for each document draw
t ~ U(0, 1], mask each position independently with probability t, and score the model on the masked
positions only:

    doc loss = (1 / t) * sum over masked positions of -log p(clean token | masked sequence)  /  n

with n = len(doc) - 1, the number of tokens the autoregressive model predicts for the same document. The
(1 / t)-weighted sum is an upper bound (in expectation over t and the mask) on -log p(name) -- the padding
after the first BOS is determined by it -- so dividing by n puts the diffusion loss in the autoregressive
loss's units: nats per token, averaged over documents. A batch's loss is the mean of its documents'
losses, exactly as for the autoregressive engines; a draw that masks nothing scores zero. The softmax
runs over the whole vocabulary: [MASK] is never a target, so training drives its probability down, and
sampling never proposes it. The draws come from a seeded RNG owned by the engine
(``export_rng`` / ``import_rng`` save and restore it), so a run is reproducible, and the two
implementations draw identical masks from the same seed.

Sampling (LLaDA, Algorithm "low-confidence remasking"): start from ``block_size`` [MASK]s; in each of K
steps, run the model, propose a token for every masked position (temperature sampling; [MASK] itself is
never proposed), and keep an even share of the remaining masked positions -- the most confident
proposals ("confidence"), or a random choice ("random") -- leaving the rest masked. The name is
everything before the first BOS.

Two implementations of the same maths:
  * PythonDiffusion: train.py's vector autograd ops, composed over all keys (no cache); one new op, a
    weighted sum of losses. Slow, exact, the reference.
  * TorchDiffusion: the batch as one (B, block_size) tensor: every sequence has the same length, so no
    padding masks are needed.

    python -m engines.diffusion --engine torch --num-steps 2000 --batch-size 32
    python -m engines.diffusion --engine python --num-steps 200

The command line trains the diffusion model and, on the same documents in the same order with the same
learning rates, the autoregressive model (``--ar-engine``, default the C engine); it prints both losses as
training goes, a loss-curve summary, validation losses (exact for the autoregressive model, the ELBO bound
averaged over several mask draws for diffusion) and samples from both.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from array import array
from dataclasses import dataclass, replace

from microgpt import UserError
from microgpt.config import ModelConfig, TrainConfig, lr_at
from microgpt.params import AdamState, FlatParams, init_params, num_params
from train import (GPT, RMS_EPS, PythonEngine, Vec, attention, cross_entropy, embed, linear, mean, no_grad, relu_act,
                   rmsnorm, vec_add)

REMASKING = ("confidence", "random")


# ----------------------------------------------------------------------------------------------------
# The masked sequences


def special_ids(cfg: ModelConfig) -> tuple[int, int]:
    """(BOS, MASK) of a diffusion model: MASK is the last id, BOS the one before it."""
    return cfg.vocab_size - 2, cfg.vocab_size - 1


def to_sequence(doc: list[int], cfg: ModelConfig) -> list[int]:
    """``[BOS] + name + [BOS]`` (cut to block_size + 1) -> the block_size tokens after the first, BOS-padded."""
    bos, mask = special_ids(cfg)
    if not 2 <= len(doc) <= cfg.block_size + 1:
        raise ValueError(f"documents must hold 2..{cfg.block_size + 1} tokens (got {len(doc)})")
    if not all(0 <= tok <= bos for tok in doc):
        raise ValueError(f"token ids must be in [0, {bos}] ({mask} is [MASK])")
    return doc[1:] + [bos] * (cfg.block_size + 1 - len(doc))


def check_tokens(tokens: list[int], cfg: ModelConfig) -> None:
    if not 1 <= len(tokens) <= cfg.block_size or not all(0 <= tok < cfg.vocab_size for tok in tokens):
        raise ValueError(f"the model reads 1..{cfg.block_size} token ids in [0, {cfg.vocab_size})")


@dataclass
class MaskedDoc:
    """One document's draw: the model sees ``inputs`` and is scored on ``masked`` with ``weight``."""

    targets: list[int]      # the clean sequence
    inputs: list[int]       # the clean sequence with the masked positions set to [MASK]
    masked: list[int]       # positions to predict
    weight: float           # 1 / (t n): the ELBO's 1/t, and the autoregressive loss's 1/n


def draw_masks(docs: list[list[int]], cfg: ModelConfig, rng: random.Random) -> list[MaskedDoc]:
    """t ~ U(0, 1] per document, then each position masked with probability t."""
    if not docs:
        raise ValueError("a batch needs at least one document")
    _, mask = special_ids(cfg)
    out = []
    for doc in docs:
        seq = to_sequence(doc, cfg)
        t = 1.0 - rng.random()  # random() is in [0, 1)
        masked = [i for i in range(len(seq)) if rng.random() < t]
        inputs = [mask if i in masked else tok for i, tok in enumerate(seq)]
        out.append(MaskedDoc(seq, inputs, masked, 1.0 / (t * (len(doc) - 1))))
    return out


def _mask_rng(seed: int) -> random.Random:
    return random.Random(f"microgpt-diffusion-masks-{seed}")


# ----------------------------------------------------------------------------------------------------
# Pure Python, on train.py's vector autograd


def weighted_sum(nodes: list[Vec], weight: float) -> Vec:
    """weight * the sum of 1-element nodes (train.py has only their mean)."""
    def backward(g):
        for node in nodes:
            node.grad[0] += weight * g[0]
    return Vec([weight * sum(node.data[0] for node in nodes)], tuple(nodes), backward)


def bidirectional_logits(model: GPT, tokens: list[int], positions) -> list[Vec]:
    """Logit nodes at ``positions`` for the whole sequence ``tokens``, every query attending to every key."""
    cfg, w = model.cfg, model.w
    xs = [rmsnorm(embed(tok, pos, w["wte"], w["wpe"])) for pos, tok in enumerate(tokens)]
    for layer in range(cfg.n_layer):
        p = f"layer{layer}."
        hs = [rmsnorm(x) for x in xs]
        # all keys and values first: a query at any position sees all of them (the only change from train.py)
        keys = [linear(h, w[p + "attn_wk"]) for h in hs]
        values = [linear(h, w[p + "attn_wv"]) for h in hs]
        outs = [attention(linear(h, w[p + "attn_wq"]), keys, values, cfg.n_head) for h in hs]
        xs = [vec_add(x, linear(o, w[p + "attn_wo"])) for x, o in zip(xs, outs)]
        xs = [vec_add(x, linear(relu_act(linear(rmsnorm(x), w[p + "mlp_fc1"]), cfg.mlp_act == "relu2"),
                                w[p + "mlp_fc2"])) for x in xs]
    return [linear(xs[i], w["lm_head"]) for i in positions]


class PythonDiffusion(PythonEngine):
    """The reference: train.py's engine (clipping, Adam, export) with the diffusion loss."""

    name = "diffusion-python"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        super().__init__(model_cfg, train_cfg, params, dtype, threads)
        self.rng = _mask_rng(train_cfg.seed)

    def _batch_loss(self, draws: list[MaskedDoc]) -> Vec:
        """Mean over documents of weight * (the sum of the masked positions' cross-entropies)."""
        doc_losses = []
        for d in draws:
            logits = bidirectional_logits(self.model, d.inputs, d.masked)
            losses = [cross_entropy(row, d.targets[i]) for row, i in zip(logits, d.masked)]
            doc_losses.append(weighted_sum(losses, d.weight))
        return mean(doc_losses)

    def _backward(self, docs: list[list[int]], draws: list[MaskedDoc] | None = None) -> float:
        """Called by PythonEngine.train_step too: draw the masks, then the loss and its gradients."""
        draws = draws or draw_masks(docs, self.cfg, self.rng)
        for w in self.model.w.values():
            w.zero_grad()
        loss = self._batch_loss(draws)
        loss.backward()
        return loss.data[0]

    def loss_and_grad(self, docs: list[list[int]], draws: list[MaskedDoc] | None = None) -> tuple[float, array]:
        loss = self._backward(docs, draws)
        return loss, self.model.flat(self._grads())

    def eval_loss(self, docs: list[list[int]], draws: list[MaskedDoc] | None = None) -> float:
        draws = draws or draw_masks(docs, self.cfg, self.rng)
        with no_grad():
            return self._batch_loss(draws).data[0]

    def predict(self, tokens: list[int]) -> list[list[float]]:
        """Logits at every position of ``tokens`` (up to block_size ids, [MASK] allowed)."""
        check_tokens(tokens, self.cfg)
        with no_grad():
            return [node.data for node in bidirectional_logits(self.model, tokens, range(len(tokens)))]

    def logits(self, tokens: list[int]) -> list[float]:
        raise TypeError("a diffusion model has no next-token logits; use predict(tokens)")

    def export_rng(self):
        return self.rng.getstate()

    def import_rng(self, state) -> None:
        self.rng.setstate(state)


# ----------------------------------------------------------------------------------------------------
# PyTorch


def tensor_rmsnorm(x):
    return x / ((x * x).mean(-1, keepdim=True) + RMS_EPS).sqrt()


class TorchDiffusion:
    """The same model and loss on tensors: a batch is one (B, block_size) tensor, gradients by autograd."""

    name = "diffusion-torch"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1, device: str = "cpu"):
        try:
            import torch
        except ImportError as e:
            raise UserError(f"PyTorch is not installed ({e}); run: pip install torch==2.13.0") from None
        dtypes = {"float64": torch.float64, "float32": torch.float32}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {', '.join(dtypes)} (got {dtype!r})")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 (got {threads!r})")
        if device not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda or mps (got {device!r})")
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available[device]:
            raise ValueError(f"device {device} is not available on this machine")
        torch.set_num_threads(threads)
        self.torch, self.cfg, self.tcfg, self.device = torch, model_cfg, train_cfg, torch.device(device)
        self.flat = torch.tensor(params.data, dtype=dtypes[dtype], device=self.device).requires_grad_()
        self.m, self.v = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.tensors = list(params.tensors.values())
        self.t = 0
        self.rng = _mask_rng(train_cfg.seed)

    def _weights(self) -> dict:
        """Named (rows, cols) views of the flat parameter tensor; made per forward so autograd sees fresh views."""
        return {t.name: self.flat[t.offset:t.offset + t.size].view(t.rows, t.cols) for t in self.tensors}

    def _logits(self, tokens):
        """(B, L, vocab) logits for (B, L) token ids, bidirectional attention."""
        torch, cfg, w = self.torch, self.cfg, self._weights()
        F = torch.nn.functional
        B, L = tokens.shape
        x = tensor_rmsnorm(w["wte"][tokens] + w["wpe"][:L])
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            h = tensor_rmsnorm(x)
            q, k, v = (F.linear(h, w[p + name]).view(B, L, cfg.n_head, cfg.head_dim).transpose(1, 2)
                       for name in ("attn_wq", "attn_wk", "attn_wv"))
            o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D)) v over ALL positions
            x = x + F.linear(o.transpose(1, 2).reshape(B, L, cfg.n_embd), w[p + "attn_wo"])
            u = F.relu(F.linear(tensor_rmsnorm(x), w[p + "mlp_fc1"]))
            x = x + F.linear(u * u if cfg.mlp_act == "relu2" else u, w[p + "mlp_fc2"])
        return F.linear(x, w["lm_head"])

    def _loss(self, draws: list[MaskedDoc]):
        torch = self.torch
        inputs = torch.tensor([d.inputs for d in draws], device=self.device)
        targets = torch.tensor([d.targets for d in draws], device=self.device)
        weights = torch.zeros(targets.shape, dtype=self.flat.dtype, device=self.device)
        for b, d in enumerate(draws):
            weights[b, d.masked] = d.weight  # zero elsewhere: only masked positions are scored
        logits = self._logits(inputs)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return (losses * weights.flatten()).sum() / len(draws)

    def _backward(self, docs, draws) -> float:
        draws = draws or draw_masks(docs, self.cfg, self.rng)
        self.flat.grad = None
        loss = self._loss(draws)
        loss.backward()
        return loss.item()

    def loss_and_grad(self, docs: list[list[int]], draws: list[MaskedDoc] | None = None) -> tuple[float, array]:
        loss = self._backward(docs, draws)
        return loss, array("d", self.flat.grad.double().cpu().tolist())

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        loss = self._backward(docs, None)
        c, torch = self.tcfg, self.torch
        with torch.no_grad():
            g = self.flat.grad
            if c.grad_clip > 0:
                norm = g.norm().item()
                if norm > c.grad_clip:
                    g.mul_(c.grad_clip / norm)
            self.t += 1
            self.m.mul_(c.beta1).add_(g, alpha=1 - c.beta1)
            self.v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
            m_hat, v_hat = self.m / (1 - c.beta1 ** self.t), self.v / (1 - c.beta2 ** self.t)
            self.flat.sub_(lr * m_hat / (v_hat.sqrt() + c.eps))
        return loss

    def eval_loss(self, docs: list[list[int]], draws: list[MaskedDoc] | None = None) -> float:
        with self.torch.no_grad():
            return self._loss(draws or draw_masks(docs, self.cfg, self.rng)).item()

    def predict(self, tokens: list[int]) -> list[list[float]]:
        check_tokens(tokens, self.cfg)
        with self.torch.no_grad():
            return self._logits(self.torch.tensor([tokens], device=self.device))[0].double().cpu().tolist()

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.flat.detach().double().cpu().tolist()))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m.double().cpu().tolist()), array("d", self.v.double().cpu().tolist()), self.t)

    def import_adam(self, state: AdamState) -> None:
        state.check(len(self.flat))
        self.m.copy_(self.torch.tensor(state.m, dtype=self.m.dtype))
        self.v.copy_(self.torch.tensor(state.v, dtype=self.v.dtype))
        self.t = state.t

    def export_rng(self):
        return self.rng.getstate()

    def import_rng(self, state) -> None:
        self.rng.setstate(state)


ENGINES = {"python": PythonDiffusion, "torch": TorchDiffusion}


# ----------------------------------------------------------------------------------------------------
# Sampling


def sample_names(predict, tokenizer, cfg: ModelConfig, num_samples: int, steps: int, temperature: float = 1.0,
                 remasking: str = "confidence", seed: int = 42) -> list[str]:
    """Iterative unmasking from all-[MASK] in ``steps`` rounds (see the module docstring)."""
    if remasking not in REMASKING:
        raise UserError(f"--remasking must be one of {', '.join(REMASKING)} (got {remasking!r})")
    if not (isinstance(steps, int) and steps >= 1):
        raise UserError(f"--sample-steps must be an integer >= 1 (got {steps!r})")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature must be > 0 (got {temperature!r})")
    bos, mask = special_ids(cfg)
    rng = random.Random(seed)
    names = []
    for _ in range(num_samples):
        seq = [mask] * cfg.block_size
        for step in range(steps):
            masked = [i for i, tok in enumerate(seq) if tok == mask]
            if not masked:
                break
            keep = math.ceil(len(masked) / (steps - step))  # an even share of what is left
            rows = predict(seq)
            proposals = []
            for i in masked:
                scaled = [v / temperature for v in rows[i][:mask]]  # [MASK] is never proposed
                top = max(scaled)
                probs = [math.exp(v - top) for v in scaled]
                total = sum(probs)
                tok = rng.choices(range(mask), weights=probs)[0]
                proposals.append((probs[tok] / total, i, tok))
            if remasking == "confidence":
                chosen = sorted(proposals, reverse=True)[:keep]
            else:
                chosen = rng.sample(proposals, keep)
            for _, i, tok in chosen:
                seq[i] = tok
        names.append(tokenizer.decode(seq[:seq.index(bos)] if bos in seq else seq))
    return names


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    from engines import ENGINES as AR_ENGINES
    from microgpt.trainer import HELP, OneLineErrorParser

    p = OneLineErrorParser(prog="python -m engines.diffusion", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=list(ENGINES), default="torch", help="diffusion implementation (default: torch)")
    p.add_argument("--ar-engine", choices=list(AR_ENGINES), default="c",
                   help="engine of the autoregressive model trained alongside for comparison (default: c)")
    for flag, kind, default in (("n_embd", int, 16), ("n_layer", int, 1), ("n_head", int, 4), ("block_size", int, 16),
                                ("mlp_act", str, "relu2"), ("num_steps", int, 1000), ("batch_size", int, 1),
                                ("learning_rate", float, 0.01), ("grad_clip", float, 1.0), ("seed", int, 42),
                                ("val_fraction", float, 0.1)):
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=default,
                       help=f"{HELP[flag]} (default: {default})")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="text file(s), one document per line (default: names.txt)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="compute precision")
    p.add_argument("--threads", type=int, default=1, help="threads (torch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (torch)")
    p.add_argument("--eval-docs", type=int, default=200, help="validation documents for the final comparison")
    p.add_argument("--eval-draws", type=int, default=4, help="mask draws per validation document (diffusion ELBO)")
    p.add_argument("--num-samples", type=int, default=20, help="names to sample from each model")
    p.add_argument("--sample-steps", type=int, default=0, help="unmasking rounds K (default: block size)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of both models")
    p.add_argument("--remasking", choices=REMASKING, default="confidence",
                   help="which proposals to keep each round: the most confident, or random ones")
    p.add_argument("--sample-seed", type=int, default=42, help="seed of the samplers")
    p.add_argument("--log-every", type=int, default=0, metavar="N", help="progress every N steps (default: ~1/s)")
    p.add_argument("--loss-log", metavar="JSON", help="write both per-step training loss curves here")
    return p


def elbo_per_draw(model, docs: list[list[int]], cfg: ModelConfig, draws: int, seed: int,
                  chunk: int = 64) -> list[float]:
    """The diffusion loss of ``docs`` under ``draws`` independent, seeded mask draws: one mean per draw."""
    rng = random.Random(f"microgpt-diffusion-eval-{seed}")
    parts = [docs[i:i + chunk] for i in range(0, len(docs), chunk)]
    per_draw = []
    for _ in range(draws):
        total = sum(model.eval_loss(part, draw_masks(part, cfg, rng)) * len(part) for part in parts)
        per_draw.append(total / len(docs))
    return per_draw


def _curve_summary(diffusion: list[float], autoregressive: list[float], rows: int = 10) -> list[str]:
    """Mean losses of both models over ``rows`` consecutive stretches of the run."""
    n = len(diffusion)
    rows = min(rows, n)
    lines = [f"{'steps':>13} | {'diffusion':>9} | {'autoregr.':>9} | {'gap':>7}"]
    for r in range(rows):
        lo, hi = r * n // rows, (r + 1) * n // rows
        d, a = sum(diffusion[lo:hi]) / (hi - lo), sum(autoregressive[lo:hi]) / (hi - lo)
        lines.append(f"{f'{lo + 1}..{hi}':>13} | {d:9.4f} | {a:9.4f} | {d - a:+7.4f}")
    return lines


def run(argv: list[str], out=sys.stdout) -> dict:
    from engines import load_engine
    from microgpt.config import SampleConfig
    from microgpt.sampling import sample
    from microgpt.trainer import DataOrder, evaluate, load_dataset, write_json_atomic

    args = build_parser().parse_args(argv)
    for flag in ("eval_docs", "num_samples", "sample_steps", "log_every"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be an integer >= 0 (got {getattr(args, flag)})")
    if args.eval_draws < 1:
        raise UserError(f"--eval-draws must be an integer >= 1 (got {args.eval_draws})")
    if args.threads < 1:
        raise UserError(f"--threads must be an integer >= 1 (got {args.threads})")
    tcfg = TrainConfig(num_steps=args.num_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       grad_clip=args.grad_clip, seed=args.seed, val_fraction=args.val_fraction).validate()
    shape = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head, "block_size": args.block_size,
             "mlp_act": args.mlp_act}
    ModelConfig(**shape).validate()
    SampleConfig(temperature=args.temperature).validate()
    data = load_dataset(args.data, tcfg, args.block_size, "char", 0)
    if not data.train:
        raise UserError("the training split is empty: provide more documents or lower --val-fraction")
    ar_cfg = ModelConfig(vocab_size=data.tokenizer.vocab_size, **shape).validate()
    cfg = replace(ar_cfg, vocab_size=ar_cfg.vocab_size + 1)  # + [MASK]

    options = {"dtype": args.dtype, "threads": args.threads}
    if args.engine == "torch":
        options["device"] = args.device
    elif args.device != "cpu":
        raise UserError(f"--engine python runs on the CPU only (got --device {args.device})")
    try:
        model = ENGINES[args.engine](cfg, tcfg, init_params(cfg, tcfg.seed), **options)
        ar = load_engine(args.ar_engine)(ar_cfg, tcfg, init_params(ar_cfg, tcfg.seed))
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"diffusion engine {model.name} ({args.dtype}) vs autoregressive engine {ar.name} | "
          f"{num_params(cfg):,} params | {len(data.train):,} train / {len(data.val):,} val documents | "
          f"vocab {cfg.vocab_size} with [MASK] | steps {tcfg.num_steps}", file=out, flush=True)

    order, curves, seconds = DataOrder(data.train, tcfg.batch_size, tcfg.seed), {"diffusion": [], "ar": []}, [0.0, 0.0]
    last_print = time.perf_counter()
    for step in range(tcfg.num_steps):
        docs, lr = order.batch(step), lr_at(step, tcfg)
        for i, (engine, key) in enumerate(((model, "diffusion"), (ar, "ar"))):
            t0 = time.perf_counter()
            loss = engine.train_step(docs, lr)
            seconds[i] += time.perf_counter() - t0
            if not math.isfinite(loss):
                raise UserError(f"{engine.name} diverged at step {step + 1}: loss is {loss}; lower --learning-rate")
            curves[key].append(loss)
        done, now = step + 1, time.perf_counter()
        if (args.log_every and done % args.log_every == 0) or (not args.log_every and now - last_print >= 1.0) \
                or done in (1, tcfg.num_steps):
            print(f"step {done:>{len(str(tcfg.num_steps))}}/{tcfg.num_steps} | lr {lr:.2e} | diffusion loss "
                  f"{curves['diffusion'][-1]:.4f} ({seconds[0] / done * 1e3:.2f} ms/step) | autoregressive loss "
                  f"{curves['ar'][-1]:.4f} ({seconds[1] / done * 1e3:.2f} ms/step)", file=out, flush=True)
            last_print = now

    print("\ntraining loss, nats per token (diffusion: the ELBO bound; both averaged over documents):", file=out)
    for line in _curve_summary(curves["diffusion"], curves["ar"]):
        print("  " + line, file=out)
    result = {"train": curves, "config": cfg.to_dict(), "train_config": tcfg.to_dict()}
    val = data.val[:args.eval_docs] if args.eval_docs else data.val
    if val:
        per_draw = elbo_per_draw(model, val, cfg, args.eval_draws, tcfg.seed)
        d_val, spread = sum(per_draw) / len(per_draw), (max(per_draw) - min(per_draw)) / 2
        a_val = evaluate(ar, val, 0)
        print(f"validation ({len(val)} documents): autoregressive {a_val:.4f} (exact) | diffusion <= {d_val:.4f} "
              f"(ELBO, mean of {args.eval_draws} mask draws, +-{spread:.4f})", file=out)
        result["val"] = {"autoregressive": a_val, "diffusion_elbo": d_val, "diffusion_draws": per_draw}
    if args.num_samples:
        steps = args.sample_steps or cfg.block_size
        names = sample_names(model.predict, data.tokenizer, cfg, args.num_samples, steps, args.temperature,
                             args.remasking, args.sample_seed)
        scfg = SampleConfig(num_samples=args.num_samples, temperature=args.temperature, seed=args.sample_seed)
        ar_names = sample(ar.logits, data.tokenizer, ar_cfg.block_size, scfg)
        print(f"\nsamples (diffusion: {steps} unmasking rounds, {args.remasking} remasking | autoregressive), "
              f"temperature {args.temperature}:", file=out)
        for d, a in zip(names, ar_names):
            print(f"  {d or '(empty)':<{cfg.block_size + 2}} {a}", file=out)
        result["samples"] = {"diffusion": names, "autoregressive": ar_names}
    if args.loss_log:
        write_json_atomic(args.loss_log, result)
    return result


def main(argv: list[str]) -> None:
    try:
        run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main(sys.argv[1:])

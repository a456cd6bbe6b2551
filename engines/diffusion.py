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

Sampling (MDLM's ancestral sampler; LLaDA's low-confidence remasking as an option): start from
``block_size`` [MASK]s (or a --prompt template: some characters fixed); in each of K rounds, run the
model, propose a token for every masked position (temperature sampling; [MASK] itself is never
proposed), and keep an even share of the remaining masked positions -- a random choice ("random",
the default: the exact reverse of the training corruption, which masks positions independently of
their content) or the most confident proposals ("confidence") -- leaving the rest masked. A sample is
always a name followed by BOS padding, and the name is everything before the first BOS.

Why "confidence" is not the default: after 1000 steps at batch 32 it drew 3 "nan" in 12 samples, and
over 1000 samples 34-39% were empty, the mean length 2.1-2.2 characters (the data: 6.1) and only 40-41%
distinct. The surest proposals of an all-[MASK] sequence are the BOS padding at its end
(P(BOS at position 15) is about 1); each BOS put in place makes BOS likelier just before it, so the
padding creeps leftwards over the name, and the letters that do survive are the most probable ones
(a, n, ...), hence the repeats. Large masked-diffusion models show the same "<eos> overflow" when EOS
doubles as padding (LLaDA-Instruct, the Rainbow Padding paper). Random order draws from the model's
own distribution: 99% distinct, mean length 5.3, 0.2% empty at temperature 0.8 -- beside the
autoregressive model's 99%, 5.6 and 0.1% (``--quality 1000``; README "The labs, step by step").

Two implementations of the same maths:
  * PythonDiffusion: train.py's vector autograd ops, composed over all keys (no cache); one new op, a
    weighted sum of losses. Slow, exact, the reference.
  * TorchDiffusion: the batch as one (B, block_size) tensor: every sequence has the same length, so no
    padding masks are needed.

    python -m engines.diffusion --engine torch --num-steps 2000 --batch-size 32
    python -m engines.diffusion --engine python --num-steps 200
    python -m engines.diffusion --num-steps 1000 --batch-size 32 --save d.ckpt --ar-save ar.ckpt
    python -m engines.diffusion --sample-from d.ckpt --show-denoising 4 --prompt "__a."
    python -m engines.diffusion --sample-from d.ckpt --ar-checkpoint ar.ckpt --quality 1000

The command line trains the diffusion model and, on the same documents in the same order with the same
learning rates, the autoregressive model (``--ar-engine``, default the C engine); it prints both losses as
training goes, a loss-curve summary, validation losses (exact for the autoregressive model, the ELBO bound
averaged over several mask draws for diffusion) and samples from both; ``--quality N`` compares N
samples of each with real names (microgpt/sample_quality.py), ``--show-denoising`` prints the rounds
of a few samples, ``--save``/``--ar-save`` keep the two models (a diffusion checkpoint is marked as
one, so train.py refuses it, and this command refuses an autoregressive one).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from array import array
from dataclasses import dataclass, replace

from microgpt import UserError
from microgpt.cli import check_writable
from microgpt.config import ModelConfig, TrainConfig, lr_at
from microgpt.interrupts import StepInterrupt
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

    def predict_batch(self, seqs: list[list[int]]) -> list[list[list[float]]]:
        return [self.predict(seq) for seq in seqs]

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
        return self.predict_batch([tokens])[0]

    def predict_batch(self, seqs: list[list[int]]) -> list[list[list[float]]]:
        """predict() of several sequences of one length in one forward pass (the sampler's rounds)."""
        for tokens in seqs:
            check_tokens(tokens, self.cfg)
        if len({len(tokens) for tokens in seqs}) > 1:
            raise ValueError("predict_batch takes sequences of one length")
        with self.torch.no_grad():
            return self._logits(self.torch.tensor(seqs, device=self.device)).double().cpu().tolist()

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

HOLE, END = "_", "."   # in a --prompt template and in the denoising trace: a masked position, the end of the name


def template(prompt: str, tokenizer, cfg: ModelConfig) -> tuple[list[int], int]:
    """The sequence sampling starts from -- ``prompt``'s characters fixed, each '_' masked, and after the
    prompt either masks (the model picks the length) or, when it ends in '.', the end of the name -- and
    how many leading positions must hold characters (the prompt's: a '_' is a character, never the end)."""
    bos, mask = special_ids(cfg)
    body, ends = (prompt[:-1], True) if prompt.endswith(END) else (prompt, False)
    if END in body:
        raise UserError(f"--prompt {prompt!r}: '{END}' ends the name, so it can only be the last character")
    if len(body) > cfg.block_size:
        raise UserError(f"--prompt {prompt!r} has {len(body)} positions; the model has {cfg.block_size} "
                        f"(its --block-size)")
    try:
        fixed = iter(tokenizer.encode(body.replace(HOLE, "")))
    except UserError as e:
        raise UserError(f"--prompt {prompt!r}: {e}") from None
    seq = [mask if ch == HOLE else next(fixed) for ch in body]
    seq += [bos if ends else mask] * (cfg.block_size - len(seq))
    if mask not in seq:  # (which also leaves the autoregressive model's prefix shorter than the block)
        raise UserError(f"--prompt {prompt!r} leaves the model nothing to fill: put a '{HOLE}' in it"
                        + (f", or drop the final '{END}'" if ends else f" (it fills all {cfg.block_size} positions)"))
    return seq, len(body)


def ar_prompt(prompt: str) -> str:
    """What the autoregressive model can be given of a template: its fixed characters before the first hole."""
    return prompt.split(HOLE)[0].rstrip(END)


def show(seq: list[int], tokenizer, cfg: ModelConfig) -> str:
    """A sequence as text, '_' for [MASK] and '.' for BOS (one column per position with the char tokenizer)."""
    bos, mask = special_ids(cfg)
    return "".join(HOLE if tok == mask else END if tok == bos else tokenizer.decode([tok]) for tok in seq)


def _check_sampling(steps, temperature, remasking) -> None:
    if remasking not in REMASKING:
        raise UserError(f"--remasking must be one of {', '.join(REMASKING)} (got {remasking!r})")
    if not (isinstance(steps, int) and steps >= 1):
        raise UserError(f"--sample-steps must be an integer >= 1 (got {steps!r})")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature must be > 0 (got {temperature!r})")


def denoise(predict_batch, cfg: ModelConfig, starts: list[list[int]], steps: int, temperature: float = 1.0,
            remasking: str = "random", seed: int = 42, min_len: int = 0) -> list[list[list[int]]]:
    """Unmask ``starts`` in ``steps`` rounds; for each sequence, its state before the first round and after
    every round that changed it (the last one has no [MASK] left).

    Each round proposes a token for every masked position from the model's distribution at ``temperature``
    and keeps an even share of the remaining masked positions: chosen at random ("random": the reverse of
    the training corruption, MDLM's ancestral sampler) or the most confident proposals ("confidence":
    LLaDA's low-confidence remasking). A sampled sequence is always a name followed by BOS padding, like
    the training data: BOS is never proposed before a letter already in place or before position
    ``min_len`` (a template's holes are characters), nor a letter after a BOS. The positions after a BOS
    stay masked until their turn instead of all turning BOS at once: a run of explicit BOS pulls the end
    of the name forward (0.7% empty names in 2000 samples, against none). Sample k draws from its own RNG,
    seeded by (seed, k), so the first samples do not depend on how many are drawn.
    """
    _check_sampling(steps, temperature, remasking)
    bos, mask = special_ids(cfg)
    traces = [[list(seq)] for seq in starts]
    rngs = [random.Random(f"microgpt-diffusion-sample-{seed}-{k}") for k in range(len(starts))]
    for step in itertools.count():
        live = [k for k, trace in enumerate(traces) if mask in trace[-1]]
        if not live:
            break
        rows = predict_batch([traces[k][-1] for k in live])
        for k, logits in zip(live, rows):
            seq, rng = list(traces[k][-1]), rngs[k]
            masked = [i for i, tok in enumerate(seq) if tok == mask]
            last_letter = max((i for i, tok in enumerate(seq) if tok not in (mask, bos)), default=-1)
            first_bos = seq.index(bos) if bos in seq else len(seq)
            proposals = []
            for i in masked:
                scaled = [v / temperature for v in logits[i][:mask]]  # [MASK] is never proposed
                if i < last_letter or i < min_len:
                    scaled[bos] = -math.inf  # a name does not end before one of its letters
                elif i > first_bos:
                    scaled[:bos] = [-math.inf] * bos  # nor go on after its end
                top = max(scaled)
                probs = [math.exp(v - top) for v in scaled]
                tok = rng.choices(range(mask), weights=probs)[0]
                proposals.append((probs[tok] / sum(probs), i, tok))
            # an even share of what is left; a round after the last one only fills what a dropped BOS left
            keep = math.ceil(len(masked) / max(steps - step, 1))
            if remasking == "confidence":
                chosen = sorted(proposals, reverse=True)[:keep]
            else:
                chosen = rng.sample(proposals, keep)
            # letters first: a BOS chosen in the same round before one of them is dropped (it stays masked)
            for _, i, tok in sorted(chosen, key=lambda c: c[2] == bos):
                if tok != bos or all(t in (mask, bos) for t in seq[i:]):
                    seq[i] = tok
            if seq != traces[k][-1]:
                traces[k].append(seq)
    return traces


def decode_name(seq: list[int], tokenizer, cfg: ModelConfig) -> str:
    """The name of a sampled sequence: everything before its first BOS."""
    bos, _ = special_ids(cfg)
    return tokenizer.decode(seq[:seq.index(bos)] if bos in seq else seq)


def sample_names(predict_batch, tokenizer, cfg: ModelConfig, num_samples: int, steps: int, temperature: float = 1.0,
                 remasking: str = "random", seed: int = 42, prompt: str = "") -> list[str]:
    """``num_samples`` names unmasked from ``prompt``'s template (all [MASK] when empty) in ``steps`` rounds."""
    start, min_len = template(prompt, tokenizer, cfg)
    traces = denoise(predict_batch, cfg, [start] * num_samples, steps, temperature, remasking, seed, min_len)
    return [decode_name(trace[-1], tokenizer, cfg) for trace in traces]


# ----------------------------------------------------------------------------------------------------
# Command line

PROMPT_HELP = (f"a template every diffusion sample fills in: its characters stay where they are, each '{HOLE}' is a "
               f"character the model chooses, and positions after the template are masked too (the model picks "
               f"the length) unless it ends in '{END}', the end of the name: 'em' (names starting em), "
               f"'{HOLE * 3}a{END}' "
               f"(four letters ending in a), 'a{HOLE}{HOLE}a' (a, two letters, a, then any ending). The autoregressive "
               f"model, which cannot fill holes, is given the characters before the first '{HOLE}'")


#: what a run trains; a checkpoint fixes all of it, so --sample-from refuses them
TRAINING_FLAGS = (("n_embd", int, 16), ("n_layer", int, 1), ("n_head", int, 4), ("block_size", int, 16),
                  ("mlp_act", str, "relu2"), ("num_steps", int, 1000), ("batch_size", int, 1),
                  ("learning_rate", float, 0.01), ("grad_clip", float, 1.0), ("seed", int, 42),
                  ("val_fraction", float, 0.1))


def build_parser() -> argparse.ArgumentParser:
    from engines import ENGINES as AR_ENGINES
    from microgpt.cli import OneLineErrorParser
    from microgpt.config import FLAG_HELP

    p = OneLineErrorParser(prog="python -m engines.diffusion", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=list(ENGINES), default="torch", help="diffusion implementation (default: torch)")
    p.add_argument("--ar-engine", choices=list(AR_ENGINES), default="c",
                   help="engine of the autoregressive model trained alongside for comparison (default: c)")
    for flag, kind, default in TRAINING_FLAGS:  # default None: --sample-from can tell a flag given from one left out
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=None,
                       help=f"{FLAG_HELP[flag]} (default: {default})")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="text file(s), one document per line (default: names.txt)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="compute precision")
    p.add_argument("--threads", type=int, default=1, help="threads (torch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (torch)")
    p.add_argument("--eval-docs", type=int, default=200, help="validation documents for the final comparison")
    p.add_argument("--eval-draws", type=int, default=4, help="mask draws per validation document (diffusion ELBO)")
    g = p.add_argument_group("sampling")
    g.add_argument("--num-samples", type=int, default=20, help="names to sample from each model")
    g.add_argument("--sample-steps", type=int, default=0, help="unmasking rounds K (default: block size)")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of both models")
    g.add_argument("--remasking", choices=REMASKING, default="random",
                   help="which proposals to keep each round: random ones (default; the exact reverse of the training "
                        "corruption) or the most confident (LLaDA's low-confidence remasking: here it fills the end "
                        "padding first, and names come out short, empty and repeated)")
    g.add_argument("--sample-seed", type=int, default=42, help="seed of the samplers")
    g.add_argument("--prompt", default="", metavar="TEMPLATE", help=PROMPT_HELP)
    g.add_argument("--show-denoising", type=int, nargs="?", const=3, default=0, metavar="N",
                   help=f"print every round of the first N diffusion samples (N: 3 when omitted): '{HOLE}' masked, "
                        f"'{END}' the end of the name, names emerging from the masks")
    g.add_argument("--quality", type=int, default=0, metavar="N",
                   help="draw N names from each model and print how they compare with real held-out names: distinct "
                        "fraction, share found in the training set, empty, mean length, length distribution's distance "
                        "to the data's (microgpt/sample_quality.py)")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--save", metavar="CKPT", help="write the trained diffusion model here (a diffusion checkpoint)")
    g.add_argument("--ar-save", metavar="CKPT",
                   help="write the autoregressive model trained alongside here (python train.py --sample-from "
                        "reads it)")
    g.add_argument("--sample-from", metavar="CKPT",
                   help="no training: sample from a diffusion checkpoint written by --save")
    g.add_argument("--ar-checkpoint", metavar="CKPT",
                   help="with --sample-from: an autoregressive checkpoint (--ar-save, or train.py --save on the same "
                        "data) to sample and compare beside it")
    g.add_argument("--log-every", type=int, default=0, metavar="N", help="progress every N steps (default: ~1/s)")
    g.add_argument("--loss-log", metavar="JSON", help="write both per-step training loss curves here")
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


def _check_args(args) -> None:
    """Everything the flags alone decide, before any data is read or any step is run."""
    for flag in ("eval_docs", "num_samples", "sample_steps", "log_every", "show_denoising", "quality"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be an integer >= 0 (got {getattr(args, flag)})")
    if args.eval_draws < 1:
        raise UserError(f"--eval-draws must be an integer >= 1 (got {args.eval_draws})")
    if args.threads < 1:
        raise UserError(f"--threads must be an integer >= 1 (got {args.threads})")
    if args.engine != "torch" and args.device != "cpu":
        raise UserError(f"--engine {args.engine} runs on the CPU only (got --device {args.device})")
    _check_sampling(args.sample_steps or 1, args.temperature, args.remasking)
    for flag, _, default in TRAINING_FLAGS:
        if getattr(args, flag) is None and not args.sample_from:
            setattr(args, flag, default)
    if args.sample_from:
        given = [flag for flag in ("save", "ar_save", "loss_log") if getattr(args, flag)]
        if given:
            raise UserError(f"--sample-from trains nothing, so --{given[0].replace('_', '-')} has nothing to write")
        given = [flag for flag, _, _ in TRAINING_FLAGS if getattr(args, flag) is not None]
        if given:
            raise UserError(f"--sample-from takes the model and its training from {args.sample_from}: "
                            + " ".join("--" + flag.replace("_", "-") for flag in given) + " cannot change them")
    elif args.ar_checkpoint:
        raise UserError("--ar-checkpoint goes with --sample-from (a run that trains compares its own two models)")
    if args.sample_from and not (args.num_samples or args.show_denoising or args.quality):
        raise UserError("--sample-from with --num-samples 0 asks for nothing (add --show-denoising or --quality)")
    if args.loss_log:
        check_writable("--loss-log", args.loss_log)


def _names(docs: list[list[int]], tokenizer) -> list[str]:
    return [tokenizer.decode(doc) for doc in docs]  # decode skips the BOS ids


def run(argv: list[str], out=None) -> dict:
    from engines import load_engine
    from microgpt import checkpoint
    from microgpt.config import SampleConfig
    from microgpt.files import write_json_atomic
    from microgpt.tokenizers import tokenizer_from_dict
    from microgpt.trainer import DataOrder, check_memory, evaluate, load_dataset

    out = out or sys.stdout  # looked up per call, so that a caller (or a test) can swap it
    args = build_parser().parse_args(argv)
    _check_args(args)
    options = {"dtype": args.dtype, "threads": args.threads}
    if args.engine == "torch":
        options["device"] = args.device
    ar_engine = load_engine(args.ar_engine)

    if args.sample_from:
        ckpt = checkpoint.load(args.sample_from, kind="diffusion")
        cfg, tcfg, tokenizer = ckpt.model, ckpt.train, tokenizer_from_dict(ckpt.tokenizer)
        ar_cfg = replace(cfg, vocab_size=cfg.vocab_size - 1)
        ar_ckpt = checkpoint.load(args.ar_checkpoint) if args.ar_checkpoint else None
        if ar_ckpt and (ar_ckpt.tokenizer != ckpt.tokenizer or ar_ckpt.model.block_size != cfg.block_size):
            raise UserError(f"--ar-checkpoint {args.ar_checkpoint} has another vocabulary or block size than "
                            f"{args.sample_from}; compare models trained on the same data and block size")
        template(args.prompt, tokenizer, cfg)
        train_names = val_names = []
        if args.quality:  # the data is needed only to compare with
            data = load_dataset(args.data or ckpt.data.get("sources"), tcfg, cfg.block_size, "char", 0, ckpt.tokenizer)
            train_names, val_names = _names(data.train, tokenizer), _names(data.val, tokenizer)
        try:
            model = ENGINES[args.engine](cfg, tcfg, ckpt.params, **options)
            ar = ar_engine(ar_ckpt.model, ar_ckpt.train, ar_ckpt.params) if ar_ckpt else None
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"diffusion model {args.sample_from} ({ckpt.step} steps) sampled by {model.name}"
              + (f" | autoregressive model {args.ar_checkpoint} ({ar_ckpt.step} steps) by {ar.name}" if ar else ""),
              file=out, flush=True)
        result = {"config": cfg.to_dict()}
    else:
        tcfg = TrainConfig(num_steps=args.num_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           grad_clip=args.grad_clip, seed=args.seed, val_fraction=args.val_fraction).validate()
        shape = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head,
                 "block_size": args.block_size, "mlp_act": args.mlp_act}
        ModelConfig(**shape).validate()
        SampleConfig(temperature=args.temperature).validate()
        data = load_dataset(args.data, tcfg, args.block_size, "char", 0)
        if not data.train:
            raise UserError("the training split is empty: provide more documents or lower --val-fraction")
        tokenizer = data.tokenizer
        ar_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **shape).validate()
        cfg = replace(ar_cfg, vocab_size=ar_cfg.vocab_size + 1)  # + [MASK]
        # what would fail after training fails now: the prompt, the checkpoints' paths and room, the memory
        template(args.prompt, tokenizer, cfg)
        for flag, path, model_cfg in (("--save", args.save, cfg), ("--ar-save", args.ar_save, ar_cfg)):
            if path:
                check_writable(flag, path, checkpoint.size_bytes(model_cfg))
        check_memory(ENGINES[args.engine], cfg, tcfg, args.dtype, args.engine, cfg.block_size)
        check_memory(ar_engine, ar_cfg, tcfg, "float64", args.ar_engine, max(map(len, data.train)) - 1)
        train_names, val_names = _names(data.train, tokenizer), _names(data.val, tokenizer)
        try:
            model = ENGINES[args.engine](cfg, tcfg, init_params(cfg, tcfg.seed), **options)
            ar = ar_engine(ar_cfg, tcfg, init_params(ar_cfg, tcfg.seed))
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"diffusion engine {model.name} ({args.dtype}) vs autoregressive engine {ar.name} | "
              f"{num_params(cfg):,} params | {len(data.train):,} train / {len(data.val):,} val documents | "
              f"vocab {cfg.vocab_size} with [MASK] | steps {tcfg.num_steps}", file=out, flush=True)
        curves, done = _train_both(model, ar, data, tcfg, args, out, DataOrder)
        if args.save:
            checkpoint.save(args.save, checkpoint.Checkpoint(
                model=cfg, train=tcfg, tokenizer=tokenizer.to_dict(), params=model.export_params(),
                adam=model.export_adam(), step=done, rng_state=model.export_rng(), data=data.info,
                meta={"engine": model.name, "dtype": args.dtype}, kind="diffusion"))
        if args.ar_save:
            checkpoint.save(args.ar_save, checkpoint.Checkpoint(
                model=ar_cfg, train=tcfg, tokenizer=tokenizer.to_dict(), params=ar.export_params(),
                adam=ar.export_adam(), step=done, data=data.info, meta={"engine": ar.name}))
        saved = " and ".join(f"{what} checkpoint saved to {path}" for what, path in
                             (("diffusion", args.save), ("autoregressive", args.ar_save)) if path)
        if done < tcfg.num_steps:
            print(f"\ninterrupted after step {done}" + (f"; {saved}" if saved else ""), file=out, flush=True)
            raise SystemExit(130)
        if saved:
            print(saved, file=out)
        result = _summary(model, ar, data, cfg, tcfg, curves, args, out, evaluate)

    _sample_and_compare(model, ar, tokenizer, cfg, args, train_names, val_names, result, out, SampleConfig)
    if args.loss_log:
        write_json_atomic(args.loss_log, result)
    return result


def _train_both(model, ar, data, tcfg: TrainConfig, args, out, DataOrder) -> tuple[dict, int]:
    """The same documents, in the same order, at the same learning rates, for both models: the loss curves
    and the steps done. Ctrl-C ends the run after the step in progress (microgpt/interrupts.py)."""
    order, curves, seconds = DataOrder(data.train, tcfg.batch_size, tcfg.seed), {"diffusion": [], "ar": []}, [0.0, 0.0]
    last_print, done, ctrl_c = time.perf_counter(), 0, StepInterrupt()
    try:
        for step in range(tcfg.num_steps):
            if ctrl_c.requested:
                break
            docs, lr = order.batch(step), lr_at(step, tcfg)
            for i, (engine, key) in enumerate(((model, "diffusion"), (ar, "ar"))):
                t0 = time.perf_counter()
                loss = engine.train_step(docs, lr)
                seconds[i] += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise UserError(f"{engine.name} diverged at step {step + 1}: loss is {loss}; lower "
                                    f"--learning-rate; nothing saved")
                curves[key].append(loss)
            done, now = step + 1, time.perf_counter()
            if (args.log_every and done % args.log_every == 0) or (not args.log_every and now - last_print >= 1.0) \
                    or done in (1, tcfg.num_steps):
                print(f"step {done:>{len(str(tcfg.num_steps))}}/{tcfg.num_steps} | lr {lr:.2e} | diffusion loss "
                      f"{curves['diffusion'][-1]:.4f} ({seconds[0] / done * 1e3:.2f} ms/step) | autoregressive loss "
                      f"{curves['ar'][-1]:.4f} ({seconds[1] / done * 1e3:.2f} ms/step)", file=out, flush=True)
                last_print = now
    except KeyboardInterrupt:
        print(f"\ninterrupted twice during step {done + 1}; nothing saved", file=out, flush=True)
        raise SystemExit(130) from None
    finally:
        ctrl_c.restore()
    return curves, done


def _summary(model, ar, data, cfg: ModelConfig, tcfg: TrainConfig, curves: dict, args, out, evaluate) -> dict:
    """The loss curves side by side, then both models' validation losses."""
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
    return result


def _sample_and_compare(model, ar, tokenizer, cfg: ModelConfig, args, train_names: list[str], val_names: list[str],
                        result: dict, out, SampleConfig) -> None:
    """Samples side by side, the denoising of a few, and the quality table, as the flags ask."""
    from microgpt.sample_quality import quality_table, sample_quality
    from microgpt.sampling import sample

    steps = args.sample_steps or cfg.block_size
    start, min_len = template(args.prompt, tokenizer, cfg)
    how = f"{steps} unmasking rounds, {args.remasking} remasking, temperature {args.temperature}" + \
        (f", template {args.prompt!r}" if args.prompt else "")
    prefix = ar_prompt(args.prompt)

    def diffusion_names(n: int) -> list[str]:
        traces = denoise(model.predict_batch, cfg, [start] * n, steps, args.temperature, args.remasking,
                         args.sample_seed, min_len)
        return [decode_name(trace[-1], tokenizer, cfg) for trace in traces]

    def ar_names(n: int) -> list[str]:
        scfg = SampleConfig(num_samples=n, temperature=args.temperature, seed=args.sample_seed, prompt=prefix)
        return sample(ar.logits, tokenizer, cfg.block_size, scfg.validate())

    if args.show_denoising:
        traces = denoise(model.predict_batch, cfg, [start] * args.show_denoising, steps, args.temperature,
                         args.remasking, args.sample_seed, min_len)
        print(f"\ndenoising ({how}; '{HOLE}' masked, '{END}' end of name):", file=out)
        for r in range(max(len(t) for t in traces)):
            row = [show(t[min(r, len(t) - 1)], tokenizer, cfg) for t in traces]
            print(f"  round {r:>{len(str(steps))}}  " + "  ".join(row), file=out)
        result["denoising"] = [[show(s, tokenizer, cfg) for s in t] for t in traces]
    if args.num_samples:
        names = diffusion_names(args.num_samples)
        result["samples"] = {"diffusion": names}
        header = f"\nsamples (diffusion: {how}"
        if ar:
            result["samples"]["autoregressive"] = others = ar_names(args.num_samples)
            header += f" | autoregressive, temperature {args.temperature}" + (f", prompt {prefix!r}" if prefix else "")
        print(header + "):", file=out)
        for i, name in enumerate(names):
            print(f"  {name or '(empty)':<{cfg.block_size + 2}} {others[i] if ar else ''}".rstrip(), file=out)
    if args.quality:
        rows = {}
        if val_names:
            rows["real names (validation)"] = sample_quality(random.Random(args.sample_seed).sample(
                val_names, min(args.quality, len(val_names))), train_names, cfg.block_size)
        rows[f"diffusion ({args.remasking})"] = sample_quality(diffusion_names(args.quality), train_names,
                                                               cfg.block_size)
        if ar:
            rows["autoregressive"] = sample_quality(ar_names(args.quality), train_names, cfg.block_size)
        print(f"\nsample quality ({how}; {len(train_names):,} training names, mean length "
              f"{next(iter(rows.values()))['data_mean_len']:.2f}):", file=out)
        for line in quality_table(rows):
            print("  " + line, file=out)
        result["quality"] = rows


def main(argv: list[str]) -> int:
    from microgpt.cli import run_main

    def body(argv):
        run(argv)

    return run_main(body, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

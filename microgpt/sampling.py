"""Temperature / top-k / top-p sampling, shared by every engine.

An engine only has to provide ``logits(tokens) -> list[float]`` (next-token logits after ``tokens``);
this module turns that into names. Generation starts from ``[BOS] + prompt`` and stops at BOS or at
``max_len`` tokens (never beyond the model's block size).
"""

from __future__ import annotations

import math
import random
from typing import Callable

from microgpt import UserError
from microgpt.config import SampleConfig


def next_token_distribution(logits: list[float], cfg: SampleConfig) -> list[float]:
    """Probabilities after temperature, then top-k, then top-p (nucleus) filtering."""
    scaled = [v / cfg.temperature for v in logits]
    top = max(scaled)
    probs = [math.exp(v - top) for v in scaled]
    order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
    keep = order[:cfg.top_k] if cfg.top_k else order
    if cfg.top_p < 1.0:
        total, cumulative, nucleus = sum(probs[i] for i in keep), 0.0, []
        for i in keep:  # smallest prefix of the sorted tokens whose mass reaches top_p
            nucleus.append(i)
            cumulative += probs[i] / total
            if cumulative >= cfg.top_p:
                break
        keep = nucleus
    kept = set(keep)
    probs = [p if i in kept else 0.0 for i, p in enumerate(probs)]
    total = sum(probs)
    return [p / total for p in probs]


def check_prompt(tokenizer, block_size: int, cfg: SampleConfig) -> tuple[list[int], int]:
    """The prompt's token ids and the sample length, or a UserError naming what is wrong: a character
    (or word) the vocabulary lacks, or a prompt too long to leave room for one more token. Trainers call
    it before the first step, so that a bad --prompt costs nothing."""
    max_len = min(cfg.max_len or block_size, block_size)
    try:
        prompt = tokenizer.encode(cfg.prompt)
    except UserError as e:
        raise UserError(f"--prompt {cfg.prompt!r}: {e}") from None
    unk = getattr(tokenizer, "unk_id", None)
    unknown = [w for w, i in zip(cfg.prompt.split(), prompt) if i == unk] if unk is not None else []
    if unknown:
        raise UserError(f"--prompt {cfg.prompt!r}: {', '.join(map(repr, unknown))} not in the vocabulary "
                        f"of {tokenizer.vocab_size} words")
    if len(prompt) >= max_len:
        raise UserError(f"--prompt is {len(prompt)} tokens; it must be shorter than the sample length {max_len} "
                        f"(--max-len, at most --block-size)")
    return prompt, max_len


def sample(logits_fn: Callable[[list[int]], list[float]], tokenizer, block_size: int,
           cfg: SampleConfig) -> list[str]:
    """Draw ``cfg.num_samples`` documents; each is the prompt followed by what the model wrote."""
    rng = random.Random(cfg.seed)
    prompt, max_len = check_prompt(tokenizer, block_size, cfg)
    bos = tokenizer.bos_id
    samples = []
    for _ in range(cfg.num_samples):
        tokens = [bos] + prompt
        while len(tokens) < max_len + 1:
            probs = next_token_distribution(logits_fn(tokens), cfg)
            tok = rng.choices(range(len(probs)), weights=probs)[0]
            if tok == bos:
                break
            tokens.append(tok)
        samples.append(tokenizer.decode(tokens[1:]))
    return samples

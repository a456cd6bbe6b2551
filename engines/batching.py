"""How a step's documents become tensors, shared by the array engines (numpy, torch, jax, mlx).

Two layouts, each a measured choice:

* ``pack_batch``: one row per real position, document after document, plus each row's slot in a
  (B, T) grid that only attention uses. Linear layers then never compute padding (numpy, torch).
* ``pad_batch``: every document padded to ``block_size`` with a mask, so a jitted step has one shape
  per batch size and compiles once (jax, mlx).

Both validate the documents first and raise ValueError with one line, as the engine contract asks.
"""

from __future__ import annotations

from typing import NamedTuple

from microgpt.config import ModelConfig


def check_docs(docs: list[list[int]], cfg: ModelConfig) -> list[int]:
    """Predictions per document (``len(doc) - 1``), after checking lengths and token ids."""
    if not docs:
        raise ValueError("a batch needs at least one document")
    lengths = [len(d) - 1 for d in docs]
    if min(lengths) < 1 or max(lengths) > cfg.block_size:
        raise ValueError(f"documents must hold 2..{cfg.block_size + 1} tokens (got lengths {min(lengths) + 1}.."
                         f"{max(lengths) + 1})")
    if not all(0 <= tok < cfg.vocab_size for doc in docs for tok in doc):
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
    return lengths


class Batch(NamedTuple):
    """A step's documents as rows, one per real position, document after document (no padding)."""

    tokens: list      # (N,) input ids
    positions: list   # (N,) position of each row in its document
    targets: list     # (N,) next-token ids
    weights: list     # (N,) loss weight 1 / (B n_b): the weighted sum is the mean of document means
    slots: list       # (N,) b T + p: where each row sits in the (B, T) grid attention runs on
    B: int
    T: int            # the longest document's length


def pack_batch(docs: list[list[int]], cfg: ModelConfig) -> Batch:
    lengths = check_docs(docs, cfg)
    B, T = len(docs), max(lengths)
    return Batch(tokens=[tok for doc in docs for tok in doc[:-1]],
                 positions=[p for n in lengths for p in range(n)],
                 targets=[tok for doc in docs for tok in doc[1:]],
                 weights=[1.0 / (n * B) for n in lengths for _ in range(n)],
                 slots=[b * T + p for b, n in enumerate(lengths) for p in range(n)], B=B, T=T)


def pad_batch(docs: list[list[int]], cfg: ModelConfig, dtype):
    """Inputs and targets (B, block_size) int32, and a mask of the real predictions in ``dtype`` (NumPy)."""
    import numpy as np

    lengths = check_docs(docs, cfg)
    tokens = np.zeros((len(docs), cfg.block_size + 1), np.int32)
    mask = np.zeros((len(docs), cfg.block_size), dtype)
    for i, (doc, n) in enumerate(zip(docs, lengths)):
        tokens[i, :n + 1] = doc
        mask[i, :n] = 1
    return tokens[:, :-1], tokens[:, 1:], mask

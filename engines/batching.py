"""How a step's documents become tensors, shared by the array engines (numpy, torch, jax, mlx).

Two layouts, each a measured choice:

* ``pack_batch``: one row per real position, document after document, plus each row's slot in a
  (B, T) grid that only attention uses. Linear layers then never compute padding (numpy, torch).
* ``grid_batch``: the same token-major rows for frameworks that compile one program per shape (jax,
  mlx): the row count rounded up to a quarter-octave ``bucket`` and the grid's T to a power of two, so a
  run compiles a handful of shapes, not one per pattern of document lengths. (Padding every document to
  ``block_size``, as these engines first did, computed ~4.5x the real positions of names.)

``fused_blocks`` lists the flat layout's matrices with each layer's q, k, v as one block (one product).

Both validate the documents first and raise ValueError with one line, as the engine contract asks.
"""

from __future__ import annotations

from typing import NamedTuple

from microgpt.config import ModelConfig, check_docs
from microgpt.params import layout


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


def bucket(n: int, floor: int = 1) -> int:
    """``n`` (at least ``floor``) rounded up to 5, 6, 7 or 8 x 2^e: quarter-octave steps, so a jitted step
    compiles at most four shapes per doubling of the rows and computes under 25% padding."""
    n = max(n, floor)
    step = 1 << max((n - 1).bit_length() - 3, 0)
    return -(-n // step) * step


class Grid(NamedTuple):
    """A step's documents as NumPy arrays of bucketed shapes, for frameworks that compile one program per shape.

    ``rows`` holds the linear layers' inputs: token-major, the real positions back to back then padding rows
    up to ``bucket(N)`` (``token_major=True``); or the (B, T) grid itself, every document padded to T
    (length bucketing). Attention runs on the (B, T) grid, T = the longest document rounded up to a power of
    two (8 to block_size): ``gather`` names, for each grid slot, the row that fills it, and ``slots`` each
    row's grid slot; the index one past the end (R, or B T) stands for a row of zeros. The two are inverse
    partial permutations, so each one's gradient is a gather by the other (no scatter-add). Padding rows weigh 0 in the loss,
    so neither they nor the padded grid slots (after every real position: the causal mask hides them) change
    a real row's result or gradient.
    """

    tokens: object     # np.ndarray (R,) int32
    positions: object  # np.ndarray (R,) int32
    targets: object    # np.ndarray (R,) int32
    weights: object    # np.ndarray (R,) dtype: 1 / (B n_b) for real rows, 0 for padding
    gather: object     # np.ndarray (B, T) int32
    slots: object      # np.ndarray (R,) int32, B T for padding rows


def grid_batch(docs: list[list[int]], cfg: ModelConfig, dtype, token_major: bool = True,
               bucketed: bool = True) -> Grid:
    """Built as Python lists, one NumPy conversion per array: NumPy scatters into preallocated arrays took
    22 us for one document and 92 us for 32, the lists 7.5 and 79 (a tiny one-document jax step is ~0.3 ms).

    ``bucketed=False`` gives the exact shapes (rows = the real positions, T = the longest document), for a
    framework that runs each shape as it comes (eager mlx): buckets only spare a compiler its retracing."""
    import numpy as np

    lengths = check_docs(docs, cfg)
    B = len(docs)
    T = min(cfg.block_size, max(8, 1 << (max(lengths) - 1).bit_length())) if bucketed else max(lengths)
    if token_major:
        real = [b * T + p for b, n in enumerate(lengths) for p in range(n)]   # each real row's grid slot
        N = len(real)
        R = bucket(N, 8) if bucketed else N
        pad = [0] * (R - N)
        ids = [tok for doc in docs for tok in doc[:-1]] + pad
        targets = [tok for doc in docs for tok in doc[1:]] + pad
        positions = [p for n in lengths for p in range(n)] + pad
        weights = [1.0 / (n * B) for n in lengths for _ in range(n)] + pad
        slots = real + [B * T] * (R - N)
        gather = [R] * (B * T)
        for row, slot in enumerate(real):
            gather[slot] = row
    else:   # the grid is the rows: document b's position p is row b T + p
        R, ids, targets, positions, weights, slots = B * T, [], [], [], [], []
        for b, (doc, n) in enumerate(zip(docs, lengths)):
            pad = [0] * (T - n)
            ids += doc[:-1] + pad
            targets += doc[1:] + pad
            positions += list(range(n)) + pad
            weights += [1.0 / (n * B)] * n + pad
            slots += list(range(b * T, b * T + n)) + [R] * (T - n)
        gather = slots
    as_int = lambda rows: np.array(rows, np.int32)   # noqa: E731
    return Grid(as_int(ids), as_int(positions), as_int(targets), np.array(weights, dtype),
                as_int(gather).reshape(B, T), as_int(slots))


def fused_blocks(cfg: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(name, offset, rows, cols) of the flat layout's matrices, each layer's adjacent query, key and value
    matrices as one (3 n_embd, n_embd) block "qkv": one matrix product computes all three."""
    out = []
    for t in layout(cfg):
        if t.name.endswith(("attn_wk", "attn_wv")):
            name, offset, rows, cols = out.pop()
            out.append((name.replace("attn_wq", "qkv"), offset, rows + t.rows, cols))
        else:
            out.append((t.name, t.offset, t.rows, t.cols))
    return out

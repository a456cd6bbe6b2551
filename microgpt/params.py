"""The one flat parameter layout every engine imports from and exports to.

All weights live in one contiguous float64 buffer (``array('d')``), matrix after matrix, each
row-major with shape (out_features, in_features), so a linear layer computes ``y[i] = sum_j W[i][j] x[j]``.
Order:

    wte (vocab, n_embd)  wpe (block_size, n_embd)
    per layer l:  layer{l}.attn_wq, .attn_wk, .attn_wv, .attn_wo (n_embd, n_embd)
                  layer{l}.mlp_fc1 (4 n_embd, n_embd), layer{l}.mlp_fc2 (n_embd, 4 n_embd)
    lm_head (vocab, n_embd)

Gradients and Adam moments use the same layout, so an engine can keep all four buffers as flat
arrays and a checkpoint written by one engine loads in any other.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass

from microgpt import UserError
from microgpt.config import ModelConfig

#: Matrices that are zero-initialised when ``ModelConfig.zero_init_proj`` is set.
ZERO_INIT_SUFFIXES = (".attn_wo", ".mlp_fc2")


@dataclass(frozen=True)
class Tensor:
    """Where one named matrix lives inside the flat buffer."""

    name: str
    offset: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def layout(cfg: ModelConfig) -> list[Tensor]:
    """The ordered list of named matrices for ``cfg``, with their offsets in the flat buffer."""
    shapes = [("wte", cfg.vocab_size, cfg.n_embd), ("wpe", cfg.block_size, cfg.n_embd)]
    for layer in range(cfg.n_layer):
        p = f"layer{layer}"
        shapes += [(f"{p}.attn_wq", cfg.n_embd, cfg.n_embd), (f"{p}.attn_wk", cfg.n_embd, cfg.n_embd),
                   (f"{p}.attn_wv", cfg.n_embd, cfg.n_embd), (f"{p}.attn_wo", cfg.n_embd, cfg.n_embd),
                   (f"{p}.mlp_fc1", 4 * cfg.n_embd, cfg.n_embd), (f"{p}.mlp_fc2", cfg.n_embd, 4 * cfg.n_embd)]
    shapes.append(("lm_head", cfg.vocab_size, cfg.n_embd))
    tensors, offset = [], 0
    for name, rows, cols in shapes:
        tensors.append(Tensor(name, offset, rows, cols))
        offset += rows * cols
    return tensors


def num_params(cfg: ModelConfig) -> int:
    last = layout(cfg)[-1]
    return last.offset + last.size


class FlatParams:
    """A model's weights: the layout plus one contiguous float64 buffer."""

    def __init__(self, cfg: ModelConfig, data: array | None = None):
        self.cfg = cfg
        self.tensors = {t.name: t for t in layout(cfg)}
        n = num_params(cfg)
        self.data = array("d", bytes(8 * n)) if data is None else array("d", data)
        if len(self.data) != n:
            raise ValueError(f"flat params hold {len(self.data)} floats, the layout needs {n}")

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, name: str) -> list[list[float]]:
        """A copy of one matrix as a list of row lists (the shape train.py computes with)."""
        t = self.tensors[name]
        d = self.data
        return [d[t.offset + r * t.cols: t.offset + (r + 1) * t.cols].tolist() for r in range(t.rows)]

    def copy(self) -> "FlatParams":
        return FlatParams(self.cfg, self.data)


def init_params(cfg: ModelConfig, seed: int) -> FlatParams:
    """Seeded Gaussian(0, init_std) weights; output projections zero when ``zero_init_proj``.

    Uses Python's Mersenne Twister, so the same seed gives the same weights on every platform and
    every engine starts from bit-identical parameters.
    """
    rng = random.Random(seed)
    params = FlatParams(cfg)
    for t in params.tensors.values():
        if cfg.zero_init_proj and t.name.endswith(ZERO_INIT_SUFFIXES):
            continue
        params.data[t.offset:t.offset + t.size] = array("d", (rng.gauss(0.0, cfg.init_std) for _ in range(t.size)))
    return params


@dataclass
class AdamState:
    """Adam's first and second moments in the flat layout, and how many updates produced them."""

    m: array
    v: array
    t: int = 0

    @classmethod
    def zeros(cls, n: int) -> "AdamState":
        return cls(array("d", bytes(8 * n)), array("d", bytes(8 * n)), 0)

    def check(self, n: int) -> "AdamState":
        """Itself, if its moments fit a model of ``n`` parameters; else a one-line UserError."""
        if len(self.m) != n or len(self.v) != n:
            raise UserError(f"Adam state holds {len(self.m)}/{len(self.v)} moments; this model has {n} parameters")
        return self

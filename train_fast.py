"""The C trainer: the same model and training loop as train.py, computed by the C extension fastops.

The engine keeps four flat buffers in the layout of microgpt/params.py -- parameters, gradients and
Adam's two moments -- as Python arrays, and hands them to ``fastops.GPT``, which reads and writes them in
place through the buffer protocol: no copies between Python and C, and no Python per op, per token or
per layer. One C call runs a whole optimizer step (forward, backward, clipping, Adam) or several.

``--dtype float64`` (the default) mirrors train.py to rounding; ``--dtype float32`` is the fast path.
Everything else -- the command line, data order, progress line, validation, checkpoints, sampling -- is
the shared code in microgpt/trainer.py, so checkpoints move freely between train.py and this file.

    python train_fast.py --num-steps 1000            # fused C engine ("c")
    python train_fast.py --dtype float32 --threads 2 --batch-size 32
"""

from __future__ import annotations

import sys
from array import array

from microgpt import UserError
from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

TYPECODES = {"float64": "d", "float32": "f"}


def _fastops():
    try:
        import fastops
    except ImportError as e:
        raise UserError(f"the C extension fastops is not built ({e}); run: pip install -e .") from None
    return fastops


class FastEngine:
    """The fused rung: one C call per optimizer step (see engines/__init__.py for the contract)."""

    name = "c"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str = "float64",
                 threads: int = 1):
        if dtype not in TYPECODES:
            raise ValueError(f"dtype must be one of {', '.join(TYPECODES)} (got {dtype!r})")
        fastops = _fastops()
        self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, dtype
        code, n = TYPECODES[dtype], len(params)
        self.params = array(code, params.data)
        self.grads, self.m, self.v = (array(code, bytes(array(code).itemsize * n)) for _ in range(3))
        c = model_cfg
        self.model = fastops.GPT(self.params, self.grads, self.m, self.v, c.vocab_size, c.n_embd, c.n_layer,
                                 c.n_head, c.block_size, mlp_act=c.mlp_act, beta1=train_cfg.beta1,
                                 beta2=train_cfg.beta2, eps=train_cfg.eps, grad_clip=train_cfg.grad_clip,
                                 threads=threads)

    def loss_and_grad(self, docs: list[list[int]]) -> tuple[float, array]:
        loss = self.model.loss_and_grad(docs)
        return loss, array("d", self.grads)

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        return self.model.train_steps([docs], [lr])[0]

    def train_steps(self, batches: list[list[list[int]]], lrs: list[float]) -> list[float]:
        """Several optimizer steps in one C call (what the benchmarks time)."""
        return self.model.train_steps(batches, lrs)

    def eval_loss(self, docs: list[list[int]]) -> float:
        return self.model.eval_loss(docs)

    def logits(self, tokens: list[int]) -> list[float]:
        return self.model.logits(tokens)

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.params))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m), array("d", self.v), self.model.step)

    def import_adam(self, state: AdamState) -> None:
        n = len(self.params)
        if len(state.m) != n or len(state.v) != n:
            raise UserError(f"Adam state holds {len(state.m)}/{len(state.v)} moments; this model has {n} parameters")
        # Slice assignment writes in place: the C side keeps pointing at the same memory.
        code = TYPECODES[self.dtype]
        self.m[:] = array(code, state.m)
        self.v[:] = array(code, state.v)
        self.model.step = state.t


if __name__ == "__main__":
    from microgpt.trainer import main

    main(sys.argv[1:], default_engine="c", description=__doc__)

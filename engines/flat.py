"""The state shared by the engines that keep parameters, gradients and Adam moments as four flat
``array`` buffers of one dtype (the C rungs and Cython): C code holds pointers into them, so every update
writes in place. Subclasses set ``step`` (Adam's update count) and compute.
"""

from __future__ import annotations

from array import array

from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import AdamState, FlatParams

TYPECODES = {"float64": "d", "float32": "f"}


class FlatArraysEngine:
    """Parameters, gradients and Adam moments as four flat arrays of one dtype, shared with C."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, params: FlatParams, dtype: str):
        if dtype not in TYPECODES:
            raise ValueError(f"dtype must be one of {', '.join(TYPECODES)} (got {dtype!r})")
        self.cfg, self.tcfg, self.dtype = model_cfg, train_cfg, dtype
        code, n = TYPECODES[dtype], len(params)
        self.params = array(code, params.data)
        self.grads, self.m, self.v = (array(code, bytes(array(code).itemsize * n)) for _ in range(3))

    def export_params(self) -> FlatParams:
        return FlatParams(self.cfg, array("d", self.params))

    def export_adam(self) -> AdamState:
        return AdamState(array("d", self.m), array("d", self.v), self.step)

    def import_adam(self, state: AdamState) -> None:
        n = len(self.params)
        state.check(n)
        # Slice assignment writes in place: the C side keeps pointing at the same memory.
        code = TYPECODES[self.dtype]
        self.m[:] = array(code, state.m)
        self.v[:] = array(code, state.v)
        self.step = state.t

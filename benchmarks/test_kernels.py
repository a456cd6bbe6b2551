"""Micro-benchmarks of the fastops kernels through pytest-benchmark; ``benchmark.py compare`` reads its JSON.

    pytest benchmarks/test_kernels.py --benchmark-json=out/kernels.json --benchmark-timer=time.process_time
    python benchmark.py compare old-kernels.json out/kernels.json

Every instruction set this CPU runs x both dtypes, on one fixed batch of 8 name-like documents: the
forward pass of one sequence (logits), the batch loss (eval_loss), loss and gradient (loss_and_grad) and
a whole optimizer step (train_steps). Not part of the test suite (pyproject's testpaths leave it out).
"""

import random
from array import array

import pytest

import fastops
from microgpt.config import ModelConfig
from microgpt.params import init_params

CFG = ModelConfig(vocab_size=27, n_embd=16, n_layer=1, n_head=4, block_size=16)
_rng = random.Random(0)
BATCH = [[26] + [_rng.randrange(26) for _ in range(_rng.randint(3, 10))] + [26] for _ in range(8)]


def make_model(isa: str, dtype: str):
    """A GPT on fresh flat buffers (it holds buffer views on them, which keeps them alive)."""
    code = {"float64": "d", "float32": "f"}[dtype]
    params = array(code, init_params(CFG, 42).data)
    grads, m, v = (array(code, bytes(params.itemsize * len(params))) for _ in range(3))
    return fastops.GPT(params, grads, m, v, CFG.vocab_size, CFG.n_embd, CFG.n_layer, CFG.n_head, CFG.block_size,
                       isa=isa)


OPS = {
    "logits": lambda model: model.logits(BATCH[0][:-1]),
    "eval_loss": lambda model: model.eval_loss(BATCH),
    "loss_and_grad": lambda model: model.loss_and_grad(BATCH),
    "train_step": lambda model: model.train_steps([BATCH], [1e-3]),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("isa", fastops.available_isas())
def test_kernel(benchmark, isa, dtype, op):
    model = make_model(isa, dtype)
    result = benchmark(OPS[op], model)
    assert result is not None

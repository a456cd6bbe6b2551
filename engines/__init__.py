"""Engines: the same model computed many ways, all behind one small contract.

An engine is constructed from ``(ModelConfig, TrainConfig, FlatParams)`` and owns its copy of the
weights and Adam moments in whatever form it computes fastest with. It must provide::

    __init__(model_cfg, train_cfg, params, dtype="float64", threads=1[, device="cpu"])
                                                    # ValueError for a dtype/threads it cannot do;
                                                    # only engines that can run elsewhere take ``device``
    name: str                                       # "python", "scalar", "c", ...
    loss_and_grad(docs) -> (float, array('d'))      # no update; gradient in the flat layout
    train_step(docs, lr) -> float                   # forward, backward, clip, one Adam update; the loss
    eval_loss(docs) -> float                        # no graph, no update
    logits(tokens) -> list[float]                   # next-token logits after ``tokens``
    export_params() -> FlatParams
    export_adam() -> AdamState                      # moments in the flat layout + update count
    import_adam(state: AdamState)

Engines that train data-parallel under torchrun (microgpt/distributed.py; torch and c) also have::

    grads                                           # the flat gradient buffer: a torch tensor, or an
                                                    # array the all-reduce wraps without a copy
    compute_grads(docs) -> float                    # the docs' mean loss; its gradient left in grads
    apply_adam(lr)                                  # clip grads by their global norm, one Adam update

``docs`` is a list of token-id lists, each already wrapped as ``[BOS] + tokens + [BOS]`` and cut to
``block_size + 1``. A document's loss is the mean cross-entropy of predicting ``doc[1:]`` from
``doc[:-1]``; a batch's loss is the mean of its documents' losses (each document weighs the same).
"""

from __future__ import annotations

import importlib

from microgpt import UserError

#: engine name -> "module:Class", imported on demand so optional frameworks stay optional.
ENGINES = {
    "python": "train:PythonEngine",
    "scalar": "engines.scalar:ScalarEngine",
    "c": "train_fast:FastEngine",
    "c-ops": "train_fast:OpsEngine",
    "jax": "engines.jax_jit:JaxEngine",
    "mlx": "engines.mlx_cpu:MlxEngine",
    "mlx-compile": "engines.mlx_cpu:MlxCompiledEngine",
    "cython": "engines.cython_engine:CythonEngine",
    "numpy": "engines.numpy_manual:NumpyEngine",
    "torch": "engines.torch_eager:TorchEngine",
    "torch-compile": "engines.torch_eager:TorchCompileEngine",
}


#: what to install for an engine that cannot be imported: its extra in pyproject.toml, or the build step
INSTALL_HINTS = {
    "numpy": "pip install -e '.[dev]' (or pip install numpy)",
    "torch": "pip install -e '.[torch]'", "torch-compile": "pip install -e '.[torch]'",
    "jax": "pip install -e '.[jax]'",
    "mlx": "pip install -e '.[mlx]'", "mlx-compile": "pip install -e '.[mlx]'",
    "c": "build the C extension: pip install -e .", "c-ops": "build the C extension: pip install -e .",
    "cython": "build it with Cython installed: pip install Cython && pip install -e .",
}


def load_engine(name: str):
    """The engine class registered under ``name``; a one-line error for unknown names."""
    if name not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)} (got {name!r})")
    module, cls = ENGINES[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        hint = INSTALL_HINTS.get(name, "install what it imports")
        raise UserError(f"engine {name} cannot be loaded ({e}); {hint}") from None

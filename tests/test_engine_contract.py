"""The engine contract (engines/__init__.py), written once and run over every entry of engines.ENGINES.

For each engine and each precision it computes in: the same losses, gradients, weights, Adam moments,
validation loss and logits as the reference (train.py's python engine, float64) within the engine's row
of TOLERANCE; a resume through export/import that is bit-exact, and a hand-over from the reference that
stays on its curve; one-line errors for what it cannot do; and the command line end to end. What only
one engine has (padding, devices, compile caches, kernels) stays in that engine's own test file.
"""

import io
import json
from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from engines import ENGINES, load_engine
from microgpt import UserError, checkpoint
from microgpt.config import TrainConfig, lr_at
from microgpt.params import AdamState
from train import PythonEngine

#: Relative tolerance against the reference, per engine and per precision it computes in; a precision
#: missing from a row is one the engine refuses (ValueError). Measured on this suite's model (6 steps,
#: batch 3, clipping, 2 layers; the suite runs 4 steps of batch 2 to stay fast): float64 engines within 5e-16 of the reference's losses and 1e-14 of its
#: weights (relative to the largest), float32 within 1.3e-7 and 4e-6.
FLOAT64, FLOAT32 = 1e-12, 1e-4
BOTH = {"float64": FLOAT64, "float32": FLOAT32}
TOLERANCE = {
    "python": {"float64": 0.0},          # the reference itself: equal to the last bit
    "scalar": {"float64": FLOAT64},
    "c": BOTH,
    "c-ops": {"float64": FLOAT64},
    "jax": BOTH,
    "mlx": BOTH,
    "mlx-compile": BOTH,
    "cython": BOTH,
    "numpy": BOTH,
    "torch": BOTH,
    "torch-compile": BOTH,
}
CASES = [pytest.param(name, dtype, id=f"{name}-{dtype}") for name, row in TOLERANCE.items() for dtype in row]
#: One model for every test, so that the jitting engines compile it once per process: two layers, plain
#: ReLU, non-zero projections (every weight gets a gradient at step 0), documents of different lengths.
SHAPE = dict(n_embd=8, n_layer=2, n_head=2, block_size=8, mlp_act="relu", zero_init_proj=False)
STEPS, BATCH, HALF = 4, 2, 2


def test_every_registered_engine_has_a_row():
    assert list(TOLERANCE) == list(ENGINES)


@pytest.fixture(scope="module")
def ref():
    """The reference run every engine is held to, and its state halfway for the hand-over."""
    cfg, params = make_setup(**SHAPE)
    tcfg = TrainConfig(num_steps=STEPS, batch_size=BATCH, grad_clip=0.5).validate()
    docs = encode_names(read_names(STEPS * BATCH + 5), cfg.block_size)
    batches, held_out = [docs[BATCH * s:BATCH * (s + 1)] for s in range(STEPS)], docs[STEPS * BATCH:]
    engine = PythonEngine(cfg, tcfg, params.copy())
    loss0, grad0 = engine.loss_and_grad(batches[0])
    losses = []
    for step, batch in enumerate(batches):
        losses.append(engine.train_step(batch, lr_at(step, tcfg)))
        if step + 1 == HALF:
            half = engine.export_params(), engine.export_adam()
    return {"cfg": cfg, "tcfg": tcfg, "params": params, "batches": batches, "held_out": held_out,
            "loss0": loss0, "grad0": grad0, "losses": losses, "half": half, "params_end": engine.export_params(),
            "adam_end": engine.export_adam(), "eval": engine.eval_loss(held_out),
            "logits": engine.logits(held_out[0][:5])}


def close(got, want, rel: float) -> bool:
    """Element-wise within ``rel`` of the largest magnitude of ``want`` (a vector) or of ``want`` (a number)."""
    if isinstance(want, float):
        return abs(got - want) <= rel * abs(want)
    scale = max(map(abs, want))
    return len(got) == len(want) and all(abs(a - b) <= rel * scale for a, b in zip(got, want))


def train(engine, batches, start, tcfg):
    return [engine.train_step(b, lr_at(start + i, tcfg)) for i, b in enumerate(batches)]


_straight: dict = {}


def straight(ref, name, dtype):
    """An engine's whole run from the reference's initial weights, (engine, step-0 loss and gradient, losses),
    computed once per process for both tests that need it (the scalar engine takes seconds per run)."""
    if (name, dtype) not in _straight:
        engine = load_engine(name)(ref["cfg"], ref["tcfg"], ref["params"].copy(), dtype=dtype)
        loss_and_grad = engine.loss_and_grad(ref["batches"][0])      # no update
        _straight[name, dtype] = engine, loss_and_grad, train(engine, ref["batches"], 0, ref["tcfg"])
    return _straight[name, dtype]


@pytest.mark.parametrize("name,dtype", CASES)
def test_matches_the_reference(ref, name, dtype):
    rel = TOLERANCE[name][dtype]
    engine, (loss, grad), losses = straight(ref, name, dtype)
    assert engine.name == name
    assert isinstance(grad, array) and grad.typecode == "d"
    assert close(loss, ref["loss0"], rel) and close(grad, ref["grad0"], rel)
    assert all(close(a, b, rel) for a, b in zip(losses, ref["losses"])), (losses, ref["losses"])
    params, adam = engine.export_params(), engine.export_adam()
    assert params.data.typecode == "d" and close(params.data, ref["params_end"].data, rel)
    assert adam.t == STEPS and close(adam.m, ref["adam_end"].m, 10 * rel) and close(adam.v, ref["adam_end"].v, 10 * rel)
    assert close(engine.eval_loss(ref["held_out"]), ref["eval"], rel)
    assert close(engine.logits(ref["held_out"][0][:5]), ref["logits"], rel)


@pytest.mark.parametrize("name,dtype", CASES)
def test_resume_is_exact_and_a_hand_over_stays_on_the_reference_curve(ref, name, dtype):
    """Export + import into a new engine continues bit for bit (N + M == N+M); weights and Adam moments
    handed over from the reference continue its curve within the engine's tolerance."""
    cfg, tcfg, batches, rel = ref["cfg"], ref["tcfg"], ref["batches"], TOLERANCE[name][dtype]
    cls = load_engine(name)
    whole, _, want = straight(ref, name, dtype)
    first = cls(cfg, tcfg, ref["params"].copy(), dtype=dtype)
    got = train(first, batches[:HALF], 0, tcfg)
    resumed = cls(cfg, tcfg, first.export_params(), dtype=dtype)
    resumed.import_adam(first.export_adam())
    got += train(resumed, batches[HALF:], HALF, tcfg)
    assert got == want and resumed.export_params().data == whole.export_params().data
    params, adam = ref["half"]
    handed = cls(cfg, tcfg, params.copy(), dtype=dtype)
    handed.import_adam(adam)
    continued = train(handed, batches[HALF:], HALF, tcfg)
    assert all(close(a, b, rel) for a, b in zip(continued, ref["losses"][HALF:]))
    assert handed.export_adam().t == STEPS


def one_line_error(kind, call):
    with pytest.raises(kind) as e:
        call()
    assert "\n" not in str(e.value) and str(e.value)
    return str(e.value)


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_bad_arguments_are_one_line_errors(ref, name):
    cfg, tcfg, params = ref["cfg"], ref["tcfg"], ref["params"]
    cls = load_engine(name)
    for dtype in ("float16", "float32", "float64"):
        if dtype not in TOLERANCE[name]:
            one_line_error(ValueError, lambda: cls(cfg, tcfg, params.copy(), dtype=dtype))
    one_line_error(ValueError, lambda: cls(cfg, tcfg, params.copy(), threads=0))
    engine = cls(cfg, tcfg, params.copy())
    bos, too_long = cfg.vocab_size - 1, [cfg.vocab_size - 1] * (cfg.block_size + 2)
    for docs in ([[bos, cfg.vocab_size + 13, bos]], [[bos, 1, cfg.vocab_size]], [too_long], [[bos]], []):
        one_line_error(ValueError, lambda: engine.train_step(docs, 0.01))
        one_line_error(ValueError, lambda: engine.eval_loss(docs))
        one_line_error(ValueError, lambda: engine.loss_and_grad(docs))
    assert engine.export_adam().t == 0, "a rejected batch is not a step"
    for tokens in ([], [bos] * (cfg.block_size + 1)):
        one_line_error(ValueError, lambda: engine.logits(tokens))
    message = one_line_error(UserError, lambda: engine.import_adam(AdamState(array("d", [0.0] * 3),
                                                                              array("d", [0.0] * 3), 1)))
    assert f"this model has {len(params)} parameters" in message


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_the_command_line_trains_saves_and_samples(names_file, tmp_path, name):
    """train.py's command line (microgpt.trainer.run, in this process so that a compiling engine reuses the
    graphs of the tests above: the same model) trains, validates, saves, logs and samples with every engine."""
    import engines
    from microgpt.trainer import run
    ckpt, log, out = tmp_path / "run.ckpt", tmp_path / "loss.json", io.StringIO()
    shape = ["--n-embd", "8", "--n-layer", "2", "--n-head", "2", "--block-size", "8", "--mlp-act", "relu",
             "--no-zero-init-proj"]
    hist = run(["--engine", name, "--data", str(names_file), "--num-steps", "2", "--batch-size", "2", *shape,
                "--eval-docs", "5", "--num-samples", "2", "--save", str(ckpt), "--loss-log", str(log)],
               engines, default_engine="python", description="", out=out)
    text = out.getvalue()
    assert f"engine {name} (float64, 1 thread" in text and "step 2/2 | loss" in text and "validation loss" in text
    assert len(text.split("samples:")[1].split()) == 2 and len(hist.losses) == 2
    saved = checkpoint.load(ckpt)
    assert saved.step == 2 and saved.meta["engine"] == name and json.loads(log.read_text())["train"] == hist.losses

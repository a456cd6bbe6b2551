"""engines.torch_eager: TorchEngine ("torch") and TorchCompileEngine ("torch-compile") against the reference."""

from array import array

import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from engines import load_engine
from microgpt import UserError
from microgpt.config import TrainConfig, lr_at
from microgpt.params import AdamState
from train import PythonEngine

torch = pytest.importorskip("torch")
from engines.torch_eager import TorchCompileEngine, TorchEngine  # noqa: E402


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def max_abs_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Engines set torch's process-wide thread count; give every test the count it started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def check_against_reference(engine_cls, model_kw, batch_size, grad_clip, dtype, tol, steps=20):
    cfg, params = make_setup(block_size=8, **model_kw)
    tcfg = TrainConfig(num_steps=steps, batch_size=batch_size, grad_clip=grad_clip).validate()
    docs = encode_names(read_names(steps * batch_size), cfg.block_size)
    ref, eng = PythonEngine(cfg, tcfg, params), engine_cls(cfg, tcfg, params, dtype=dtype, device="cpu")
    # gradients at step 0, and the batched loss is the reference's mean of per-document means
    loss_ref, grad_ref = ref.loss_and_grad(docs[:batch_size])
    loss, grad = eng.loss_and_grad(docs[:batch_size])
    assert isinstance(grad, array) and grad.typecode == "d" and len(grad) == len(params)
    assert rel_err(loss, loss_ref) < tol
    assert max_abs_diff(grad, grad_ref) < tol * max(map(abs, grad_ref))
    for step in range(steps):
        batch, lr = docs[step * batch_size:(step + 1) * batch_size], lr_at(step, tcfg)
        assert rel_err(eng.train_step(batch, lr), ref.train_step(batch, lr)) < tol, step
    assert max_abs_diff(eng.export_params().data, ref.export_params().data) < tol
    assert eng.export_adam().t == steps
    assert rel_err(eng.eval_loss(docs[:5]), ref.eval_loss(docs[:5])) < tol
    return eng, ref, docs


@pytest.mark.parametrize("model_kw,batch_size,grad_clip", [
    ({}, 1, 0.0),
    ({}, 4, 0.5),   # a padded batch of different lengths, clipping active
    ({"n_embd": 8, "n_layer": 2, "n_head": 2, "mlp_act": "relu", "zero_init_proj": False}, 3, 0.0),
])
def test_eager_float64_matches_reference(model_kw, batch_size, grad_clip):
    eng, ref, docs = check_against_reference(TorchEngine, model_kw, batch_size, grad_clip, "float64", 1e-9)
    assert eng.logits(docs[0][:4]) == pytest.approx(ref.logits(docs[0][:4]), rel=1e-12, abs=1e-14)


def test_eager_float32_matches_reference_to_1e4():
    eng, _, _ = check_against_reference(TorchEngine, {}, 4, 0.0, "float32", 1e-4)
    assert eng.params.dtype == torch.float32


def test_compiled_float64_matches_reference():
    """One compilation of the training graph (dynamic shapes: every batch length reuses it) + one for eval."""
    eng, _, _ = check_against_reference(TorchCompileEngine, {}, 4, 0.5, "float64", 1e-9)
    assert eng.name == "torch-compile"


def test_parameters_and_gradients_are_views_of_flat_buffers():
    cfg, params = make_setup(block_size=8)
    eng = TorchEngine(cfg, TrainConfig(num_steps=2).validate(), params)
    before = eng.params.clone()
    eng.train_step(encode_names(read_names(2), 8), 0.01)
    start, end = eng.params.data_ptr(), eng.params.data_ptr() + eng.params.numel() * eng.params.element_size()
    grads_start = eng.grads.data_ptr()
    for name, t in params.tensors.items():
        w = eng.w[name]
        assert w.is_leaf and start <= w.data_ptr() < end
        assert w.grad.data_ptr() == grads_start + t.offset * eng.grads.element_size()
    assert not torch.equal(before, eng.params), "Adam on the flat buffer moved the weights the model reads"


def test_resume_through_export_is_exact():
    cfg, params = make_setup(block_size=8)
    tcfg = TrainConfig(num_steps=10, batch_size=2).validate()
    docs = encode_names(read_names(20), cfg.block_size)
    batches = [docs[2 * s:2 * s + 2] for s in range(10)]
    straight = TorchEngine(cfg, tcfg, params)
    want = [straight.train_step(b, 0.01) for b in batches]
    first = TorchEngine(cfg, tcfg, params)
    got = [first.train_step(b, 0.01) for b in batches[:5]]
    resumed = TorchEngine(cfg, tcfg, first.export_params())
    resumed.import_adam(first.export_adam())
    got += [resumed.train_step(b, 0.01) for b in batches[5:]]
    assert got == want


def test_threads_are_set_and_recorded():
    cfg, params = make_setup(block_size=8)
    eng = TorchEngine(cfg, None, params, threads=2)
    assert eng.threads == 2 == torch.get_num_threads()


def test_devices():
    cfg, params = make_setup(block_size=8)
    assert TorchEngine(cfg, None, params, device="cpu").device.type == "cpu"
    for device, available in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())):
        if available:   # a machine with the GPU runs the same engine there
            eng = TorchEngine(cfg, None, params, dtype="float32", device=device)
            assert eng.params.device.type == device
            assert eng.eval_loss([[26, 1, 2, 26]]) == pytest.approx(
                TorchEngine(cfg, None, params, dtype="float32").eval_loss([[26, 1, 2, 26]]), rel=1e-4)
        else:
            with pytest.raises(ValueError, match=f"device {device} is not available here"):
                TorchEngine(cfg, None, params, device=device)
    for bad in ("tpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device must be cpu, cuda or mps"):
            TorchEngine(cfg, None, params, device=bad)


def test_bad_arguments():
    cfg, params = make_setup(block_size=8)
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        TorchEngine(cfg, None, params, dtype="bfloat16")
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        TorchEngine(cfg, None, params, threads=0)
    eng = TorchEngine(cfg, None, params)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 27\)"):
        eng.eval_loss([[26, 40, 26]])
    with pytest.raises(ValueError, match="documents must hold 2..9 tokens"):
        eng.eval_loss([[26] * 12])
    with pytest.raises(ValueError, match="logits needs 1..8 tokens"):
        eng.logits([])
    with pytest.raises(UserError, match="Adam state holds 3/3 moments"):
        eng.import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))


def test_cli_trains_samples_and_rejects_a_missing_gpu(names_file, tmp_path):
    assert load_engine("torch") is TorchEngine and load_engine("torch-compile") is TorchCompileEngine
    ckpt = tmp_path / "torch.ckpt"
    r = run_cli("--engine", "torch", "--device", "cpu", "--data", names_file, "--num-steps", "20", "--batch-size", "8",
                "--block-size", "8", "--threads", "2", "--num-samples", "3", "--save", ckpt)
    assert r.returncode == 0, r.stderr
    assert "engine torch (float64, 2 threads)" in r.stdout and "samples:" in r.stdout
    r = run_cli("--sample-from", ckpt, "--num-samples", "2")   # the reference samples from torch's checkpoint
    assert r.returncode == 0 and len(r.stdout.split()) == 2, r.stderr
    if not torch.cuda.is_available():
        r = run_cli("--engine", "torch", "--device", "cuda", "--data", names_file, "--num-steps", "1")
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            "error: --engine torch: device cuda is not available here (torch.cuda.is_available() is False)"]

"""engines.torch_eager beyond the contract (tests/test_engine_contract.py): flat buffers, threads, devices."""

import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from engines import load_engine
from microgpt.config import TrainConfig

torch = pytest.importorskip("torch")
from engines.batching import fused_blocks  # noqa: E402
from engines.torch_eager import TorchCompileEngine, TorchEngine  # noqa: E402


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Engines set torch's process-wide thread count; give every test the count it started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_parameters_and_gradients_are_views_of_flat_buffers():
    cfg, params = make_setup(block_size=8)
    eng = TorchEngine(cfg, TrainConfig(num_steps=2).validate(), params)
    before = eng.params.clone()
    eng.train_step(encode_names(read_names(2), 8), 0.01)
    start, end = eng.params.data_ptr(), eng.params.data_ptr() + eng.params.numel() * eng.params.element_size()
    grads_start = eng.grads.data_ptr()
    blocks = fused_blocks(cfg)
    assert sorted(eng.w) == sorted(name for name, *_ in blocks)
    for name, offset, rows, cols in blocks:
        w = eng.w[name]
        assert w.is_leaf and w.data_ptr() == start + offset * eng.params.element_size() and w.shape == (rows, cols)
        assert w.grad.data_ptr() == grads_start + offset * eng.grads.element_size()
    assert not torch.equal(before, eng.params), "Adam on the flat buffer moved the weights the model reads"


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


def test_cli_rejects_a_missing_gpu_in_one_line(names_file):
    assert load_engine("torch") is TorchEngine and load_engine("torch-compile") is TorchCompileEngine
    r = run_cli("--engine", "torch", "--device", "cuda", "--data", names_file, "--num-steps", "1")
    if torch.cuda.is_available():
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            "error: --engine torch: device cuda is not available here (torch.cuda.is_available() is False)"]

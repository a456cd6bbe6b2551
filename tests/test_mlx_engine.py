"""engines.mlx_cpu beyond the contract (tests/test_engine_contract.py): devices."""

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.config import TrainConfig

mx = pytest.importorskip("mlx.core")
from engines.mlx_cpu import MlxEngine  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    """Two layers, clipping on (the first steps' gradient norms exceed 1), batches of 3 documents of mixed length."""
    cfg, params = make_setup(16, 2, 4, 8)
    tcfg = TrainConfig(num_steps=40, batch_size=3, grad_clip=1.0).validate()
    docs = encode_names(read_names(200), cfg.block_size)
    return cfg, tcfg, params, [docs[3 * s:3 * s + 3] for s in range(40)]


def test_devices(setup):
    """cpu, and the GPU (mps/cuda) in float32 where MLX has one, else a one-line refusal (the rest of the
    contract's bad arguments: tests/test_engine_contract.py)."""
    cfg, tcfg, params, _ = setup
    with pytest.raises(ValueError, match="device must be one of cpu, mps, cuda"):
        MlxEngine(cfg, tcfg, params, device="tpu")
    if mx.is_available(mx.gpu):
        with pytest.raises(ValueError, match="float64 on the CPU only"):
            MlxEngine(cfg, tcfg, params, device="mps")
        assert MlxEngine(cfg, tcfg, params, dtype="float32", device="mps").train_step([[26, 0, 26]], 0.01) > 0
    else:
        with pytest.raises(ValueError, match="no GPU backend here"):
            MlxEngine(cfg, tcfg, params, dtype="float32", device="mps")

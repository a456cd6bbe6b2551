"""engines.mlx_cpu beyond the contract (tests/test_engine_contract.py): devices."""

import mlx.core as mx
import pytest

from conftest import make_setup
from engines.mlx_cpu import MlxEngine
from microgpt.config import TrainConfig


def test_devices():
    """cpu, and the GPU (mps/cuda) in float32 where MLX has one, else a one-line refusal (the rest of the
    contract's bad arguments: tests/test_engine_contract.py)."""
    cfg, params = make_setup(16, 1, 4, 8)
    tcfg = TrainConfig(num_steps=2).validate()
    with pytest.raises(ValueError, match="device must be one of cpu, mps, cuda"):
        MlxEngine(cfg, tcfg, params, device="tpu")
    if mx.is_available(mx.gpu):
        with pytest.raises(ValueError, match="float64 on the CPU only"):
            MlxEngine(cfg, tcfg, params, device="mps")
        assert MlxEngine(cfg, tcfg, params, dtype="float32", device="mps").train_step([[26, 0, 26]], 0.01) > 0
    else:
        with pytest.raises(ValueError, match="no GPU backend here"):
            MlxEngine(cfg, tcfg, params, dtype="float32", device="mps")

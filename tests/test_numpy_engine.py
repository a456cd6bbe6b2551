"""engines.numpy_manual.NumpyEngine beyond the contract (tests/test_engine_contract.py): padding."""

import pytest

from conftest import make_setup
from engines.numpy_manual import NumpyEngine


def test_padding_changes_nothing():
    """A document's loss is the same alone and padded inside a batch of longer ones."""
    cfg, params = make_setup(block_size=8)
    eng = NumpyEngine(cfg, None, params)
    short, long_ = [26, 0, 26], [26, 1, 2, 3, 4, 5, 6, 7, 8]
    alone = [eng.eval_loss([short]), eng.eval_loss([long_])]
    assert eng.eval_loss([short, long_]) == pytest.approx(sum(alone) / 2, rel=1e-14)

"""The per-phase profile of the fused C step: compiled out of the normal build, counted in the
MICROGPT_PROFILE=1 build, and the same numbers either way."""

import math
from array import array

import pytest

from conftest import encode_names, make_setup, read_names
from microgpt.native import build_fastops, load_fastops

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")

PHASES = {"embed", "linear_forward", "attention", "norm_act", "cross_entropy", "linear_backward", "adam"}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    return load_fastops(build_fastops({"MICROGPT_PROFILE": "1"}, dest=tmp_path_factory.mktemp("profiled")))


def train(module, isa, steps=6, grad_clip=0.0):
    cfg, params = make_setup(n_embd=16, n_layer=2, block_size=8)
    bufs = [array("d", params.data)] + [array("d", bytes(8 * len(params))) for _ in range(3)]
    model = module.GPT(*bufs, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size, isa=isa,
                       grad_clip=grad_clip)
    docs = encode_names(read_names(40), cfg.block_size)
    losses = model.train_steps([docs[i * 4:i * 4 + 4] for i in range(steps)], [1e-2] * steps)
    return model, losses, bufs[0]


def test_normal_build_has_no_counters():
    assert fastops.PROFILED == 0
    model, _, _ = train(fastops, None, steps=1)
    with pytest.raises(RuntimeError, match="MICROGPT_PROFILE=1"):
        model.profile()


@pytest.mark.parametrize("isa", fastops.available_isas())
def test_profile_counts_every_phase_and_changes_no_number(profiled, isa):
    assert profiled.PROFILED == 1
    model, losses, params = train(profiled, isa, grad_clip=0.5)
    _, want_losses, want_params = train(fastops, isa, grad_clip=0.5)
    assert losses == want_losses and params == want_params   # the counters do not touch the arithmetic
    prof = model.profile(reset=True)
    assert set(prof) == PHASES
    for name, phase in prof.items():
        assert phase["calls"] > 0, name
        assert phase["seconds"] > 0 and math.isfinite(phase["seconds"]), name
    # clipping runs Adam as its own pass once per step; 2 layers x 4 linear layers + lm_head per backward
    assert prof["adam"]["calls"] == 6
    assert prof["linear_backward"]["calls"] == 6 * (2 * 4 + 1)
    assert all(p["calls"] == 0 for p in model.profile().values())   # reset=True zeroed the counters


def test_profile_rejects_bad_arguments(profiled):
    model, _, _ = train(profiled, None, steps=1)
    with pytest.raises(TypeError):
        model.profile(reset="yes", extra=1)

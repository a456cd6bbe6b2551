"""fastops.GPT against the reference (train.PythonEngine): same flat params, same documents, same numbers.

Every test runs on each instruction set this CPU supports (AVX-512, AVX2, portable C), so the fallback
kernels are checked on the machine that has the fast ones.
"""

import ctypes
import functools
from array import array
from pathlib import Path

import pytest

from conftest import encode_names, make_setup, read_names
from engines.flat import HUGE_PAGE, flat_buffer
from microgpt.config import TrainConfig
from train import PythonEngine

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")

ISAS = fastops.available_isas()


def c_model(cfg, params, tcfg=None, dtype="d", **kw):
    """A fastops.GPT on fresh flat buffers (params copied in the given dtype); returns (model, buffers)."""
    tcfg = tcfg or TrainConfig()
    n = len(params)
    bufs = [array(dtype, params.data)] + [array(dtype, bytes(array(dtype).itemsize * n)) for _ in range(3)]
    model = fastops.GPT(*bufs, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size,
                        mlp_act=cfg.mlp_act, beta1=tcfg.beta1, beta2=tcfg.beta2, eps=tcfg.eps,
                        grad_clip=tcfg.grad_clip, **kw)
    return model, bufs


def assert_close(got, want, rel):
    """Elementwise relative error <= rel; values under 1e-6 of the largest compare against that floor."""
    assert len(got) == len(want)
    floor = 1e-6 * max(abs(w) for w in want)
    worst = max((abs(g - w) / max(abs(w), floor), i) for i, (g, w) in enumerate(zip(got, want)))
    assert worst[0] <= rel, f"element {worst[1]}: {got[worst[1]]!r} vs {want[worst[1]]!r} (rel {worst[0]:.2e})"


def reference_run(cfg, tcfg, params, batches, lrs):
    ref = PythonEngine(cfg, tcfg, params.copy())
    return [ref.train_step(b, lr) for b, lr in zip(batches, lrs)]


@pytest.fixture(scope="module")
def small():
    """(16,1,8) with real names: the config of the 200-step test."""
    cfg, params = make_setup(16, 1, 4, 8)
    return cfg, params, encode_names(read_names(300), cfg.block_size)


@pytest.fixture(scope="module")
def medium():
    cfg, params = make_setup(64, 2, 4, 16)
    return cfg, params, encode_names(read_names(100), cfg.block_size)


@pytest.fixture(scope="module")
def small_curve(small):
    cfg, params, docs = small
    tcfg = TrainConfig(num_steps=200).validate()
    batches, lrs = [[d] for d in docs[:200]], [0.01 * (1 - s / 200) for s in range(200)]
    return tcfg, batches, lrs, reference_run(cfg, tcfg, params, batches, lrs)


# ---- equivalence, float64 ----

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape, kw", [((16, 1, 4, 8), {}), ((64, 2, 4, 16), {}),
                                       ((24, 2, 3, 8), {"mlp_act": "relu", "zero_init_proj": False})])
def test_step0_gradients_match_reference(isa, shape, kw):
    cfg, params = make_setup(*shape, **kw)
    docs = encode_names(read_names(5), cfg.block_size)
    want_loss, want = PythonEngine(cfg, TrainConfig(), params.copy()).loss_and_grad(docs)
    model, (p, g, m, v) = c_model(cfg, params, isa=isa)
    loss = model.loss_and_grad(docs)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(g, want, 1e-10)
    assert p == params.data, "loss_and_grad must not update the parameters"


@pytest.fixture(scope="module")
def wide_batch():
    """A layer wide enough for every cache-blocking path of gemm (MLP rows of 4 x 136 = 544 > 512, B
    split into column blocks) and a batch long enough (24 names, > FUSED_MAX_TOKENS tokens) to take it."""
    cfg, params = make_setup(136, 1, 4, 8)
    docs = encode_names(read_names(24), cfg.block_size)
    assert sum(len(d) - 1 for d in docs) > fastops.FUSED_MAX_TOKENS
    return cfg, params, docs, PythonEngine(cfg, TrainConfig(), params.copy()).loss_and_grad(docs)


@pytest.mark.parametrize("isa", ISAS)
def test_blocked_gemm_gradients_match_reference(isa, wide_batch):
    cfg, params, docs, (want_loss, want) = wide_batch
    model, (p, g, m, v) = c_model(cfg, params, isa=isa)
    assert model.loss_and_grad(docs) == pytest.approx(want_loss, rel=1e-12)
    assert_close(g, want, 1e-10)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "generic"])
def test_blocked_gemm_with_fused_adam_matches_the_portable_kernels(isa, wide_batch):
    """Three steps with Adam applied inside the blocked weight-gradient gemm, against reference.h's plain
    loops (which the tests above hold to train.py)."""
    cfg, params, docs, _ = wide_batch
    batches, lrs = [docs[:12], docs[12:], docs[6:18]], [0.01, 0.008, 0.006]
    runs = {}
    for name in (isa, "generic"):
        model, (p, g, m, v) = c_model(cfg, params, isa=name)
        runs[name] = model.train_steps(batches, lrs), p
    assert runs[isa][0] == pytest.approx(runs["generic"][0], rel=1e-12)
    assert_close(runs[isa][1], runs["generic"][1], 1e-9)   # the project's bound for float64 parameters after steps


@pytest.mark.parametrize("isa", ISAS)
def test_200_steps_match_reference(isa, small, small_curve):
    cfg, params, _ = small
    tcfg, batches, lrs, want = small_curve
    model, _ = c_model(cfg, params, tcfg, isa=isa)
    got = model.train_steps(batches, lrs)
    assert_close(got, want, 1e-9)
    assert model.step == 200


@pytest.mark.parametrize("isa", ISAS)
def test_one_step_per_call_equals_many_steps_per_call(isa, small, small_curve):
    cfg, params, _ = small
    tcfg, batches, lrs, want = small_curve
    model, _ = c_model(cfg, params, tcfg, isa=isa)
    got = [model.train_steps([b], [lr])[0] for b, lr in zip(batches[:50], lrs[:50])]
    many, _ = c_model(cfg, params, tcfg, isa=isa)
    assert got == many.train_steps(batches[:50], lrs[:50])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_loss_and_grad_then_apply_adam_is_train_steps(isa, grad_clip, small):
    """The two halves of a step (what data-parallel training runs, with an all-reduce between them) give
    the fused step's numbers bit for bit, clipping on (the step-1 norm is above 0.5) or off."""
    cfg, params, docs = small
    tcfg = TrainConfig(grad_clip=grad_clip)
    batches, lrs = [docs[i:i + 4] for i in range(0, 40, 4)], [0.01 * (1 - s / 10) for s in range(10)]
    fused, fused_bufs = c_model(cfg, params, tcfg, isa=isa)
    split, split_bufs = c_model(cfg, params, tcfg, isa=isa)
    want = fused.train_steps(batches, lrs)
    got = []
    for b, lr in zip(batches, lrs):
        got.append(split.loss_and_grad(b))
        assert split.apply_adam(lr) is None
    assert got == want and split.step == fused.step == 10
    for i, name in ((0, "params"), (2, "m"), (3, "v")):
        assert split_bufs[i].tobytes() == fused_bufs[i].tobytes(), f"{name} differ"


def test_apply_adam_rejects_bad_learning_rates(tiny):
    cfg, params = tiny
    model, (p, g, m, v) = c_model(cfg, params)
    before = p.tobytes()
    with pytest.raises(ValueError, match="not finite"):
        model.apply_adam(float("nan"))
    with pytest.raises(TypeError):
        model.apply_adam("fast")
    assert p.tobytes() == before and model.step == 0, "a rejected call must not train"


@pytest.mark.parametrize("isa", ISAS)
def test_20_steps_medium_match_reference(isa, medium):
    cfg, params, docs = medium
    tcfg = TrainConfig(num_steps=20).validate()
    batches, lrs = [[d] for d in docs[:20]], [0.01 * (1 - s / 20) for s in range(20)]
    want = reference_run(cfg, tcfg, params, batches, lrs)
    model, _ = c_model(cfg, params, tcfg, isa=isa)
    assert_close(model.train_steps(batches, lrs), want, 1e-9)


@pytest.mark.parametrize("isa", ISAS)
def test_batched_steps_with_clipping_match_reference(isa, small):
    cfg, params, docs = small
    tcfg = TrainConfig(num_steps=10, batch_size=4, grad_clip=0.5, warmup_steps=2).validate()
    batches = [docs[4 * s:4 * s + 4] for s in range(10)]
    lrs = [0.02] * 10
    want_ref = PythonEngine(cfg, tcfg, params.copy())
    want = [want_ref.train_step(b, lr) for b, lr in zip(batches, lrs)]
    model, (p, g, m, v) = c_model(cfg, params, tcfg, isa=isa)
    assert_close(model.train_steps(batches, lrs), want, 1e-9)
    state = want_ref.export_adam()
    assert_close(p, want_ref.export_params().data, 1e-9)
    assert_close(m, state.m, 1e-9)
    assert_close(v, state.v, 1e-9)


@pytest.mark.parametrize("isa", ISAS)
def test_eval_loss_and_logits_match_reference(isa, small):
    cfg, params, docs = small
    ref = PythonEngine(cfg, TrainConfig(), params.copy())
    model, _ = c_model(cfg, params, isa=isa)
    assert model.eval_loss(docs[:150]) == pytest.approx(ref.eval_loss(docs[:150]), rel=1e-12)
    for tokens in ([26], docs[3][:5], docs[7][:cfg.block_size]):
        assert_close(model.logits(tokens), ref.logits(tokens), 1e-12)


# ---- float32 ----

@pytest.mark.parametrize("isa", ISAS)
def test_float32_follows_the_reference_curve(isa, small, small_curve):
    cfg, params, _ = small
    tcfg, batches, lrs, want = small_curve
    model, (p, g, m, v) = c_model(cfg, params, tcfg, dtype="f", isa=isa)
    assert model.dtype == "float32"
    assert_close(model.train_steps(batches, lrs), want, 1e-4)


# ---- threads ----

@pytest.mark.parametrize("dtype", ["d", "f"])
def test_threads_give_identical_results(dtype, medium):
    cfg, params, docs = medium
    tcfg = TrainConfig(num_steps=5, batch_size=16).validate()
    batches, lrs = [docs[16 * s:16 * s + 16] for s in range(5)], [0.01] * 5
    results = []
    for threads in (1, 2, 3):
        model, (p, g, m, v) = c_model(cfg, params, tcfg, dtype=dtype, threads=threads)
        assert model.threads == threads
        results.append((model.train_steps(batches, lrs), p.tobytes(), m.tobytes(), v.tobytes()))
    assert results[0] == results[1] == results[2]


@pytest.fixture(scope="module")
def odd_width():
    """Width 92: no multiple of either dtype's vector; big enough (parameters x tokens) that batches of 4
    use the thread pool."""
    cfg, params = make_setup(92, 1, 4, 16)
    docs = encode_names(read_names(100), cfg.block_size)
    return cfg, params, docs, functools.cache(lambda batch_size: reference_run(
        cfg, TrainConfig(num_steps=3, batch_size=batch_size).validate(), params, *odd_width_steps(docs, batch_size)))


def odd_width_steps(docs, batch_size):
    return [docs[batch_size * s:batch_size * (s + 1)] for s in range(3)], [0.02] * 3


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch_size", [1, 4, 12])
def test_threads_and_fused_backward_match_reference(isa, batch_size, odd_width):
    """Up to FUSED_MAX_TOKENS tokens take the fused backward pass (one walk down each W; threads split its
    columns); more take the blocked products. Every thread count gives the same bits, equal to train.py.
    One document stays on the calling thread (too little work to share); 4 and 12 use the pool."""
    cfg, params, docs, want = odd_width
    batches, lrs = odd_width_steps(docs, batch_size)
    tokens = [sum(len(d) - 1 for d in b) for b in batches]
    assert (max(tokens) <= fastops.FUSED_MAX_TOKENS) == (batch_size < 12)
    results = []
    for threads in (1, 2, 3):
        model, (p, g, m, v) = c_model(cfg, params, TrainConfig(), isa=isa, threads=threads)
        losses = model.train_steps(batches, lrs)
        assert_close(losses, want(batch_size), 1e-9)
        results.append((losses, p.tobytes(), m.tobytes(), v.tobytes()))
    assert results[0] == results[1] == results[2]


# ---- bad arguments: one clear exception, never a crash ----

@pytest.fixture
def tiny():
    cfg, params = make_setup(16, 1, 4, 8)
    return cfg, params


def test_constructor_rejects_bad_buffers(tiny):
    cfg, params = tiny
    n = len(params)
    good = [array("d", params.data)] + [array("d", bytes(8 * n)) for _ in range(3)]
    dims = (27, 16, 1, 4, 8)
    with pytest.raises(ValueError, match="params holds 10 values"):
        fastops.GPT(array("d", bytes(80)), *good[1:], *dims)
    with pytest.raises(ValueError, match="grads holds"):
        fastops.GPT(good[0], array("d", bytes(8 * (n + 1))), *good[2:], *dims)
    with pytest.raises(TypeError, match="float64 .* or float32"):
        fastops.GPT(array("i", bytes(4 * n)), *good[1:], *dims)
    with pytest.raises(TypeError, match="v is float32 but params is float64"):
        fastops.GPT(*good[:3], array("f", bytes(4 * n)), *dims)
    with pytest.raises(TypeError, match="writable contiguous buffer"):
        fastops.GPT(bytes(8 * n), *good[1:], *dims)
    with pytest.raises(TypeError, match="writable contiguous buffer"):
        fastops.GPT([0.0] * n, *good[1:], *dims)
    with pytest.raises(ValueError, match="grads and m overlap"):
        fastops.GPT(good[0], good[1], good[1], good[3], *dims)


def test_constructor_rejects_non_contiguous_numpy(tiny):
    np = pytest.importorskip("numpy")
    cfg, params = tiny
    n = len(params)
    strided = np.zeros(2 * n)[::2]
    with pytest.raises(TypeError, match="contiguous"):
        fastops.GPT(strided, *[np.zeros(n) for _ in range(3)], 27, 16, 1, 4, 8)
    # contiguous numpy arrays are fine, and shared without a copy
    bufs = [np.array(params.data)] + [np.zeros(n) for _ in range(3)]
    model = fastops.GPT(*bufs, 27, 16, 1, 4, 8)
    model.loss_and_grad([[26, 0, 26]])
    assert np.abs(bufs[1]).sum() > 0


@pytest.mark.parametrize("kw, message", [
    ({"vocab_size": 1}, "vocab_size must be in"), ({"n_embd": 0}, "n_embd must be in"),
    ({"n_head": 3}, "n_head must divide n_embd"), ({"block_size": -1}, "block_size must be in"),
    ({"mlp_act": "gelu"}, "mlp_act must be"), ({"beta1": 1.0}, "beta1"), ({"eps": 0.0}, "eps > 0"),
    ({"grad_clip": float("nan")}, "grad_clip"), ({"threads": 0}, "threads must be in"),
    ({"isa": "sse9"}, "isa 'sse9' is not available"),
])
def test_constructor_rejects_bad_config(tiny, kw, message):
    cfg, params = tiny
    n = len(params)
    args = dict(vocab_size=27, n_embd=16, n_layer=1, n_head=4, block_size=8)
    args.update(kw)
    bufs = [array("d", params.data)] + [array("d", bytes(8 * n)) for _ in range(3)]
    with pytest.raises(ValueError, match=message):
        fastops.GPT(*bufs, **args)


@pytest.mark.parametrize("docs, error, message", [
    ([], ValueError, "a batch needs 1 to"),
    ([[26]], ValueError, "document 0 has 1 token ids; each needs 2 to block_size \\+ 1 = 9"),
    ([[26, 1, 26], [26] + [1] * 8 + [26]], ValueError, "document 1 has 10 token ids"),
    ([[26, 27, 26]], ValueError, "document 0, token 1: id 27 is out of range for vocab_size 27"),
    ([[26, -1, 26]], ValueError, "id -1 is out of range"),
    ([[26, 2 ** 70, 26]], ValueError, "is out of range"),
    ([[26, 1.0, 26]], TypeError, "token ids must be integers, not float"),
    ([[26, "a", 26]], TypeError, "token ids must be integers, not str"),
    (["abc"], TypeError, "document 0 must be a list of token ids, not str"),
    ([5], TypeError, "document 0 must be a list of token ids, not int"),
    (5, TypeError, "docs must be a list of documents"),
])
def test_every_entry_point_rejects_bad_documents(tiny, docs, error, message):
    cfg, params = tiny
    model, (p, g, m, v) = c_model(cfg, params)
    before = p.tobytes()
    with pytest.raises(error, match=message):
        model.loss_and_grad(docs)
    with pytest.raises(error, match=message):
        model.eval_loss(docs)
    with pytest.raises(error, match="batch 1: .*" + message):
        model.train_steps([[[26, 1, 26]], docs], [0.01, 0.01])
    assert p.tobytes() == before and model.step == 0, "a rejected call must not train"


def test_train_steps_rejects_bad_arguments(tiny):
    cfg, params = tiny
    model, _ = c_model(cfg, params)
    with pytest.raises(ValueError, match="got 1 batches but 2 learning rates"):
        model.train_steps([[[26, 1, 26]]], [0.1, 0.1])
    with pytest.raises(ValueError, match="learning rate 0 is not finite"):
        model.train_steps([[[26, 1, 26]]], [float("inf")])
    with pytest.raises(TypeError):
        model.train_steps([[[26, 1, 26]]], ["fast"])
    with pytest.raises(TypeError, match="lrs must be a list"):
        model.train_steps([[[26, 1, 26]]], 0.1)
    assert model.train_steps([], []) == []


def test_logits_rejects_bad_tokens(tiny):
    cfg, params = tiny
    model, _ = c_model(cfg, params)
    with pytest.raises(ValueError, match="1 to block_size = 8 token ids, got 0"):
        model.logits([])
    with pytest.raises(ValueError, match="got 9"):
        model.logits([26] * 9)
    with pytest.raises(ValueError, match="id 99 is out of range"):
        model.logits([26, 99])
    with pytest.raises(TypeError, match="token ids must be integers"):
        model.logits([26, None])
    with pytest.raises(TypeError, match="tokens must be a list"):
        model.logits(26)
    assert len(model.logits([26, 1])) == 27


def vm_flags_at(address):
    """The VmFlags of the mapping of this process (Linux /proc/self/smaps) that holds address."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="transparent huge pages are a Linux feature; elsewhere the engine asks for none")
def test_constructor_asks_for_huge_pages_under_the_buffers():
    """Each flat buffer's whole 2 MiB pages are advised MADV_HUGEPAGE (the 'hg' flag of their mapping): at
    medium the weights and moments are 6.4 MB each, more than the TLB maps in 4 KiB pages."""
    cfg, params = make_setup(128, 4, 4, 32)
    model, bufs = c_model(cfg, params)
    for b in bufs:
        address, n = b.buffer_info()
        assert "hg" in vm_flags_at(address + n * b.itemsize // 2)
    model.train_steps([[[26, 1, 2, 26]]], [0.01])   # and the engine trains on them as before
    assert model.step == 1


def buffer_address(buf):
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


@pytest.mark.parametrize("code", ["d", "f"])
def test_flat_buffers_start_on_a_huge_page_when_they_fill_one(code):
    """flat_buffer: zeros of the dtype, writable, and from 2 MiB up on a 2 MiB boundary (where malloc's
    arrays start 16 bytes past a 4 KiB page, leaving a third of a medium buffer on small pages)."""
    n = HUGE_PAGE // array(code).itemsize + 1000
    big = flat_buffer(code, n)
    assert len(big) == n and memoryview(big).format == code and not any(big)
    assert buffer_address(big) % HUGE_PAGE == 0
    big[:] = array(code, range(n))
    assert big[n - 1] == n - 1 and array("d", big)[-2] == n - 2
    if Path("/sys/kernel/mm/transparent_hugepage").exists():
        assert "hg" in vm_flags_at(buffer_address(big) + n * array(code).itemsize - 1)   # its tail's page too
    small_buf = flat_buffer(code, 100)   # under one huge page: a plain array, no 2 MiB of slack
    assert isinstance(small_buf, array) and small_buf.typecode == code and not any(small_buf)


def test_the_engine_trains_the_same_on_aligned_buffers_as_on_arrays():
    """FastEngine's 2 MiB-aligned buffers (medium: 6.4 MB each) give the bits of fastops.GPT on arrays."""
    from train_fast import FastEngine
    cfg, params = make_setup(128, 4, 4, 32)
    docs = encode_names(read_names(40), cfg.block_size)
    engine = FastEngine(cfg, TrainConfig(), params.copy())
    assert all(buffer_address(b) % HUGE_PAGE == 0 for b in (engine.params, engine.grads, engine.m, engine.v))
    model, bufs = c_model(cfg, params)
    batches = [docs[:16], docs[16:40]]
    assert engine.train_steps(batches, [0.01, 0.009]) == model.train_steps(batches, [0.01, 0.009])
    assert array("d", engine.params) == bufs[0] and array("d", engine.v) == bufs[3]
    assert engine.export_adam().m == bufs[2]


def test_step_is_adams_update_count(tiny):
    cfg, params = tiny
    model, _ = c_model(cfg, params)
    model.train_steps([[[26, 1, 26]]] * 3, [0.01] * 3)
    assert model.step == 3
    model.step = 10
    assert model.step == 10
    with pytest.raises(ValueError, match="step must be >= 0"):
        model.step = -1
    with pytest.raises(TypeError, match="step must be an integer"):
        model.step = 1.5

"""fastops.InferenceGPT: token-by-token inference with float32 or per-row int8 weights, and train_fast.py --int8."""

import random
import sys
from array import array

import pytest

from conftest import encode_names, make_setup, read_names, run_cli
from microgpt import checkpoint
from microgpt.config import SampleConfig, TrainConfig
from microgpt.sampling import sample
from microgpt.tokenizers import tokenizer_from_dict
from microgpt.trainer import build_parser, main
from train import PythonEngine

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
from train_fast import FastEngine, int8_sampler  # noqa: E402

ISAS = ["generic"] + (["avx512"] if "avx512" in fastops.available_isas() else [])


@pytest.fixture(scope="module")
def trained():
    """A (32,2,8) model after 300 steps, so that the weights are not the initial Gaussians."""
    cfg, params = make_setup(32, 2, 4, 8)
    docs = encode_names(read_names(1500), cfg.block_size)
    engine = FastEngine(cfg, TrainConfig(num_steps=300).validate(), params)
    engine.train_steps([docs[2 * s:2 * s + 2] for s in range(300)], [0.01] * 300)
    return cfg, engine, docs[1000:1200]


def infer(cfg, params, **kw):
    return fastops.InferenceGPT(params, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size,
                                mlp_act=cfg.mlp_act, **kw)


@pytest.mark.parametrize("isa", ISAS)
def test_float32_inference_matches_the_trainer(isa, trained):
    cfg, engine, val = trained
    model = infer(cfg, engine.export_params().data, int8=False, isa=isa)
    assert not model.int8 and model.isa == isa
    for doc in val[:20]:
        assert model.logits(doc[:-1]) == pytest.approx(engine.logits(doc[:-1]), rel=1e-4, abs=1e-5)
    assert model.eval_loss(val) == pytest.approx(engine.eval_loss(val), rel=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_is_close_to_float32_and_smaller(isa, trained):
    cfg, engine, val = trained
    params = engine.export_params().data
    fp32, int8 = infer(cfg, params, int8=False), infer(cfg, params, isa=isa)
    assert int8.int8
    assert int8.weight_bytes < fp32.weight_bytes / 2.5
    assert abs(int8.eval_loss(val) - fp32.eval_loss(val)) < 0.02
    for doc in val[:20]:
        a, b = int8.logits(doc[:-1]), fp32.logits(doc[:-1])
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.1 * max(abs(y) for y in b)


def test_int8_kernels_agree_across_instruction_sets(trained):
    cfg, engine, val = trained
    params = engine.export_params().data
    models = [infer(cfg, params, isa=isa) for isa in ISAS]
    for doc in val[:10]:
        results = [m.logits(doc[:-1]) for m in models]
        assert all(r == pytest.approx(results[0], rel=1e-6, abs=1e-6) for r in results)


def test_kv_cache_reuse_gives_the_same_logits_as_a_fresh_model(trained):
    cfg, engine, _ = trained
    params = engine.export_params().data
    rng = random.Random(0)
    warm = infer(cfg, params)
    for _ in range(30):
        tokens = [26] + [rng.randrange(26) for _ in range(rng.randrange(cfg.block_size))]
        assert warm.logits(tokens) == infer(cfg, params).logits(tokens)


def test_untrained_model_with_zero_rows():
    """attn_wo and mlp_fc2 start at zero: all-zero rows and all-zero inputs must not divide by zero."""
    cfg, params = make_setup(16, 1, 4, 8)
    ref = PythonEngine(cfg, TrainConfig(), params.copy())
    model = infer(cfg, params.data)
    assert model.logits([26, 3, 4]) == pytest.approx(ref.logits([26, 3, 4]), abs=2e-3)


def test_bad_arguments():
    cfg, params = make_setup(16, 1, 4, 8)
    dims = (27, 16, 1, 4, 8)
    with pytest.raises(ValueError, match="params holds 3 values"):
        fastops.InferenceGPT(array("d", [0.0] * 3), *dims)
    with pytest.raises(TypeError, match="float64 .* or float32"):
        fastops.InferenceGPT(array("i", [0] * len(params)), *dims)
    with pytest.raises(TypeError, match="contiguous buffer of float64 or float32"):
        fastops.InferenceGPT([0.0] * len(params), *dims)
    with pytest.raises(ValueError, match="n_head must divide n_embd"):
        fastops.InferenceGPT(params.data, 27, 16, 1, 3, 8)
    with pytest.raises(ValueError, match="block_size must be in"):
        fastops.InferenceGPT(params.data, 27, 16, 1, 4, 0)
    with pytest.raises(ValueError, match="isa must be"):
        fastops.InferenceGPT(params.data, *dims, isa="neon")
    model = fastops.InferenceGPT(params.data, *dims)
    with pytest.raises(ValueError, match="1 to block_size = 8 token ids, got 9"):
        model.logits([26] * 9)
    with pytest.raises(ValueError, match="got 0"):
        model.logits([])
    with pytest.raises(ValueError, match="id 27 is out of range"):
        model.logits([26, 27])
    with pytest.raises(TypeError, match="token ids must be integers"):
        model.logits([26, "a"])
    with pytest.raises(ValueError, match="document 1 has 1 token ids"):
        model.eval_loss([[26, 1, 26], [26]])
    with pytest.raises(ValueError, match="id 30 is out of range"):
        model.eval_loss([[26, 1, 30]])
    with pytest.raises(ValueError, match="at least one document"):
        model.eval_loss([])
    assert len(model.logits([26, 1])) == 27


# ----------------------------------------------------------------------------------------------------
# train_fast.py --int8: the trainer's samples drawn through InferenceGPT


TINY = ["--n-embd", "16", "--n-head", "4", "--block-size", "8", "--eval-every", "0"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """train_fast.py trains 60 steps, saves, and samples 20 names with --int8: (checkpoint, names file, stdout)."""
    tmp = tmp_path_factory.mktemp("int8_cli")
    names, ckpt = tmp / "names.txt", tmp / "run.ckpt"
    names.write_text("\n".join(read_names(300)) + "\n")
    r = run_cli("--data", names, "--num-steps", "60", *TINY, "--save", ckpt, "--int8", script="train_fast.py")
    assert r.returncode == 0, r.stderr
    return ckpt, names, r.stdout


def samples(ckpt_path, int8: bool, **sample_kw) -> list[str]:
    """The shared sampler on a checkpoint, called directly: InferenceGPT in int8, or the float64 engine."""
    ckpt = checkpoint.load(ckpt_path)
    model = infer(ckpt.model, ckpt.params.data) if int8 else FastEngine(ckpt.model, ckpt.train, ckpt.params)
    return sample(model.logits, tokenizer_from_dict(ckpt.tokenizer), ckpt.model.block_size,
                  SampleConfig(**sample_kw).validate())


def size_line(ckpt_path) -> str:
    """The line --int8 should print, from the numbers InferenceGPT reports in int8 and in float32."""
    ckpt = checkpoint.load(ckpt_path)
    int8, fp32 = infer(ckpt.model, ckpt.params.data), infer(ckpt.model, ckpt.params.data, int8=False)
    kernel = {"avx512": "avx512-vnni", "generic": "generic"}[int8.isa]
    return (f"int8 weights ({kernel}): {int8.weight_bytes:,} bytes, "
            f"{fp32.weight_bytes / int8.weight_bytes:.2f}x smaller than float32")


def test_int8_flag_trains_then_samples_with_int8_weights(cli_run):
    ckpt, _, out = cli_run
    lines = out.splitlines()
    at = lines.index("samples:")
    assert lines[at - 1] == size_line(ckpt)
    names = [s.strip() for s in lines[at + 1:]]
    assert len(names) == 20 and names == samples(ckpt, int8=True)
    assert names != samples(ckpt, int8=False), "int8 rounding moves some of the draws"


def test_int8_flag_samples_from_a_checkpoint(cli_run):
    ckpt, _, _ = cli_run
    flags = ["--sample-from", ckpt, "--int8", "--num-samples", "20", "--temperature", "0.8", "--top-k", "10",
             "--top-p", "0.95", "--prompt", "ma"]
    first = run_cli(*flags, "--sample-seed", "7", script="train_fast.py")
    assert first.returncode == 0, first.stderr
    line, *names = first.stdout.splitlines()
    assert line == size_line(ckpt)
    settings = {"num_samples": 20, "temperature": 0.8, "top_k": 10, "top_p": 0.95, "prompt": "ma", "seed": 7}
    assert names == samples(ckpt, int8=True, **settings)
    assert names != samples(ckpt, int8=False, **settings), "int8 rounding moves some of the draws"
    assert all(name.startswith("ma") for name in names)
    again = run_cli(*flags, "--sample-seed", "7", script="train_fast.py")
    assert again.stdout == first.stdout, "same seed, same samples"
    other = run_cli(*flags, "--sample-seed", "8", script="train_fast.py")
    assert other.returncode == 0 and other.stdout.splitlines()[1:] != names


def test_int8_flag_is_train_fast_only():
    assert "--int8" in build_parser("", "c", int8=True).format_help()
    assert "--int8" not in build_parser("", "python").format_help()
    r = run_cli("--int8")   # train.py, as a user runs it
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: --int8 is a flag of train_fast.py, whose C extension samples with int8 weights: "
                        "python train_fast.py ... --int8\n")


def test_int8_flag_errors_are_one_line_and_come_before_training(cli_run, capsys, monkeypatch):
    ckpt, names, _ = cli_run

    def error(*args) -> str:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args], default_engine="c", description="", int8_sampler=int8_sampler)
        out, err = capsys.readouterr()
        assert exit_.value.code == 2 and out == "", args   # nothing trained, nothing sampled
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
        return lines[0]

    assert "--num-samples 0 asks for none" in error("--sample-from", ckpt, "--int8", "--num-samples", "0")
    assert "--num-samples 0 asks for none" in error("--data", names, *TINY, "--int8", "--num-samples", "0")
    # a block size InferenceGPT cannot hold (train.py's engine could train it): refused before step 1
    assert error("--data", names, "--engine", "python", "--block-size", "70000", "--int8") == (
        "error: --int8: fastops.InferenceGPT cannot run this model (block_size must be in [1, 65536], got 70000)")
    monkeypatch.setitem(sys.modules, "fastops", None)   # a checkout where the extension was never built
    assert "the C extension fastops is not built" in error("--sample-from", ckpt, "--int8")

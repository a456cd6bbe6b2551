"""fastops.InferenceGPT: token-by-token inference with float32 or per-row int8 weights, and train_fast.py --int8."""

import platform
import random
import shutil
import subprocess
import sys
from array import array

import pytest

from conftest import REPO, encode_names, make_setup, read_names, run_cli
from microgpt import checkpoint
from microgpt.config import SampleConfig, TrainConfig
from microgpt.sampling import sample
from microgpt.tokenizers import tokenizer_from_dict
import engines
from microgpt.trainer import build_parser, main
from train import PythonEngine

fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
from train_fast import FastEngine, int8_sampler  # noqa: E402

#: instruction sets InferenceGPT runs here, best first (its own lists: the int8 kernel of avx512 needs VNNI,
#: and avx2-vnni, AVX-VNNI, is an int8 kernel of its own)
INT8_ISAS = fastops.InferenceGPT.available_isas()
F32_ISAS = fastops.InferenceGPT.available_isas(int8=False)


def kernels(isa: str) -> tuple[str, ...]:
    """What model.isa may say for int8 weights and isa=isa: the AVX-512 kernel is VNNI, NEON's uses the
    dot-product instructions where the build targets them; the others are named after their isa."""
    return {"avx512": ("avx512-vnni",), "neon": ("neon", "neon-dotprod")}.get(isa, (isa,))


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


@pytest.mark.parametrize("isa", F32_ISAS)
def test_float32_inference_matches_the_trainer(isa, trained):
    cfg, engine, val = trained
    model = infer(cfg, engine.export_params().data, int8=False, isa=isa)
    assert not model.int8 and model.isa == isa
    for doc in val[:20]:
        assert model.logits(doc[:-1]) == pytest.approx(engine.logits(doc[:-1]), rel=1e-4, abs=1e-5)
    assert model.eval_loss(val) == pytest.approx(engine.eval_loss(val), rel=1e-5)


@pytest.mark.parametrize("isa", INT8_ISAS)
def test_int8_is_close_to_float32_and_smaller(isa, trained):
    cfg, engine, val = trained
    params = engine.export_params().data
    fp32, int8 = infer(cfg, params, int8=False), infer(cfg, params, isa=isa)
    assert int8.int8 and int8.isa in kernels(isa)
    assert int8.weight_bytes < fp32.weight_bytes / 2.5
    assert abs(int8.eval_loss(val) - fp32.eval_loss(val)) < 0.02
    for doc in val[:20]:
        a, b = int8.logits(doc[:-1]), fp32.logits(doc[:-1])
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.1 * max(abs(y) for y in b)


def test_int8_kernels_agree_across_instruction_sets(trained):
    """The dot products are exact int32 on every instruction set and the rest is the same float code."""
    cfg, engine, val = trained
    params = engine.export_params().data
    models = [infer(cfg, params, isa=isa) for isa in INT8_ISAS]
    for doc in val[:10]:
        results = [m.logits(doc[:-1]) for m in models]
        assert all(r == results[0] for r in results), [m.isa for m in models]
    losses = [m.eval_loss(val[:50]) for m in models]
    assert losses == [losses[0]] * len(losses)


def test_float32_kernels_agree_across_instruction_sets(trained):
    """The vector kernels all run one FMA chain per row in column order; the generic one rounds each product."""
    cfg, engine, val = trained
    params = engine.export_params().data
    models = [infer(cfg, params, int8=False, isa=isa) for isa in F32_ISAS]
    for doc in val[:10]:
        results = [m.logits(doc[:-1]) for m in models]
        vector = [r for m, r in zip(models, results) if m.isa != "generic"]
        assert all(r == vector[0] for r in vector)
        assert all(r == pytest.approx(results[-1], rel=1e-5, abs=1e-5) for r in results)


def random_model(n_embd, n_head, seed, signs=False):
    """Every parameter random (attn_wo and mlp_fc2 too): Gaussian, or +-1 so that every int8 weight is +-127."""
    cfg, params = make_setup(n_embd, 2, n_head, 8, seed=seed)
    rng = random.Random(seed)
    for i in range(len(params.data)):
        params.data[i] = rng.choice((-1.0, 1.0)) if signs else rng.gauss(0.0, 0.3)
    return cfg, params


# (18, 3): 18 columns are 4 groups of 4 and 2 of padding, 54 rows 3 blocks of 16 and 6 more; (60, 4): fc1's
# 240 rows are 15 blocks, which the vector kernels take in passes of 8, 4, 2 and 1
@pytest.mark.parametrize("n_embd, n_head", [(18, 3), (60, 4)])
def test_odd_shapes_on_every_instruction_set(n_embd, n_head):
    cfg, params = random_model(n_embd, n_head, seed=n_embd)
    ref = PythonEngine(cfg, TrainConfig(), params.copy())
    rng = random.Random(1)
    docs = [[26] + [rng.randrange(26) for _ in range(cfg.block_size - 1)] for _ in range(4)]
    int8 = [infer(cfg, params.data, isa=isa) for isa in INT8_ISAS]
    for isa in F32_ISAS:
        model = infer(cfg, params.data, int8=False, isa=isa)
        for doc in docs:
            for n in (1, 3, len(doc)):
                expected = ref.logits(doc[:n])   # float64; logits reach +-50, float32 errs relative to that
                assert model.logits(doc[:n]) == pytest.approx(expected, abs=1e-5 * max(map(abs, expected))), isa
    for doc in docs:
        for n in (1, 3, len(doc)):
            results = [m.logits(doc[:n]) for m in int8]
            assert all(r == results[0] for r in results), [m.isa for m in int8]
            expected = ref.logits(doc[:n])
            assert max(abs(a - b) for a, b in zip(results[0], expected)) < 0.1 * max(map(abs, expected))


def test_int8_sums_do_not_saturate():
    """Weights of +-1 quantise to +-127: with x_q + 128 as vpmaddubsw's unsigned operand a pair of products
    would reach 2 * 255 * 127 > 32767 and saturate; the kernels without VNNI must still agree exactly."""
    cfg, params = random_model(20, 4, seed=3, signs=True)
    models = [infer(cfg, params.data, isa=isa) for isa in INT8_ISAS]
    rng = random.Random(2)
    for _ in range(5):
        doc = [26] + [rng.randrange(26) for _ in range(cfg.block_size - 1)]
        results = [m.logits(doc) for m in models]
        assert all(r == results[0] for r in results), [m.isa for m in models]


# ----------------------------------------------------------------------------------------------------
# The kernels alone, in C: every int8 and float32 kernel the CPU runs against the generic ones on random
# matrices of many shapes -- here, and for AArch64 (NEON, with and without the dot-product instructions)
# under qemu where a cross compiler and qemu-user are installed (.ci/run installs them).

HARNESS = r"""
#include <stdio.h>
#define FASTOPS_INT8_KERNELS_ONLY
#include "fastops/instances.h"
#include "fastops/int8.h"

static unsigned long long state = 88172645463325252ull;
static double rnd(void)   /* uniform in [-1, 1) */
{
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0 * 2 - 1;
}

int main(void)
{
    int checks = 0, fails = 0;
    for (int i = 0; i < N_INFER_ISAS; i++)
        for (int int8 = 0; int8 < 2; int8++)
            if (infer_isa_runs(&INFER_ISAS[i], int8))
                printf("%s ", int8 ? INFER_ISAS[i].i8_name : INFER_ISAS[i].isa);
    printf("\n");
    for (int rows = 1; rows <= 300; rows += rows < 40 ? 1 : 37)
        for (int cols = 1; cols <= 520; cols += cols < 24 ? 1 : 61)
            for (int mode = 0; mode < 2; mode++) {   /* mode 1: weights +-1, every q = +-127 (saturation) */
                double *w = malloc(sizeof(double) * rows * cols);
                float *x = malloc(sizeof(float) * cols), *y0 = malloc(sizeof(float) * (rows + 1));
                float *y = malloc(sizeof(float) * (rows + 1));
                uint8_t *bytes = calloc(3 * ((size_t)cols + 4), 1);
                const QuantInput xq = {(int8_t *)bytes, bytes + cols + 4, bytes + 2 * (cols + 4)};
                for (int k = 0; k < rows * cols; k++) w[k] = mode ? (rnd() > 0 ? 1 : -1) : rnd() * rnd();
                for (int c = 0; c < cols; c++) x[c] = (float)(mode ? (rnd() > 0 ? 3 : -3) : 5 * rnd());
                if (cols > 3) x[cols / 2] = 0;
                for (int int8 = 0; int8 < 2; int8++) {
                    PackedMatrix pm;
                    if (pack_matrix(&pm, w, 0, 0, rows, cols, int8) < 0) return 3;
                    y0[rows] = 12345.0f;
                    (int8 ? matvec_i8_generic : matvec_f32_generic)(&pm, x, y0, &xq);
                    double scale = 0;
                    for (int r = 0; r < rows; r++) scale = fabs(y0[r]) > scale ? fabs(y0[r]) : scale;
                    for (int i = 0; i < N_INFER_ISAS; i++) {
                        const InferIsa *k = &INFER_ISAS[i];
                        if (!infer_isa_runs(k, int8)) continue;
                        y[rows] = 12345.0f;   /* the row after the last must stay untouched */
                        (int8 ? k->i8 : k->f32)(&pm, x, y, &xq);
                        checks++;
                        int bad = y[rows] != 12345.0f;
                        for (int r = 0; r < rows; r++)   /* int8: the same bits; float32: rounding */
                            bad |= int8 ? memcmp(&y[r], &y0[r], 4) != 0 : fabs(y[r] - y0[r]) > 1e-5 * scale;
                        if (bad && fails++ < 10)
                            printf("%s %s: %d x %d (weights %s) differs from generic\n", int8 ? k->i8_name : k->isa,
                                   int8 ? "int8" : "float32", rows, cols, mode ? "+-1" : "random");
                    }
                    free_matrix(&pm);
                }
                free(w); free(x); free(y0); free(y); free(bytes);
            }
    printf("%d checks, %d failures\n", checks, fails);
    return fails != 0;
}
"""


@pytest.mark.parametrize("target", ["native", "aarch64", "aarch64+dotprod"])
def test_kernels_on_random_matrices(target, tmp_path):
    """Each kernel against the generic one: int8 the same bits, float32 within 1e-5 of the largest output."""
    if target == "native":
        cc, flags, run = "gcc", [], []
    else:
        if platform.machine() == "aarch64":
            pytest.skip("the native case covers NEON here")
        cc, run = "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-cpu", "max"]
        flags = ["-static"] + (["-march=armv8.2-a+dotprod"] if target.endswith("dotprod") else [])
        if not (shutil.which(cc) and shutil.which(run[0])):
            pytest.skip(f"needs {cc} and {run[0]} (Debian: gcc-aarch64-linux-gnu, qemu-user)")
    (tmp_path / "check_int8.c").write_text(HARNESS)
    exe = tmp_path / "check_int8"
    build = subprocess.run([cc, "-O1", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
                            "-pthread", *flags, f"-I{REPO}", str(tmp_path / "check_int8.c"), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    result = subprocess.run([*run, str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    kernels, summary = result.stdout.splitlines()[0].split(), result.stdout.splitlines()[-1]
    assert summary.endswith(" 0 failures") and not summary.startswith("0 checks"), result.stdout
    if target == "native":   # float32 then int8 of each instruction set, as InferenceGPT lists them
        assert len(kernels) == len(F32_ISAS) + len(INT8_ISAS) and set(F32_ISAS) <= set(kernels)
    else:
        assert kernels == ["neon", "neon-dotprod" if target.endswith("dotprod") else "neon", "generic", "generic"]


def test_isa_names():
    cfg, params = make_setup(16, 1, 4, 8)
    assert INT8_ISAS[-1] == F32_ISAS[-1] == "generic"
    assert set(F32_ISAS) <= set(INT8_ISAS) | {"avx512"} and "avx2-vnni" not in F32_ISAS
    best = infer(cfg, params.data)   # None: the best this CPU runs
    assert best.isa in kernels(INT8_ISAS[0]) and infer(cfg, params.data, isa="auto").isa == best.isa
    assert infer(cfg, params.data, int8=False).isa == F32_ISAS[0]
    for isa in INT8_ISAS:   # the kernel's own name is accepted too, so isa=model.isa builds the same kernel
        kernel = infer(cfg, params.data, isa=isa).isa
        assert infer(cfg, params.data, isa=kernel).isa == kernel
    for isa in ("avx512", "avx2-vnni", "avx2", "sse", "neon", "mmx"):
        if isa not in INT8_ISAS:
            with pytest.raises(ValueError, match=f"isa '{isa}' is not available for int8 on this CPU or build "
                                                 r"\(available: " + ", ".join(INT8_ISAS)):
                infer(cfg, params.data, isa=isa)
    with pytest.raises(ValueError, match="isa 'avx2-vnni' is not available for float32"):
        infer(cfg, params.data, int8=False, isa="avx2-vnni")


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
    with pytest.raises(ValueError, match="isa 'mmx' is not available"):
        fastops.InferenceGPT(params.data, *dims, isa="mmx")
    with pytest.raises(ValueError, match="n_embd must be at most 33286 for int8"):
        fastops.InferenceGPT(array("d", [0.0] * 3), 27, 33288, 1, 4, 1)
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
    return (f"int8 weights ({int8.isa}): {int8.weight_bytes:,} bytes, "
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
    # 300 draws: with sampling this sharp, the first 20 were the same names in int8 and float64 for a model
    # trained on the synthetic names of a machine without names.txt (the int8 check below would be blind),
    # and 2-3 of the first 100 differed; of 300, 47 (synthetic names) and 73 (names.txt)
    flags = ["--sample-from", ckpt, "--int8", "--num-samples", "300", "--temperature", "0.8", "--top-k", "10",
             "--top-p", "0.95", "--prompt", "ma"]
    first = run_cli(*flags, "--sample-seed", "7", script="train_fast.py")
    assert first.returncode == 0, first.stderr
    line, *names = first.stdout.splitlines()
    assert line == size_line(ckpt)
    settings = {"num_samples": 300, "temperature": 0.8, "top_k": 10, "top_p": 0.95, "prompt": "ma", "seed": 7}
    assert names == samples(ckpt, int8=True, **settings)
    assert names != samples(ckpt, int8=False, **settings), "int8 rounding moves some of the draws"
    assert all(name.startswith("ma") for name in names)
    again = run_cli(*flags, "--sample-seed", "7", script="train_fast.py")
    assert again.stdout == first.stdout, "same seed, same samples"
    other = run_cli(*flags, "--sample-seed", "8", script="train_fast.py")
    assert other.returncode == 0 and other.stdout.splitlines()[1:] != names


def test_int8_flag_is_train_fast_only():
    assert "--int8" in build_parser("", "c", list(engines.ENGINES), int8=True).format_help()
    assert "--int8" not in build_parser("", "python", list(engines.ENGINES)).format_help()
    r = run_cli("--int8")   # train.py, as a user runs it
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: --int8 is a flag of train_fast.py, whose C extension samples with int8 weights: "
                        "python train_fast.py ... --int8\n")


def test_int8_flag_errors_are_one_line_and_come_before_training(cli_run, capsys, monkeypatch):
    ckpt, names, _ = cli_run

    def error(*args) -> str:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args], engines, default_engine="c", description="", int8_sampler=int8_sampler)
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

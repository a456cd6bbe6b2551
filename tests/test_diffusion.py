"""engines/diffusion.py: masks, a finite-difference gradient check, Python vs PyTorch, learning, sampling and its
quality (microgpt/sample_quality.py), templates, checkpoints, CLI."""

import json
import random
import re
import signal
import subprocess
import sys
from array import array

import pytest

from conftest import REPO, encode_names, read_names, run_cli
from microgpt import UserError, checkpoint
from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import AdamState, init_params
from microgpt.sample_quality import quality_table, sample_quality, total_variation
from microgpt.tokenizers import CharTokenizer

from engines.diffusion import (MaskedDoc, PythonDiffusion, TorchDiffusion, ar_prompt, denoise, draw_masks,
                               elbo_per_draw, main, sample_names, show, template, to_sequence)

BOS, MASK = 26, 27


@pytest.fixture
def torch():
    """The PyTorch tests need the framework (CI installs it; only they skip without it)."""
    return pytest.importorskip("torch")


def names_config(**kw) -> ModelConfig:
    """The char tokenizer's 27 ids plus [MASK]."""
    return ModelConfig(**{"vocab_size": 28, "n_embd": 16, "n_layer": 1, "n_head": 4, "block_size": 8, **kw}).validate()


def assert_close(got, want, rel, floor):
    worst = max((abs(g - w) / max(abs(w), floor), i) for i, (g, w) in enumerate(zip(got, want)))
    assert len(got) == len(want) and worst[0] <= rel, f"element {worst[1]}: {got[worst[1]]} vs {want[worst[1]]}"


def test_sequences_and_mask_draws():
    cfg = names_config()
    assert to_sequence([BOS, 4, 12, 12, 0, BOS], cfg) == [4, 12, 12, 0, BOS, BOS, BOS, BOS]
    assert to_sequence([BOS] + [1] * 8, cfg) == [1] * 8  # a name cut at the block size has no end marker
    with pytest.raises(ValueError, match="token ids must be in"):
        to_sequence([BOS, MASK, BOS], cfg)
    with pytest.raises(ValueError, match="documents must hold 2..9 tokens"):
        to_sequence([BOS], cfg)
    with pytest.raises(ValueError, match="at least one document"):
        draw_masks([], cfg, random.Random(0))

    docs = encode_names(read_names(400), cfg.block_size)
    draws = draw_masks(docs, cfg, random.Random(0))
    assert draws == draw_masks(docs, cfg, random.Random(0)), "seeded draws repeat"
    for doc, d in zip(docs, draws):
        assert d.targets == to_sequence(doc, cfg)
        assert all((tok == MASK) == (i in d.masked) for i, tok in enumerate(d.inputs))
        assert all(d.inputs[i] == d.targets[i] for i in range(cfg.block_size) if i not in d.masked)
        t = 1 / (d.weight * (len(doc) - 1))
        assert 0 < t <= 1
    # t ~ U(0, 1] and P(masked) = t, so half of all positions are masked on average
    fraction = sum(len(d.masked) for d in draws) / (len(draws) * cfg.block_size)
    assert 0.45 < fraction < 0.55


def test_gradient_matches_finite_differences():
    """A tiny 2-layer model (4 letters + BOS + [MASK]), central differences on 12 seeded coordinates of every
    weight matrix (all ~1,700 took 13 s; the PyTorch test below checks every coordinate against autograd)."""
    cfg = ModelConfig(vocab_size=6, n_embd=8, n_layer=2, n_head=2, block_size=4, init_std=0.3,
                      zero_init_proj=False).validate()
    tcfg = TrainConfig(num_steps=1).validate()
    params = init_params(cfg, 3)
    docs = [[4, 0, 1, 2, 4], [4, 3, 4], [4, 1, 1, 3, 0]]
    draws = [MaskedDoc([0, 1, 2, 4], [5, 1, 5, 5], [0, 2, 3], 1 / (0.7 * 4)),
             MaskedDoc([3, 4, 4, 4], [5, 5, 4, 5], [0, 1, 3], 1 / (0.9 * 2)),
             MaskedDoc([1, 1, 3, 0], [1, 5, 3, 0], [1], 1 / (0.5 * 4))]
    loss, grad = PythonDiffusion(cfg, tcfg, params).loss_and_grad(docs, draws)
    h = 1e-5  # central differences: truncation ~h^2, rounding ~1e-16 / h; both well under the tolerance here

    def loss_at(i, delta):
        p = params.copy()
        p.data[i] += delta
        return PythonDiffusion(cfg, tcfg, p).eval_loss(docs, draws)

    rng = random.Random(0)
    coords = sorted(i for t in params.tensors.values() for i in rng.sample(range(t.offset, t.offset + t.size), 12))
    numeric = [(loss_at(i, h) - loss_at(i, -h)) / (2 * h) for i in coords]
    assert loss == pytest.approx(PythonDiffusion(cfg, tcfg, params).eval_loss(docs, draws), rel=1e-15)
    assert max(abs(grad[i]) for i in coords) > 0.1, "a check on vanishing gradients would prove nothing"
    assert_close([grad[i] for i in coords], numeric, rel=1e-6, floor=1e-3)


def test_python_and_torch_agree_on_the_same_mask_draws(torch):
    cfg = names_config(n_layer=2, zero_init_proj=False)
    tcfg = TrainConfig(num_steps=8, batch_size=3, grad_clip=1.0).validate()
    params = init_params(cfg, 7)
    docs = encode_names(read_names(24), cfg.block_size)
    py, th = PythonDiffusion(cfg, tcfg, params.copy()), TorchDiffusion(cfg, tcfg, params.copy())
    draws = draw_masks(docs[:3], cfg, random.Random(1))
    loss, grad = py.loss_and_grad(docs[:3], draws)
    want_loss, want_grad = th.loss_and_grad(docs[:3], draws)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(grad, want_grad, rel=1e-10, floor=1e-6)
    # the same seed gives both engines the same draws, so whole training runs agree
    batches = [docs[3 * s:3 * s + 3] for s in range(8)]
    assert_close([py.train_step(b, 0.01) for b in batches], [th.train_step(b, 0.01) for b in batches],
                 rel=1e-10, floor=1e-12)
    assert_close(py.export_params().data, th.export_params().data, rel=1e-9, floor=1e-6)
    assert py.export_adam().t == th.export_adam().t == 8

    f32 = TorchDiffusion(cfg, tcfg, params.copy(), dtype="float32")
    assert f32.eval_loss(docs[:3], draws) == pytest.approx(want_loss, rel=1e-5)


def test_rng_and_adam_state_resume_exactly(torch):
    cfg = names_config()
    tcfg = TrainConfig(num_steps=6, batch_size=4).validate()
    docs = encode_names(read_names(24), cfg.block_size)
    batches = [docs[4 * s:4 * s + 4] for s in range(6)]
    straight = TorchDiffusion(cfg, tcfg, init_params(cfg, 0))
    want = [straight.train_step(b, 0.01) for b in batches]
    first = TorchDiffusion(cfg, tcfg, init_params(cfg, 0))
    got = [first.train_step(b, 0.01) for b in batches[:3]]
    resumed = TorchDiffusion(cfg, tcfg, first.export_params())
    resumed.import_adam(first.export_adam())
    resumed.import_rng(first.export_rng())
    got += [resumed.train_step(b, 0.01) for b in batches[3:]]
    assert got == want
    assert resumed.export_params().data == straight.export_params().data


@pytest.fixture(scope="module")
def trained():
    """300 PyTorch steps on real names, with the validation ELBO before and after."""
    pytest.importorskip("torch")
    cfg = names_config()
    tcfg = TrainConfig(num_steps=300, batch_size=16, grad_clip=1.0).validate()
    docs = encode_names(read_names(), cfg.block_size)
    random.Random(0).shuffle(docs)  # names.txt runs from common to rare names
    train_docs, val_docs = docs[:4800], docs[-200:]
    engine = TorchDiffusion(cfg, tcfg, init_params(cfg, 42))
    before = sum(elbo_per_draw(engine, val_docs, cfg, 4, seed=0)) / 4
    losses = [engine.train_step(train_docs[16 * s:16 * s + 16], 0.01 * (1 - s / 300)) for s in range(300)]
    after = sum(elbo_per_draw(engine, val_docs, cfg, 4, seed=0)) / 4
    return cfg, engine, losses, before, after


def test_loss_falls_over_a_few_hundred_steps(trained):
    _, _, losses, before, after = trained
    assert after < 0.8 * before, (before, after)  # about 4.2 -> 2.8 nats per token
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:10]) / 10


def test_sampling_unmasks_into_names(trained):
    cfg, engine, _, _, _ = trained
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    for remasking in ("confidence", "random"):
        names = sample_names(engine.predict_batch, tokenizer, cfg, 6, cfg.block_size, 0.8, remasking, seed=1)
        assert len(names) == 6 and all(isinstance(n, str) and len(n) <= cfg.block_size for n in names)
        assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
        assert sum(map(len, names)) > 0
    assert names == sample_names(engine.predict_batch, tokenizer, cfg, 6, cfg.block_size, 0.8, "random", seed=1)
    # each sample has its own seeded RNG: the first ones do not depend on how many are drawn
    assert names[:3] == sample_names(engine.predict_batch, tokenizer, cfg, 3, cfg.block_size, 0.8, "random", seed=1)
    # one round unmasks everything at once; the pure-Python model samples the same way
    py = PythonDiffusion(cfg, TrainConfig().validate(), engine.export_params())
    assert sample_names(py.predict_batch, tokenizer, cfg, 2, 2, 0.8, seed=3) == sample_names(
        engine.predict_batch, tokenizer, cfg, 2, 2, 0.8, seed=3)
    with pytest.raises(UserError, match="--remasking must be one of confidence, random"):
        sample_names(engine.predict_batch, tokenizer, cfg, 1, 4, remasking="greedy")


def test_random_order_fixes_short_repeated_samples(trained):
    """The bug of issue 12: confidence-ordered unmasking fills the end padding first, so names come out short and
    repeated; random order (MDLM's ancestral sampler, the default) samples lengths like the data's."""
    cfg, engine, _, _, _ = trained
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    train_names = [tokenizer.decode(d) for d in encode_names(read_names(4800), cfg.block_size)]
    q = {remasking: sample_quality(sample_names(engine.predict_batch, tokenizer, cfg, 200, cfg.block_size, 0.8,
                                                remasking, seed=5), train_names, cfg.block_size)
         for remasking in ("random", "confidence")}
    assert q["random"]["len_tv"] < 0.45 < 0.6 < q["confidence"]["len_tv"], q  # measured 0.24-0.29 vs 0.86-0.87
    assert q["random"]["mean_len"] > q["confidence"]["mean_len"] + 0.8, q    # 5.2-5.3 vs 3.8-3.9 (data: 6.1)
    assert q["random"]["distinct"] > q["confidence"]["distinct"], q          # 1.0 vs 0.85-0.93


def test_templates_and_well_formed_samples(torch):
    """--prompt: fixed characters stay, '_' is a character, '.' ends the name; every sample is a name followed by
    BOS padding, whichever order the positions are unmasked in (an untrained model proposes almost anything)."""
    cfg = names_config(zero_init_proj=False, init_std=0.5)
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    assert template("em", tokenizer, cfg) == ([4, 12] + [MASK] * 6, 2)
    assert template("_a.", tokenizer, cfg) == ([MASK, 0] + [BOS] * 6, 2)
    assert template("emmaemm_.", tokenizer, cfg)[0] == [4, 12, 12, 0, 4, 12, 12, MASK]  # the end is past the block
    assert ar_prompt("em_a.") == "em" and ar_prompt("emma.") == "emma" and ar_prompt("_a") == ""
    assert show([4, 12, MASK, BOS], tokenizer, cfg) == "em_."
    for prompt, message in (("e.m", "'.' ends the name, so it can only be the last character"),
                            ("emmaemmae", "'emmaemmae' has 9 positions; the model has 8"),
                            ("Ma", "--prompt 'Ma': character 'M' is not in the vocabulary"),
                            ("emma.", "leaves the model nothing to fill"), (".", "nothing to fill")):
        with pytest.raises(UserError, match=message):
            template(prompt, tokenizer, cfg)

    engine = TorchDiffusion(cfg, TrainConfig().validate(), init_params(cfg, 1))
    for prompt in ("", "a__b", "__c.", "_"):
        start, min_len = template(prompt, tokenizer, cfg)
        for remasking in ("random", "confidence"):
            for steps in (1, 3, 8):
                traces = denoise(engine.predict_batch, cfg, [start] * 12, steps, 1.0, remasking, 0, min_len)
                for trace in traces:
                    seq = trace[-1]
                    n = seq.index(BOS) if BOS in seq else len(seq)
                    assert all(tok < BOS for tok in seq[:n]) and seq[n:] == [BOS] * (len(seq) - n), seq
                    assert n >= min_len and all(s == MASK or s == t for s, t in zip(start, seq)), (prompt, seq)
                    assert trace[0] == start and len(trace) >= 2 and all(a != b for a, b in zip(trace, trace[1:]))
                    assert all(MASK in state for state in trace[:-1])
    assert {len(name) for name in sample_names(engine.predict_batch, tokenizer, cfg, 10, 8, prompt="__c.")} == {3}


def test_sample_quality():
    q = sample_quality(["ab", "ab", "abc", ""], ["ab", "xyz", "abcd", "b"], max_len=3)
    assert (q["samples"], q["distinct"], q["in_train"], q["empty"], q["mean_len"]) == (4, 0.75, 0.5, 0.25, 1.75)
    assert q["lengths"] == {0: 0.25, 2: 0.5, 3: 0.25} and q["data_mean_len"] == 9 / 4  # "abcd" counts as 3
    # training lengths {1: 1/4, 2: 1/4, 3: 1/2}: |0.25 - 0| + |0 - 0.25| + |0.5 - 0.25| + |0.25 - 0.5|, halved
    assert q["len_tv"] == pytest.approx(0.5)
    assert total_variation({1: 1.0}, {1: 1.0}) == 0 and total_variation({1: 1.0}, {2: 1.0}) == 1
    lines = quality_table({"real": q, "a model": q})
    assert len(lines) == 3 and "distinct" in lines[0] and lines[2].startswith("a model |")
    with pytest.raises(ValueError, match="at least one sample"):
        sample_quality([], ["ab"])
    with pytest.raises(ValueError, match="the training names"):
        sample_quality(["ab"], [])


def test_bad_engine_arguments(torch):
    cfg, tcfg = names_config(), TrainConfig().validate()
    params = init_params(cfg, 0)
    with pytest.raises(ValueError, match="dtype must be one of float64, float32"):
        TorchDiffusion(cfg, tcfg, params, dtype="float16")
    with pytest.raises(ValueError, match="device must be cpu, cuda or mps"):
        TorchDiffusion(cfg, tcfg, params, device="tpu")
    with pytest.raises(ValueError, match="float64 on one thread"):
        PythonDiffusion(cfg, tcfg, params, threads=2)
    with pytest.raises(TypeError, match="no next-token logits"):
        PythonDiffusion(cfg, tcfg, params).logits([BOS])
    with pytest.raises(UserError, match="Adam state holds"):
        TorchDiffusion(cfg, tcfg, params).import_adam(AdamState(array("d", [0.0] * 3), array("d", [0.0] * 3), 1))


def test_cli_trains_saves_and_samples(torch, names_file, tmp_path):
    log, ckpt, ar_ckpt = tmp_path / "curves.json", tmp_path / "d.ckpt", tmp_path / "ar.ckpt"
    common = ["--data", names_file, "--n-embd", "8", "--n-head", "2", "--block-size", "8", "--eval-docs", "10",
              "--eval-draws", "2", "--ar-engine", "python"]
    r = run_cli("engines.diffusion", "--engine", "torch", "--num-steps", "20", "--batch-size", "4",
                "--num-samples", "3", "--loss-log", log, "--save", ckpt, "--ar-save", ar_ckpt, "--prompt", "a",
                "--show-denoising", "2", "--quality", "30", *common, script="-m")
    assert r.returncode == 0, r.stderr
    assert "step 20/20 | lr" in r.stdout and "diffusion loss" in r.stdout and "autoregressive loss" in r.stdout
    assert "training loss, nats per token" in r.stdout and "validation (10 documents): autoregressive" in r.stdout
    rounds = r.stdout.split("'.' end of name):")[1].split("\n\n")[0].strip().splitlines()
    assert rounds[0].split() == ["round", "0", "a_______", "a_______"] and "_" not in rounds[-1], rounds
    samples = r.stdout.split("prompt 'a'):")[1].split("\n\n")[0].strip().splitlines()
    assert len(samples) == 3 and all(line.split()[0][0] == line.split()[1][0] == "a" for line in samples), samples
    quality = r.stdout.split("sample quality")[1].strip().splitlines()
    assert [line.split("|")[0].strip() for line in quality[2:5]] == ["real names (validation)", "diffusion (random)",
                                                                    "autoregressive"]
    result = json.loads(log.read_text())
    assert len(result["train"]["diffusion"]) == len(result["train"]["ar"]) == 20
    assert len(result["samples"]["diffusion"]) == 3 and result["quality"]["diffusion (random)"]["samples"] == 30
    saved = checkpoint.load(ckpt, kind="diffusion")
    ar_saved = checkpoint.load(ar_ckpt)
    assert (saved.kind, saved.step, ar_saved.kind) == ("diffusion", 20, "autoregressive")
    assert saved.model.vocab_size == ar_saved.model.vocab_size + 1  # + [MASK]
    assert saved.rng_state is not None and saved.adam.t == 20

    # the checkpoints sample again, the diffusion one here, the autoregressive one in train.py
    r = run_cli("engines.diffusion", "--sample-from", ckpt, "--ar-checkpoint", ar_ckpt, "--num-samples", "4",
                "--prompt", "_a.", "--quality", "10", "--data", names_file, "--ar-engine", "python", script="-m")
    assert r.returncode == 0, r.stderr
    assert "| lr" not in r.stdout and "autoregressive model" in r.stdout  # nothing trained
    samples = r.stdout.split("template '_a.'")[1].split("\n\n")[0].strip().splitlines()[1:]
    assert len(samples) == 4 and all(len(line.split()[0]) == 2 and line.split()[0][1] == "a" for line in samples)
    r = run_cli("--sample-from", ar_ckpt, "--num-samples", "2")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stderr

    # a checkpoint of one kind never loads as the other
    for args, message in (((ckpt,), "holds the diffusion model, not the autoregressive one; use python -m "
                                     "engines.diffusion --sample-from"),
                          ((ckpt, "--resume"), "holds the diffusion model")):
        r = run_cli(args[-1] if len(args) == 2 else "--sample-from", args[0], "--num-samples", "1")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert diffusion_main(["--sample-from", str(ar_ckpt)]) == 2


def diffusion_main(argv) -> int:
    """The CLI in this process (no interpreter start-up): its exit status, argparse's included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli_bad_input_is_one_line_before_training(torch, names_file, tmp_path, capsys):
    common = ["--data", str(names_file), "--n-embd", "8", "--n-head", "2", "--block-size", "8", "--eval-docs", "10",
              "--num-samples", "2", "--ar-engine", "python"]
    assert diffusion_main(["--engine", "python", "--num-steps", "2", *common]) == 0
    assert "diffusion engine diffusion-python (float64) vs autoregressive engine python" in capsys.readouterr().out
    a_file = tmp_path / "file"
    a_file.write_text("")
    # --num-steps 100000 would take minutes: each of these must be refused before the first step
    for bad, message in ((["--remasking", "greedy"], "argument --remasking: invalid choice"),
                         (["--engine", "python", "--device", "cuda"], "--engine python runs on the CPU only"),
                         (["--eval-draws", "0"], "--eval-draws must be an integer >= 1"),
                         (["--temperature", "0"], "--temperature must be > 0"),
                         (["--quality", "-1"], "--quality must be an integer >= 0"),
                         (["--prompt", "Ma"], "--prompt 'Ma': character 'M' is not in the vocabulary"),
                         (["--prompt", "abcdefghi"], "has 9 positions; the model has 8"),
                         (["--prompt", "abcdefgh"], "nothing to fill: put a '_' in it (it fills all 8 positions)"),
                         (["--save", str(a_file / "d.ckpt")], f"{a_file} is a file, not a directory"),
                         (["--n-embd", "8192", "--n-layer", "64"], "of memory is available"),
                         (["--ar-save", str(tmp_path)], "is a directory"),
                         (["--ar-checkpoint", str(a_file)], "--ar-checkpoint goes with --sample-from"),
                         (["--sample-from", str(a_file), "--save", "x"], "--sample-from trains nothing, so --save"),
                         (["--sample-from", str(a_file)], "--n-embd --n-head --block-size --num-steps cannot change")):
        assert diffusion_main(["--num-steps", "100000", *common, *bad]) == 2, bad
        captured = capsys.readouterr()
        assert captured.err.startswith("error:") and message in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1 and "| lr" not in captured.out
    assert diffusion_main(["--sample-from", str(a_file)]) == 2
    assert "is not a microgpt-lab checkpoint" in capsys.readouterr().err


def test_ctrl_c_finishes_the_step_and_saves_both_models(torch, names_file, tmp_path):
    ckpt, ar_ckpt = tmp_path / "d.ckpt", tmp_path / "ar.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "engines.diffusion", "--num-steps", "100000", "--data",
                             str(names_file), "--n-embd", "8", "--n-head", "2", "--block-size", "8", "--ar-engine",
                             "python", "--save", str(ckpt), "--ar-save", str(ar_ckpt)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("diffusion engine")
    assert proc.stdout.readline().startswith("step      1/100000")  # training is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and not err, err
    done = int(re.search(r"interrupted after step (\d+); diffusion checkpoint saved to .* and autoregressive "
                         r"checkpoint saved to", out).group(1))
    assert 1 <= done < 100000
    assert checkpoint.load(ckpt, kind="diffusion").step == checkpoint.load(ar_ckpt).step == done

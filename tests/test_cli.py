"""The command line end to end on small data: training, exact resume, sampling, and bad input."""

import json

import pytest

from conftest import run_cli

TINY = ["--n-embd", "8", "--n-head", "2", "--block-size", "8", "--eval-every", "5", "--eval-docs", "20",
        "--num-samples", "3"]


def losses(path):
    return json.loads(path.read_text())["train"]


def test_train_then_sample_from_checkpoint(names_file, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    r = run_cli("--data", names_file, "--num-steps", "12", "--save", ckpt, *TINY)
    assert r.returncode == 0, r.stderr
    assert "step 12/12 | loss" in r.stdout and "validation loss" in r.stdout and "tok/s" in r.stdout
    assert "samples:" in r.stdout and "ETA" in r.stdout
    r = run_cli("--sample-from", ckpt, "--num-samples", "4", "--temperature", "0.8", "--top-k", "5")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split()
    assert len(samples) == 4 and all(s.isalpha() and s.islower() for s in samples)
    r = run_cli("--sample-from", ckpt, "--engine", "scalar", "--num-samples", "4", "--temperature", "0.8",
                "--top-k", "5")
    assert r.returncode == 0 and r.stdout.split() == samples  # any engine samples from any checkpoint


@pytest.mark.parametrize("engine", ["python", "scalar"])
def test_resume_is_bit_exact(names_file, tmp_path, engine):
    """N steps + save + resume M steps == N+M steps, bit for bit (losses and final weights)."""
    args = ["--data", names_file, "--num-steps", "9", "--batch-size", "2", "--warmup-steps", "2",
            "--lr-schedule", "cosine", "--grad-clip", "1.0", "--engine", engine, *TINY, "--num-samples", "0"]
    whole, first, second = tmp_path / "whole.json", tmp_path / "first.json", tmp_path / "second.json"
    assert run_cli(*args, "--loss-log", whole, "--save", tmp_path / "whole.ckpt").returncode == 0
    r = run_cli(*args, "--loss-log", first, "--save", tmp_path / "part.ckpt", "--stop-at", "4")
    assert r.returncode == 0, r.stderr
    r = run_cli("--resume", tmp_path / "part.ckpt", "--engine", engine, "--loss-log", second,
                "--save", tmp_path / "resumed.ckpt", "--num-samples", "0")
    assert r.returncode == 0, r.stderr
    assert losses(first) + losses(second) == losses(whole)
    assert (tmp_path / "resumed.ckpt").read_bytes() == (tmp_path / "whole.ckpt").read_bytes()


def test_resume_refuses_different_data(names_file, tmp_path):
    ckpt = tmp_path / "part.ckpt"
    assert run_cli("--data", names_file, "--num-steps", "6", "--stop-at", "2", "--save", ckpt, *TINY).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text("anna\nbob\ncarl\n")
    r = run_cli("--resume", ckpt, "--data", other)
    assert r.returncode == 2 and "documents differ" in r.stderr


def test_early_stopping_after_patience_evaluations_without_improvement():
    """A stub engine whose validation loss never improves after the 2nd evaluation stops at the 4th."""
    from microgpt.config import ModelConfig, TrainConfig
    from microgpt.tokenizers import build_tokenizer
    from microgpt.trainer import Dataset, train

    class Plateau:
        name = "plateau"

        def __init__(self):
            self.vals = iter([3.0, 2.0, 2.0, 2.5, 1.0])

        def train_step(self, docs, lr):
            return 1.0

        def eval_loss(self, docs):
            return next(self.vals)

    tok = build_tokenizer("char", ["ab"], ["ab"])
    data = Dataset(tok, [[2, 0, 1, 2]], [[2, 1, 0, 2]])
    hist = train(Plateau(), data, ModelConfig(vocab_size=3), TrainConfig(num_steps=50, eval_every=5, patience=2),
                 quiet=True)
    assert hist.stopped_early and len(hist.losses) == 20 and [v for _, v in hist.val] == [3.0, 2.0, 2.0, 2.5]


def test_word_and_bpe_tokenizers_train(names_file):
    for tok in ("word", "bpe"):
        r = run_cli("--data", names_file, "--num-steps", "3", "--tokenizer", tok, *TINY)
        assert r.returncode == 0, (tok, r.stderr)


@pytest.mark.parametrize("args,message", [
    (["--n-head", "3"], "--n-head must divide --n-embd (16 % 3 != 0)"),
    (["--learning-rate", "0"], "--learning-rate must be > 0"),
    (["--warmup-steps", "5", "--num-steps", "5"], "--warmup-steps must be < --num-steps"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--dtype", "float32"], "computes in float64"),
    (["--stop-at", "99", "--num-steps", "5", "--save", "{tmp}/x.ckpt"], "--stop-at must be in (0, 5]"),
    (["--prompt", "Z"], "not in the vocabulary"),
    (["--device", "cuda"], "--engine python runs on the CPU only"),
    (["--engine", "nope"], "invalid choice"),
    # checked before the first step: the prompt, the output paths, the memory a step needs
    (["--prompt", "emmaemmaemmaemma"], "--prompt is 16 tokens; it must be shorter than the sample length 16"),
    (["--stop-at", "1"], "--stop-at pauses a run to be continued with --resume, which needs a checkpoint"),
    (["--save-every", "1"], "--save-every N checkpoints to --save CKPT"),
    (["--save", "{names}/run.ckpt"], "is a file, not a directory"),
    (["--save", "{tmp}"], "is a directory; give a file name"),
    (["--loss-log", "{names}/log.json"], "is a file, not a directory"),
    (["--n-embd", "8192", "--n-layer", "64"], "of memory is available: make the model or the batch smaller"),
    # underscore spellings are the same flags; a misspelt one gets the nearest
    (["--n_head", "3"], "--n-head must divide --n-embd (16 % 3 != 0)"),
    (["--n_embdd", "3"], "--n_embdd: did you mean --n-embd?"),
])
def test_bad_flags_give_one_line_errors(names_file, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, names=names_file) for a in args]
    r = run_cli("--data", names_file, "--num-steps", "2", "--n-embd", "16", *args)
    assert r.returncode == 2, r.stdout
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "step" not in r.stdout and list(tmp_path.iterdir()) == [names_file]   # nothing trained, nothing written


@pytest.mark.parametrize("content,message", [
    (b"", "no documents"),
    (b"\x00\x01\x02binary\x00", "binary"),
    (b"caf\xe9\n", "UTF-8"),
])
def test_bad_data_files(tmp_path, content, message):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    r = run_cli("--data", path, "--num-steps", "2")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_checkpoints(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"MGPTCKPT\x01\x00\x00\x00" + b"\xff" * 4)
    for flag in ("--resume", "--sample-from"):
        r = run_cli(flag, bad)
        assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr
        r = run_cli(flag, tmp_path / "missing.ckpt")
        assert r.returncode == 2 and "does not exist" in r.stderr


def test_default_dataset_via_environment(names_file, tmp_path):
    r = run_cli("--num-steps", "2", *TINY, env={"MICROGPT_DATA": str(names_file)})
    assert r.returncode == 0 and "270 train / 30 val documents" in r.stdout


def test_offline_without_data_says_where_to_put_the_file(tmp_path):
    env = {"MICROGPT_DATA": "", "MICROGPT_CACHE": str(tmp_path / "cache"), "MICROGPT_DATA_URL": "http://127.0.0.1:9/x"}
    r = run_cli("--num-steps", "2", env=env)
    assert r.returncode == 2 and "MICROGPT_DATA" in r.stderr and "Traceback" not in r.stderr


def test_help_documents_every_flag():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--n-embd", "--n-layer", "--n-head", "--block-size", "--num-steps", "--batch-size",
                 "--learning-rate", "--seed", "--data", "--tokenizer", "--temperature", "--num-samples",
                 "--resume", "--sample-from", "--save", "--grad-clip", "--lr-schedule", "--patience"):
        assert flag in r.stdout

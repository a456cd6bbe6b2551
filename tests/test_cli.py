"""The command line end to end on small data: training, exact resume, sampling, and bad input."""

import io
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


def test_resume_extends_a_finished_run_and_refuses_changed_flags(names_file, tmp_path):
    """--resume CKPT --num-steps N trains on to step N, each later step at the lr of an N-step schedule;
    a flag the run cannot change is refused by name, never ignored."""
    from microgpt.config import TrainConfig, lr_at
    ckpt, log = tmp_path / "run.ckpt", tmp_path / "more.json"
    args = ["--data", names_file, "--num-steps", "6", "--save", ckpt, *TINY, "--num-samples", "0"]
    assert run_cli(*args).returncode == 0
    r = run_cli("--resume", ckpt, "--save", ckpt)
    assert r.returncode == 2 and "the run is at step 6 of 6; give --num-steps above 6" in r.stderr
    r = run_cli("--resume", ckpt, "--learning-rate", "0.5", "--n-embd", "32", "--tokenizer", "bpe")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert ("these cannot change: --n-embd 32 (checkpoint: 8), --learning-rate 0.5 (checkpoint: 0.01), "
            "--tokenizer bpe (checkpoint: char)") in r.stderr
    r = run_cli("--resume", ckpt, "--num-steps", "9", "--learning-rate", "0.01", "--eval-every", "3",
                "--log-every", "1", "--loss-log", log, "--save", ckpt, "--num-samples", "2")
    assert r.returncode == 0, r.stderr
    assert "steps 6..9" in r.stdout and "step 9/9" in r.stdout and "samples:" in r.stdout
    assert len(losses(log)) == 3 and json.loads(log.read_text())["train_config"]["num_steps"] == 9
    assert f"lr {lr_at(6, TrainConfig(num_steps=9)):.2e}" in r.stdout.split("step 7/9")[1].splitlines()[0]


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(names_file, tmp_path):
    from microgpt import checkpoint
    ckpt = tmp_path / "run.ckpt"
    r = run_cli("--data", names_file, "--num-steps", "50", "--learning-rate", "1000", "--save", ckpt,
                "--save-every", "1", *TINY, "--block-size", "16")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    step = int(r.stderr.split("training diverged at step ")[1].split(":")[0])
    assert "lower --learning-rate (now 1000)" in r.stderr and f"the checkpoint of step {step - 1}" in r.stderr
    assert checkpoint.load(ckpt).step == step - 1 and "samples:" not in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.txt", "run.ckpt"]


def tiny_run():
    """A real engine on eight names, in this process (for faults the CLI cannot provoke)."""
    from microgpt.config import ModelConfig, TrainConfig
    from microgpt.tokenizers import build_tokenizer, wrap_all
    from microgpt.trainer import Dataset
    from microgpt.params import init_params
    from conftest import read_names
    from train import PythonEngine
    names = read_names(8)
    tok = build_tokenizer("char", names, names)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_embd=8, n_head=2, block_size=8)
    tcfg = TrainConfig(num_steps=6, eval_every=0)
    return PythonEngine, cfg, tcfg, init_params(cfg, 0), Dataset(tok, wrap_all(tok, names, 8)[0], [])


def test_ctrl_c_finishes_the_step_and_saves(tmp_path):
    import os
    import signal
    from microgpt import checkpoint
    from microgpt.trainer import train
    engine_cls, cfg, tcfg, params, data = tiny_run()

    class Interrupted(engine_cls):
        def train_step(self, docs, lr):
            loss = super().train_step(docs, lr)
            if self.t == 3:
                os.kill(os.getpid(), signal.SIGINT)   # as Ctrl-C would, in the middle of the run
            return loss

    engine, ckpt, out = Interrupted(cfg, tcfg, params), tmp_path / "run.ckpt", io.StringIO()
    with pytest.raises(SystemExit) as e:
        train(engine, data, cfg, tcfg, save_path=str(ckpt), quiet=True, out=out)
    assert e.value.code == 130 and "interrupted after step 3; checkpoint saved" in out.getvalue()
    saved = checkpoint.load(ckpt)
    assert saved.step == 3 and list(saved.params.data) == list(engine.export_params().data)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is put back


def test_a_failed_write_during_a_run_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    import os
    from microgpt import UserError, checkpoint
    from microgpt.trainer import train
    engine_cls, cfg, tcfg, params, data = tiny_run()
    ckpt = tmp_path / "run.ckpt"
    train(engine_cls(cfg, tcfg, params), data, cfg, tcfg, stop_step=2, save_path=str(ckpt), quiet=True)
    before = ckpt.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=f"cannot write checkpoint {ckpt}: No space left on device"):
        train(engine_cls(cfg, tcfg, params), data, cfg, tcfg, save_path=str(ckpt), save_every=2, quiet=True)
    assert ckpt.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
    assert checkpoint.load(ckpt).step == 2


def test_cut_documents_and_short_bpe_are_reported_once(names_file):
    r = run_cli("--data", names_file, "--num-steps", "1", "--block-size", "4", "--tokenizer", "bpe",
                "--bpe-merges", "100000", "--num-samples", "0", "--eval-every", "0", "--n-embd", "8", "--n-head", "2")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2, r.stderr
    assert "of the 100000 merges asked for (--bpe-merges)" in notes[0]
    assert "of 300 documents are longer than --block-size 4 allows" in notes[1]


@pytest.mark.parametrize("done,num_steps,eval_every,left", [
    (0, 10, 5, 2), (4, 10, 5, 2), (5, 10, 5, 1), (10, 10, 5, 0), (0, 10, 3, 4), (9, 10, 3, 1), (0, 10, 0, 1),
])
def test_the_eta_counts_the_validations_left(done, num_steps, eval_every, left):
    from microgpt.config import TrainConfig
    from microgpt.trainer import evaluations_left
    assert evaluations_left(done, TrainConfig(num_steps=num_steps, eval_every=eval_every)) == left


def test_the_scalar_engine_validates_on_few_documents_unless_asked(names_file, tmp_path):
    log = tmp_path / "log.json"
    r = run_cli("--data", names_file, "--engine", "scalar", "--num-steps", "1", "--n-embd", "8", "--n-head", "2",
                "--num-samples", "0", "--loss-log", log)
    assert r.returncode == 0, r.stderr
    assert json.loads(log.read_text())["train_config"]["eval_docs"] == 10 and "validation loss" in r.stdout


def test_smoke_runs_standalone(tmp_path, monkeypatch):
    import engines
    import test_smoke
    r = run_cli("--quick", script="test_smoke.py")
    assert r.returncode == 0 and "ok   python: train, save, resume, sample" in r.stdout, r.stderr
    assert "smoke test passed" in r.stdout and "(--quick: python only)" in r.stdout
    # without --quick: every engine the install can load, two steps each; one it cannot is named, not fatal
    monkeypatch.setattr(engines, "ENGINES", {"python": "train:PythonEngine", "scalar": "engines.scalar:ScalarEngine",
                                             "missing": "no_such_module:Engine"})
    lines = []
    test_smoke.smoke(tmp_path, all_engines=True, log=lines.append)
    assert lines[1:] == ["ok   scalar: two steps and a sample",
                         "skip missing: engine missing cannot be loaded (No module named 'no_such_module'); "
                         "install what it imports"]


def test_cli_helpers():
    """microgpt.cli: one config label, underscore flags (but not after --), run_main's statuses."""
    from microgpt import UserError, cli
    from microgpt.config import ModelConfig
    assert cli.config_label(ModelConfig()) == cli.config_label((16, 1, 4, 16, "relu2")) == "C16L1H4"
    assert cli.config_label({"n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 8, "mlp_act": "relu"}) == \
        "C32L2H4T8-relu"
    p = cli.OneLineErrorParser()
    p.add_argument("--learning-rate", type=float)
    p.add_argument("rest", nargs="*")
    args = p.parse_args(["--learning_rate=0.5", "--", "--learning_rate"])
    assert args.learning_rate == 0.5 and args.rest == ["--learning_rate"]

    def fails():
        raise UserError("bad")
    assert cli.run_main(fails) == 2 and cli.run_main(lambda: None) == 0 and cli.run_main(lambda: 3) == 3
    assert cli.run_main(lambda: {"a": 1}) == 0
    assert (cli.si(1234567, "B"), cli.hms(3725.4), cli.binary_size(49152)) == ("1.23 MB", "1:02:05", "48 KiB")


def test_check_writable_wants_room_for_the_file(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    from microgpt import UserError, cli
    cli.check_writable("--save", tmp_path / "new" / "run.ckpt", 1000)   # missing directories are made later
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    with pytest.raises(UserError, match=r"--save .*run.ckpt: 1 MiB free on its file system, and the file needs "
                                        r"about 2 MiB"):
        cli.check_writable("--save", tmp_path / "run.ckpt", 2 << 20)
    assert list(tmp_path.iterdir()) == []


def test_the_core_imports_no_engine_and_no_script():
    """microgpt/ is the lowest layer: the trainer is handed its engines (microgpt.trainer.run's registry)."""
    import ast
    from conftest import REPO
    above = ("engines", "benchmarks", "train", "train_fast", "benchmark", "roofline", "report_charts", "test_smoke")
    for path in sorted((REPO / "microgpt").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in above], (path.name, names)


def test_every_engine_that_can_be_missing_says_what_to_install():
    import engines
    pure_python = {"python", "scalar"}      # the standard library is all they import
    assert set(engines.INSTALL_HINTS) == set(engines.ENGINES) - pure_python

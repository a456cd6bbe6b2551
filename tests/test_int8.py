"""engines.int8: INT8 inference of a trained checkpoint (size, validation-loss delta, CLI, errors).

The stated bound: on a briefly trained tiny model, INT8 changes the validation loss by less than
0.01 nats (measured: about 1e-4), and the stored weights shrink to under half.
"""

import io

import pytest

from conftest import encode_names, read_names, run_cli
from microgpt import UserError, checkpoint
from microgpt.trainer import run as train_run
from train import PythonEngine

torch = pytest.importorskip("torch")
import engines  # noqa: E402
from engines import int8  # noqa: E402

VAL_LOSS_BOUND = 0.01


def torchao_installed() -> bool:
    try:
        int8._import_torchao()
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 300 steps on 300 names, its checkpoint and its data."""
    root = tmp_path_factory.mktemp("int8")
    names, ckpt = root / "names.txt", root / "tiny.ckpt"
    names.write_text("\n".join(read_names(300)) + "\n")
    train_run(["--engine", "numpy", "--data", str(names), "--num-steps", "300", "--batch-size", "8",
               "--block-size", "8", "--eval-every", "0", "--num-samples", "0", "--quiet", "--save", str(ckpt)],
              engines, default_engine="numpy", description="", out=io.StringIO())
    return ckpt, names


def test_fp32_module_computes_the_reference_model(trained):
    ckpt = checkpoint.load(trained[0])
    docs = encode_names(read_names(40)[-8:], ckpt.model.block_size)
    want = PythonEngine(ckpt.model, ckpt.train, ckpt.params).eval_loss(docs)
    model = int8.GPT(ckpt.params)
    assert model.eval_loss(docs) == pytest.approx(want, rel=1e-5)
    assert model.logits(docs[0][:3]) == pytest.approx(PythonEngine(ckpt.model, None, ckpt.params).logits(docs[0][:3]),
                                                      rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("scheme,quantizer", [("dynamic", "auto"), ("weight-only", "auto"),
                                              ("dynamic", "quantize_dynamic")])
def test_int8_is_smaller_and_close_in_validation_loss(trained, scheme, quantizer):
    ckpt = checkpoint.load(trained[0])
    docs = encode_names(read_names(300)[-100:], ckpt.model.block_size)
    fp32 = int8.GPT(ckpt.params).eval()
    if scheme == "weight-only" and not torchao_installed():
        with pytest.raises(UserError, match="weight-only needs torchao"):
            int8.quantize(fp32, scheme, quantizer)
        return
    qmodel, path = int8.quantize(fp32, scheme, quantizer)
    uses_torchao = quantizer == "auto" and torchao_installed()
    assert path.startswith("torchao") if uses_torchao else path.startswith("torch.ao.quantization.quantize_dynamic")
    assert abs(qmodel.eval_loss(docs) - fp32.eval_loss(docs)) < VAL_LOSS_BOUND
    fp32_bytes, int8_bytes = int8.stored_bytes(fp32.state_dict()), int8.stored_bytes(qmodel.state_dict())
    assert fp32_bytes == 4 * len(ckpt.params)
    assert int8_bytes < 0.5 * fp32_bytes
    assert fp32.eval_loss(docs) == int8.GPT(ckpt.params).eval_loss(docs), "quantizing a copy left fp32 untouched"


def test_falls_back_to_quantize_dynamic_without_torchao(trained, monkeypatch):
    def missing():
        raise ImportError("No module named 'torchao'")
    monkeypatch.setattr(int8, "_import_torchao", missing)
    _, path = int8.quantize(int8.GPT(checkpoint.load(trained[0]).params), "dynamic", "auto")
    assert path == "torch.ao.quantization.quantize_dynamic (deprecated; used because torchao is not installed)"
    with pytest.raises(UserError, match="--quantizer torchao: torchao cannot be imported"):
        int8.quantize(int8.GPT(checkpoint.load(trained[0]).params), "dynamic", "torchao")


def test_cli_reports_size_speed_loss_and_samples(trained):
    ckpt, names = trained
    r = run_cli("engines.int8", "--checkpoint", ckpt, "--data", names, "--repeats", "1", "--speed-names", "2",
                "--num-samples", "2", script="-m")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "torchao's start-up noise is kept out of the output"
    out = r.stdout
    assert ("int8 path: torchao" if torchao_installed() else "int8 path: torch.ao.quantization.quantize_dynamic") in out
    for line in ("weights as stored:  fp32 16,256 B | int8", "sampling speed:     fp32", "tok/s | int8",
                 "validation loss:    fp32", "| delta ", "samples (fp32): ", "samples (int8): "):
        assert line in out
    delta = float(out.split("| delta ")[1].split()[0])
    assert abs(delta) < VAL_LOSS_BOUND


def test_cli_one_line_errors(trained, tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    r = run_cli("engines.int8", "--checkpoint", missing, script="-m")   # once through a real interpreter
    assert r.returncode == 2 and r.stderr == f"error: checkpoint {missing} does not exist\n"
    garbled = tmp_path / "garbled.ckpt"
    garbled.write_bytes(b"not a checkpoint at all")
    cases = [(["--checkpoint", garbled], "is not a microgpt-lab checkpoint"),
             (["--checkpoint", trained[0], "--repeats", "0"], "--repeats must be an integer >= 1"),
             (["--checkpoint", trained[0], "--data", tmp_path / "nope.txt"], "nope.txt does not exist"),
             (["--checkpoint", trained[0], "--scheme", "int4"], "argument --scheme: invalid choice"),
             ([], "the following arguments are required: --checkpoint")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            int8.main([str(a) for a in args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2, args
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)

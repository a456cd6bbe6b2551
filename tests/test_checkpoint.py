"""Checkpoints: exact round trip, atomic writes, and one-line errors for every kind of damage."""

import errno
import json
import os

import pytest

from microgpt import UserError, checkpoint
from microgpt.config import TrainConfig
from microgpt.params import AdamState
from microgpt.tokenizers import build_tokenizer
from conftest import make_setup


def make_ckpt():
    cfg, params = make_setup(n_embd=8, n_layer=1, n_head=2, block_size=8)
    adam = AdamState.zeros(len(params))
    adam.m[3], adam.v[5], adam.t = 0.125, 1e-300, 7
    tok = build_tokenizer("char", ["ab"], ["ab", "cd"])
    return checkpoint.Checkpoint(model=cfg, train=TrainConfig(num_steps=50).validate(), tokenizer=tok.to_dict(),
                                 params=params, adam=adam, step=7, data={"sha256": "x"}, meta={"engine": "python"})


def test_round_trip_is_exact(tmp_path):
    ckpt = make_ckpt()
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, ckpt)
    back = checkpoint.load(path)
    assert back.params.data == ckpt.params.data and back.adam.m == ckpt.adam.m and back.adam.v == ckpt.adam.v
    assert (back.model, back.train, back.tokenizer, back.step, back.adam.t, back.data, back.meta) == \
           (ckpt.model, ckpt.train, ckpt.tokenizer, 7, 7, ckpt.data, ckpt.meta)
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left behind


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, make_ckpt())
    before = path.read_bytes()

    def boom(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(UserError) as e:   # one line that names the path and the cause
        checkpoint.save(path, make_ckpt())
    assert str(e.value) == (f"cannot write checkpoint {path}: No space left on device; any previous checkpoint "
                            f"there is unchanged")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


def damaged(tmp_path, mutate):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, make_ckpt())
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(mutate(raw)))
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated(tmp_path):
    assert "truncated" in damaged(tmp_path, lambda raw: raw[:-100])
    assert "truncated" in damaged(tmp_path, lambda raw: raw[:30])


def test_bit_flip_in_payload(tmp_path):
    def flip(raw):
        raw[-9] ^= 0x40
        return raw
    assert "checksum" in damaged(tmp_path, flip)


def test_foreign_file(tmp_path):
    assert "not a microgpt-lab checkpoint" in damaged(tmp_path, lambda raw: b"PK\x03\x04" + raw[4:])
    assert "not a microgpt-lab checkpoint" in damaged(tmp_path, lambda raw: b"")


def test_garbled_header(tmp_path):
    def garble(raw):
        start = raw.index(b"{")
        raw[start:start + 1] = b"["
        return raw
    assert "garbled header" in damaged(tmp_path, garble)


def test_future_version(tmp_path):
    def bump(raw):
        raw[8] = 99
        return raw
    assert "format version 99" in damaged(tmp_path, bump)


def test_header_config_mismatch(tmp_path):
    def edit(raw):
        header_len = int.from_bytes(raw[12:20], "little")
        header = json.loads(raw[20:20 + header_len])
        header["model"]["n_embd"] = 0
        new = json.dumps(header).encode()
        return raw[:12] + len(new).to_bytes(8, "little") + new + raw[20 + header_len:]
    assert "invalid config" in damaged(tmp_path, edit)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.ckpt")

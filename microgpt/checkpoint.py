"""Versioned, self-describing checkpoints that any engine can write and any engine can resume.

File format (all little-endian)::

    b"MGPTCKPT"                 8-byte magic
    uint32 format version
    uint64 header length H
    H bytes of UTF-8 JSON       configs, tokenizer, layout, step, RNG state, data identity, sections
    payload                     float64 sections back to back: params, adam_m, adam_v

The header records each section's offset and length and the payload's SHA-256, so a truncated,
garbled or foreign file is rejected with one line instead of loading garbage. Writes are atomic
(temporary file in the same directory, fsync, rename), so an interrupted save never clobbers the last
good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from microgpt import UserError
from microgpt.config import ModelConfig, TrainConfig
from microgpt.files import write_atomic
from microgpt.params import AdamState, FlatParams, layout, num_params

MAGIC = b"MGPTCKPT"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
SECTIONS = ("params", "adam_m", "adam_v")
#: what the weights compute; a checkpoint of one kind never loads as another (a masked-diffusion model has the
#: same layout plus a [MASK] token, so without this it would resume or sample as a next-token model, silently)
KINDS = {"autoregressive": "python train.py --sample-from", "diffusion": "python -m engines.diffusion --sample-from"}


@dataclass
class Checkpoint:
    """Everything needed to resume a run exactly, or to sample from it."""

    model: ModelConfig
    train: TrainConfig
    tokenizer: dict                 # tokenizers.Tokenizer.to_dict()
    params: FlatParams
    adam: AdamState
    step: int                       # optimizer steps completed; the next step to run
    rng_state: list | None = None   # random.Random.getstate() of the training RNG, as JSON lists
    data: dict = field(default_factory=dict)   # which documents, so resume can check it sees the same data
    meta: dict = field(default_factory=dict)   # engine, dtype, best validation loss, ...
    kind: str = "autoregressive"                # one of KINDS; files written before it existed are autoregressive


def _to_le_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def _from_le_bytes(raw: bytes) -> array:
    values = array("d")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def save(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically."""
    payload_parts = [_to_le_bytes(ckpt.params.data), _to_le_bytes(ckpt.adam.m), _to_le_bytes(ckpt.adam.v)]
    sections, offset = {}, 0
    for name, part in zip(SECTIONS, payload_parts):
        sections[name] = {"offset": offset, "bytes": len(part)}
        offset += len(part)
    payload = b"".join(payload_parts)
    header = {
        "model": ckpt.model.to_dict(),
        "train": ckpt.train.to_dict(),
        "tokenizer": ckpt.tokenizer,
        "layout": [[t.name, t.offset, t.rows, t.cols] for t in layout(ckpt.model)],
        "step": ckpt.step,
        "adam_t": ckpt.adam.t,
        "rng_state": ckpt.rng_state,
        "data": ckpt.data,
        "meta": ckpt.meta,
        "kind": ckpt.kind,
        "dtype": "float64",
        "sections": sections,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header_bytes = json.dumps(header).encode("utf-8")
    try:
        write_atomic(path, _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + payload)
    except OSError as e:   # write_atomic has removed its temporary file; the old checkpoint is untouched
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; any previous checkpoint there is "
                        f"unchanged") from None


def size_bytes(model: ModelConfig) -> int:
    """About how large ``save`` makes a checkpoint of ``model``: weights and both Adam moments in float64,
    and a header (config, layout, tokenizer) well under 64 KiB for the lab's vocabularies."""
    return 3 * 8 * num_params(model) + 64 * 1024


def load(path: str | os.PathLike, kind: str = "autoregressive") -> Checkpoint:
    """Read and validate a checkpoint of ``kind``; any defect, or another kind, raises UserError with one line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not raw.startswith(MAGIC):
        raise UserError(f"{path} is not a microgpt-lab checkpoint (bad magic bytes)")
    if len(raw) < _PREFIX.size:
        raise UserError(f"checkpoint {path} is truncated ({len(raw)} bytes)")
    _, version, header_len = _PREFIX.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}; this build reads version {FORMAT_VERSION}")
    body_start = _PREFIX.size + header_len
    if body_start > len(raw):
        raise UserError(f"checkpoint {path} is truncated (header cut short)")
    try:
        header = json.loads(raw[_PREFIX.size:body_start].decode("utf-8"))
        model = ModelConfig.from_dict(header["model"])
        train = TrainConfig.from_dict(header["train"])
        sections = {name: (int(header["sections"][name]["offset"]), int(header["sections"][name]["bytes"]))
                    for name in SECTIONS}
        expected = sum(size for _, size in sections.values())
        step, adam_t = int(header["step"]), int(header["adam_t"])
        tokenizer = header["tokenizer"]
        found = header.get("kind", "autoregressive")
    except UserError as e:
        raise UserError(f"checkpoint {path} has an invalid config: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {path} has a garbled header ({type(e).__name__}: {e})") from None
    if found != kind:
        how = KINDS.get(found)
        raise UserError(f"{path} holds the {found} model, not the {kind} one" + (f"; use {how} {path}" if how else ""))
    payload = raw[body_start:]
    if len(payload) != expected:
        raise UserError(f"checkpoint {path} is truncated or padded (payload {len(payload)} bytes, expected {expected})")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise UserError(f"checkpoint {path} is corrupted (payload checksum mismatch)")
    expected_layout = [[t.name, t.offset, t.rows, t.cols] for t in layout(model)]
    if header.get("layout") != expected_layout:
        raise UserError(f"checkpoint {path} has a parameter layout that does not match its model config")
    arrays, n = {}, num_params(model)
    for name in SECTIONS:
        start, size = sections[name]
        if size != 8 * n or not 0 <= start <= len(payload) - size:
            raise UserError(f"checkpoint {path}: section {name} is {size} bytes at {start}, the model needs {8 * n}")
        arrays[name] = _from_le_bytes(payload[start:start + size])
    return Checkpoint(model=model, train=train, tokenizer=tokenizer, params=FlatParams(model, arrays["params"]),
                      adam=AdamState(arrays["adam_m"], arrays["adam_v"], adam_t), step=step,
                      rng_state=header.get("rng_state"), data=header.get("data", {}), meta=header.get("meta", {}),
                      kind=found)

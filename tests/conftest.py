"""Shared test fixtures: tiny configs, real names encoded with the char tokenizer, and CLI helpers."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import init_params

REPO = Path(__file__).resolve().parent.parent
NAMES = Path(os.environ.get("MICROGPT_DATA", REPO.parent / "shared" / "data" / "names.txt"))
BOS = 26


def synthetic_names(n: int) -> list[str]:
    """Deterministic name-like strings over all 26 letters, for machines without names.txt."""
    rng = random.Random(0)
    vowels, consonants = "aeiouy", "bcdfghjklmnpqrstvwxz"
    return ["".join(rng.choice(consonants if i % 2 == 0 else vowels) for i in range(rng.randint(3, 9)))
            for _ in range(n)]


def read_names(n: int | None = None) -> list[str]:
    """Real names from names.txt when present, else synthetic ones (so tests never skip)."""
    if NAMES.exists():
        names = [line.strip() for line in NAMES.read_text().splitlines() if line.strip()]
    else:
        names = synthetic_names(5000)
    return names[:n] if n else names


def encode_names(names: list[str], block_size: int) -> list[list[int]]:
    """Char tokenizer of names.txt: a..z = 0..25, BOS = 26, wrapped and cut to block_size + 1."""
    return [([BOS] + [ord(c) - ord("a") for c in name] + [BOS])[:block_size + 1] for name in names]


def make_setup(n_embd=16, n_layer=1, n_head=4, block_size=8, seed=42, **model_kw):
    cfg = ModelConfig(vocab_size=27, n_embd=n_embd, n_layer=n_layer, n_head=n_head, block_size=block_size,
                      **model_kw).validate()
    return cfg, init_params(cfg, seed)


def run_cli(*args, env=None, cwd=REPO, script="train.py"):
    """Run a CLI entry point as a user would; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def names_file(tmp_path):
    """A small dataset written by the test itself."""
    path = tmp_path / "names.txt"
    path.write_text("\n".join(read_names(300)) + "\n")
    return path


@pytest.fixture
def train_cfg():
    return TrainConfig(num_steps=20).validate()

"""Sampling: temperature, top-k and top-p filtering, prompts, determinism and the length limit."""

import math

import pytest

from microgpt import UserError
from microgpt.config import SampleConfig
from microgpt.sampling import next_token_distribution, sample
from microgpt.tokenizers import build_tokenizer

LOGITS = [2.0, 1.0, 0.0, -1.0]


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_temperature_one_is_softmax_and_low_temperature_sharpens():
    assert next_token_distribution(LOGITS, SampleConfig(temperature=1.0)) == pytest.approx(softmax(LOGITS))
    cold = next_token_distribution(LOGITS, SampleConfig(temperature=0.1))
    assert cold[0] > 0.9999


def test_top_k_keeps_k_tokens_renormalised():
    p = next_token_distribution(LOGITS, SampleConfig(temperature=1.0, top_k=2))
    full = softmax(LOGITS)
    assert p[2] == p[3] == 0.0
    assert p[:2] == pytest.approx([full[0] / (full[0] + full[1]), full[1] / (full[0] + full[1])])


def test_top_p_keeps_the_smallest_nucleus():
    full = softmax(LOGITS)  # ~ [0.644, 0.237, 0.087, 0.032]
    p = next_token_distribution(LOGITS, SampleConfig(temperature=1.0, top_p=0.7))
    assert p[2] == p[3] == 0.0 and sum(p) == pytest.approx(1.0)
    p = next_token_distribution(LOGITS, SampleConfig(temperature=1.0, top_p=0.5))
    assert p == [1.0, 0.0, 0.0, 0.0]
    assert full[0] < 0.7


class Bigram:
    """A fake model: after token t it strongly prefers t + 1, and BOS after 'c'."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, tokens):
        last = tokens[-1]
        nxt = 0 if last == self.tok.bos_id else (last + 1 if last + 1 < self.tok.bos_id else self.tok.bos_id)
        return [10.0 if i == nxt else 0.0 for i in range(self.tok.vocab_size)]


def test_sample_follows_model_respects_prompt_and_length():
    tok = build_tokenizer("char", ["abc"], ["abc"])
    model = Bigram(tok)
    assert sample(model, tok, 8, SampleConfig(num_samples=2, temperature=0.1)) == ["abc", "abc"]
    assert sample(model, tok, 8, SampleConfig(num_samples=1, temperature=0.1, prompt="b")) == ["bc"]
    assert sample(model, tok, 2, SampleConfig(num_samples=1, temperature=0.1)) == ["ab"]  # block size caps length
    cfg = SampleConfig(num_samples=5, temperature=5.0, seed=3)
    assert sample(model, tok, 8, cfg) == sample(model, tok, 8, cfg)  # seeded: reproducible


def test_bad_prompts_are_user_errors():
    tok = build_tokenizer("char", ["abc"], ["abc"])
    with pytest.raises(UserError, match="not in the vocabulary"):
        sample(Bigram(tok), tok, 8, SampleConfig(prompt="xyz"))
    with pytest.raises(UserError, match="must be shorter than the sample length"):
        sample(Bigram(tok), tok, 3, SampleConfig(prompt="abc"))

"""microgpt.tokenizers: char / word / bpe vocabularies, round trips, serialisation and errors."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from microgpt import UserError
from microgpt.data import split_documents
from microgpt.tokenizers import (BPETokenizer, build_tokenizer, learn_bpe_merges, tokenizer_from_dict, wrap)
from conftest import read_names

REPO = Path(__file__).resolve().parent.parent
DOCS = ["emma", "olivia", "ava", "isabella", "sophia", "anna", "hannah", "mia maria", "ann-marie"]


def names_docs():
    """names.txt when available, else synthetic names over the same 26 letters (the same char mapping)."""
    return read_names()


def naive_bpe(docs, alphabet, num_merges):
    """Reference BPE: recount every pair from scratch before each merge."""
    seqs = [[alphabet.index(ch) for ch in doc] for doc in docs]
    merges = []
    for _ in range(num_merges):
        counts = Counter(p for seq in seqs for p in zip(seq, seq[1:]))
        if not counts or max(counts.values()) < 2:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        new_id = len(alphabet) + len(merges)
        merges.append(pair)
        for s, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if seq[i:i + 2] == list(pair):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[s] = out
    return merges, seqs


# ----------------------------------------------------------------------------- char

def test_char_mapping_for_names():
    docs = names_docs()
    train, _ = split_documents(docs, 0.1, 42)
    tok = build_tokenizer("char", train, docs)
    assert tok.kind == "char" and tok.vocab_size == 27 and tok.bos_id == 26
    assert tok.encode("abcdefghijklmnopqrstuvwxyz") == list(range(26))
    assert tok.encode("emma") == [4, 12, 12, 0]
    assert tok.decode([26, 4, 12, 12, 0, 26]) == "emma"


def test_char_vocabulary_covers_validation_docs():
    train, val = ["abc"], ["xyz"]
    tok = build_tokenizer("char", train, train + val)
    assert tok.decode(tok.encode("zax")) == "zax"


def test_char_unknown_character_is_a_user_error():
    tok = build_tokenizer("char", ["abc"], ["abc"])
    with pytest.raises(UserError, match=r"character 'X' is not in the vocabulary \(known: abc\)"):
        tok.encode("aXb")


# ----------------------------------------------------------------------------- word

def test_word_tokenizer_uses_train_words_and_unk():
    train = ["the cat sat", "the  dog"]
    tok = build_tokenizer("word", train, train + ["a bird sang"])
    assert tok.tokens == ["cat", "dog", "sat", "the", "<unk>"]
    assert tok.vocab_size == 6 and tok.bos_id == 5 and tok.unk_id == 4
    assert tok.encode("the  cat\tsat ") == [3, 0, 2]
    assert tok.decode(tok.encode(" the cat   sat")) == "the cat sat"
    assert tok.encode("the bird sat") == [3, 4, 2]
    assert tok.decode([5, 3, 4, 5]) == "the <unk>"


# ----------------------------------------------------------------------------- bpe

def test_bpe_round_trip_and_compression():
    tok = build_tokenizer("bpe", DOCS, DOCS, bpe_merges=20)
    assert tok.kind == "bpe" and tok.vocab_size == len(set("".join(DOCS))) + len(tok.merges) + 1
    for doc in DOCS + ["hannahemma", "a", ""]:
        assert tok.decode(tok.encode(doc)) == doc
    assert len(tok.encode("hannah")) < len("hannah")


def test_bpe_matches_naive_reference():
    """The incremental trainer learns the same merges as recounting from scratch, and encode() replays them."""
    docs = names_docs()[:3000] + ["aaaa", "aaa", "abab", "aaaa"]  # repeats and overlapping pairs
    alphabet = sorted(set("".join(docs)))
    merges = learn_bpe_merges(docs, alphabet, 40)
    expected_merges, expected_seqs = naive_bpe(docs, alphabet, 40)
    assert merges == expected_merges and len(merges) == 40
    tok = BPETokenizer(alphabet, merges)
    assert [tok.encode(doc) for doc in docs] == expected_seqs


def test_bpe_ties_and_early_stop():
    # "ab" and "cd" both occur twice: the smaller id pair wins; nothing else repeats, so training stops.
    merges = learn_bpe_merges(["ab", "cd", "ab", "cd", "xy"], list("abcdxy"), 10)
    assert merges == [(0, 1), (2, 3)]


def test_bpe_learns_on_train_docs_only():
    train = ["abab", "abba", "baab"]
    val = ["zqzqzqzqzq"] * 50  # very frequent, but only in validation
    tok = build_tokenizer("bpe", train, train + val, bpe_merges=10)
    assert "zq" not in tok.tokens and "qz" not in tok.tokens
    assert "ab" in tok.tokens
    assert tok.decode(tok.encode("zqab")) == "zqab"  # validation characters are still encodable


def test_bpe_unknown_character_is_a_user_error():
    tok = build_tokenizer("bpe", ["abab"], ["abab"], bpe_merges=3)
    with pytest.raises(UserError, match="character '!' is not in the vocabulary"):
        tok.encode("ab!")


def test_bpe_duplicate_spellings_stay_distinct_tokens():
    tok = BPETokenizer(list("abc"), [(0, 1), (1, 2), (3, 2), (0, 4)])  # "abc" twice: ("ab","c") and ("a","bc")
    assert tok.tokens[5:] == ["abc", "abc"]
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert rebuilt.tokens == tok.tokens and rebuilt.encode("abcabc") == tok.encode("abcabc") == [5, 5]


# ----------------------------------------------------------------------------- shared interface

@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_to_dict_from_dict_is_exact(kind):
    train, val = split_documents(DOCS, 0.2, 1)
    tok = build_tokenizer(kind, train, DOCS, bpe_merges=12)
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == kind
    rebuilt = tokenizer_from_dict(d)
    assert type(rebuilt) is type(tok) and rebuilt.to_dict() == tok.to_dict()
    assert rebuilt.tokens == tok.tokens and rebuilt.vocab_size == tok.vocab_size and rebuilt.bos_id == tok.bos_id
    for doc in DOCS:
        assert rebuilt.encode(doc) == tok.encode(doc)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_round_trip_and_bos_is_last(kind):
    tok = build_tokenizer(kind, DOCS, DOCS, bpe_merges=12)
    assert tok.bos_id == tok.vocab_size - 1
    for doc in DOCS:
        ids = tok.encode(doc)
        assert tok.bos_id not in ids
        assert tok.decode([tok.bos_id] + ids + [tok.bos_id]) == doc


@pytest.mark.parametrize("d", [
    None, "char", {}, {"kind": "morse"}, {"kind": ["char"]},
    {"kind": "char"}, {"kind": "char", "alphabet": "abc"}, {"kind": "char", "alphabet": ["ab"]},
    {"kind": "char", "alphabet": ["a", "a"]}, {"kind": "char", "alphabet": ["a"], "extra": 1},
    {"kind": "word", "words": ["a b"]}, {"kind": "word", "words": ["a", "<unk>"]}, {"kind": "word", "words": [3]},
    {"kind": "bpe", "alphabet": ["a"], "merges": [[0, 1]]}, {"kind": "bpe", "alphabet": ["a"], "merges": [[0]]},
    {"kind": "bpe", "alphabet": ["a"], "merges": [[-1, 0]]}, {"kind": "bpe", "alphabet": ["a"], "merges": "x"},
    {"kind": "bpe", "alphabet": ["a"], "merges": [[0.0, 0]]},
])
def test_from_dict_rejects_garbage(d):
    with pytest.raises(UserError):
        tokenizer_from_dict(d)


def test_build_rejects_bad_arguments():
    with pytest.raises(UserError, match="--tokenizer must be one of char, word, bpe"):
        build_tokenizer("morse", DOCS, DOCS)
    with pytest.raises(UserError, match="--bpe-merges"):
        build_tokenizer("bpe", DOCS, DOCS, bpe_merges=-1)


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = build_tokenizer("char", ["abc"], ["abc"])
    for bad in ([4], [-1], [1.0]):
        with pytest.raises(UserError):
            tok.decode(bad)


def test_wrap_adds_bos_and_cuts_to_block_size():
    tok = build_tokenizer("char", ["abcdef"], ["abcdef"])
    bos = tok.bos_id
    assert wrap(tok, "abc", 16) == [bos, 0, 1, 2, bos]
    assert wrap(tok, "abcdef", 4) == [bos, 0, 1, 2, 3]
    assert wrap(tok, "", 1) == [bos, bos]
    with pytest.raises(UserError, match="--block-size"):
        wrap(tok, "abc", 0)


# ----------------------------------------------------------------------------- the demo

@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_demo_runs(kind, tmp_path):
    data = tmp_path / "names.txt"
    data.write_text("\n".join(DOCS + read_names(2000)))
    result = subprocess.run([sys.executable, "-m", "microgpt.tokenizers", "--tokenizer", kind, "--data", str(data)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "decoded:   'emma'" in result.stdout
    assert ("merges learned" in result.stdout) == (kind == "bpe")

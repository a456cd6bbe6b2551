"""Tokenizers: text <-> the integer ids the model reads and writes.

Three kinds share one interface. Every vocabulary ends with one special token, BOS (id
``vocab_size - 1``), that marks both the start and the end of a document:

    char  one token per character (the default, as in Karpathy's microgpt: names.txt gives
          'a'=0 ... 'z'=25, BOS=26). Built from ALL documents so validation never meets an unknown character.
    word  one token per whitespace-separated word of the training documents; words never seen in
          training map to ``<unk>``. decode() joins words with single spaces.
    bpe   byte-pair encoding over characters: start from the character alphabet of all documents and
          greedily merge the most frequent adjacent pair of the TRAINING documents, ``bpe_merges`` times.

Run ``python -m microgpt.tokenizers`` for a tour.
"""

from __future__ import annotations

import operator
import sys
from collections import Counter, defaultdict

from microgpt import UserError, cli
from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import default_dataset, load_documents, split_documents

TOKENIZER_KINDS = ("char", "word", "bpe")
UNK = "<unk>"


class Tokenizer:
    """Shared machinery: ``tokens[i]`` is the text of id i; BOS comes after the last of them."""

    kind = ""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    @property
    def vocab_size(self) -> int:
        return len(self.tokens) + 1

    @property
    def bos_id(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; BOS ids are skipped."""
        return "".join(self._texts(ids))

    def to_dict(self) -> dict:
        """A JSON-able description that ``tokenizer_from_dict`` rebuilds exactly."""
        raise NotImplementedError

    def _texts(self, ids: list[int]) -> list[str]:
        texts = []
        for i in ids:
            try:
                i = operator.index(i)  # accepts NumPy integers from samplers, rejects floats
            except TypeError:
                raise UserError(f"token ids must be integers (got {i!r})") from None
            if i == self.bos_id:
                continue
            # Reject out-of-range ids explicitly: a negative id would silently index from the end.
            if not 0 <= i < self.bos_id:
                raise UserError(f"token id {i} is outside the vocabulary (0..{self.bos_id})")
            texts.append(self.tokens[i])
        return texts


class CharTokenizer(Tokenizer):
    """One token per character; ids follow the order of ``alphabet``."""

    kind = "char"

    def __init__(self, alphabet: list[str]):
        self.alphabet = _check_alphabet(alphabet)
        super().__init__(list(alphabet))
        self._ids = {ch: i for i, ch in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        return _encode_chars(text, self._ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alphabet": list(self.alphabet)}


class WordTokenizer(Tokenizer):
    """One token per whitespace-separated word; unknown words become ``<unk>`` (id ``len(words)``)."""

    kind = "word"

    def __init__(self, words: list[str]):
        if not isinstance(words, list) or not all(isinstance(w, str) and w and w.split() == [w] for w in words):
            raise UserError("word tokenizer: words must be a list of non-empty strings without whitespace")
        if len(set(words)) != len(words) or UNK in words:
            raise UserError(f"word tokenizer: words must be unique and must not include {UNK}")
        super().__init__(words + [UNK])
        self.words = words
        self.unk_id = len(words)
        self._ids = {w: i for i, w in enumerate(words)}

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(word, self.unk_id) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self._texts(ids))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": list(self.words)}


class BPETokenizer(Tokenizer):
    """Characters of ``alphabet``, then one token per merge: merge k joins ids (a, b) into id ``len(alphabet) + k``.

    Merges are stored as id pairs, not strings, because two merges may spell the same text
    (("ab", "c") and ("a", "bc")) and still be different tokens.
    """

    kind = "bpe"

    def __init__(self, alphabet: list[str], merges: list[tuple[int, int]]):
        self.alphabet = _check_alphabet(alphabet)
        tokens = list(alphabet)
        for pair in merges:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens) for i in pair)):
                raise UserError(f"bpe tokenizer: merge {len(tokens) - len(alphabet)} must be a pair of "
                                f"existing token ids below {len(tokens)} (got {pair!r})")
            tokens.append(tokens[pair[0]] + tokens[pair[1]])
        super().__init__(tokens)
        self.merges = [tuple(pair) for pair in merges]
        self._char_to_id = {ch: i for i, ch in enumerate(alphabet)}
        # Lower new id = learned earlier = applied first.
        self._merge_id = {pair: len(alphabet) + k for k, pair in enumerate(self.merges)}

    def encode(self, text: str) -> list[int]:
        ids = _encode_chars(text, self._char_to_id)
        # Replaying the merges in learned order reproduces exactly how training segmented the text.
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._merge_id.get(p, sys.maxsize))
            if pair not in self._merge_id:
                break
            ids = _merge(ids, pair, self._merge_id[pair])
        return ids

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alphabet": list(self.alphabet), "merges": [list(p) for p in self.merges]}


def _check_alphabet(alphabet) -> list[str]:
    if not isinstance(alphabet, list) or not all(isinstance(ch, str) and len(ch) == 1 for ch in alphabet):
        raise UserError("tokenizer alphabet must be a list of single characters")
    if len(set(alphabet)) != len(alphabet):
        raise UserError("tokenizer alphabet has repeated characters")
    return alphabet


def _encode_chars(text: str, char_to_id: dict[str, int]) -> list[int]:
    try:
        return [char_to_id[ch] for ch in text]
    except KeyError as e:
        known = "".join(char_to_id)
        if len(known) > 80:
            known = known[:80] + "…"
        raise UserError(f"character {e.args[0]!r} is not in the vocabulary (known: {known})") from None


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every non-overlapping occurrence of ``pair`` (scanning left to right) replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def learn_bpe_merges(docs: list[str], alphabet: list[str], num_merges: int) -> list[tuple[int, int]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair across ``docs``.

    Pairs never span two documents. Ties go to the smallest (left id, right id), so the result does
    not depend on dictionary order. Stops early once no pair occurs twice (a pair seen once would
    only memorise that one document).
    """
    char_to_id = {ch: i for i, ch in enumerate(alphabet)}
    # Identical documents train identically: work on distinct ones, weighted by how often they occur.
    seqs, weights = [], []
    for doc, count in Counter(docs).items():
        seqs.append([char_to_id[ch] for ch in doc])
        weights.append(count)
    # Pair counts are updated incrementally; only documents containing the merged pair are rescanned.
    pair_counts = Counter()
    docs_with = defaultdict(set)
    for d, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += weights[d]
            docs_with[pair].add(d)
    merges = []
    while len(merges) < num_merges and pair_counts:
        pair = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[pair] < 2:
            break
        new_id = len(alphabet) + len(merges)
        merges.append(pair)
        for d in docs_with.pop(pair):
            old, w = seqs[d], weights[d]
            for p in zip(old, old[1:]):
                pair_counts[p] -= w
            seqs[d] = new = _merge(old, pair, new_id)
            for p in zip(new, new[1:]):
                pair_counts[p] += w
                docs_with[p].add(d)
        pair_counts = +pair_counts  # drop pairs whose count fell to zero
    return merges


def build_tokenizer(kind: str, train_docs: list[str], all_docs: list[str], bpe_merges: int = 64) -> Tokenizer:
    """A tokenizer of ``kind`` fitted to the data: alphabets from ``all_docs``, learned parts from ``train_docs``."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)} (got {kind!r})")
    alphabet = sorted(set("".join(all_docs)))
    if kind == "char":
        return CharTokenizer(alphabet)
    if kind == "word":
        return WordTokenizer(sorted({word for doc in train_docs for word in doc.split()} - {UNK}))
    if not isinstance(bpe_merges, int) or isinstance(bpe_merges, bool) or bpe_merges < 0:
        raise UserError(f"--bpe-merges must be an integer >= 0 (got {bpe_merges!r})")
    missing = set("".join(train_docs)) - set(alphabet)
    if missing:
        raise UserError(f"training documents use characters missing from all_docs: {''.join(sorted(missing))!r}")
    return BPETokenizer(alphabet, learn_bpe_merges(train_docs, alphabet, bpe_merges))


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_dict()`` output (e.g. read back from a checkpoint)."""
    fields = {"char": {"kind", "alphabet"}, "word": {"kind", "words"}, "bpe": {"kind", "alphabet", "merges"}}
    if not isinstance(d, dict):
        raise UserError(f"tokenizer description must be a dict (got {type(d).__name__})")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in fields:
        raise UserError(f"tokenizer kind must be one of {', '.join(TOKENIZER_KINDS)} (got {kind!r})")
    if set(d) != fields[kind]:
        raise UserError(f"{kind} tokenizer needs exactly the keys {', '.join(sorted(fields[kind]))} "
                        f"(got {', '.join(sorted(map(str, d)))})")
    if kind == "char":
        return CharTokenizer(d["alphabet"])
    if kind == "word":
        return WordTokenizer(d["words"])
    if not isinstance(d["merges"], list):
        raise UserError("bpe tokenizer: merges must be a list of [left id, right id] pairs")
    return BPETokenizer(d["alphabet"], d["merges"])


def wrap(tokenizer: Tokenizer, text: str, block_size: int) -> list[int]:
    """The model's view of one document: ``[BOS] + encode(text) + [BOS]``, cut to ``block_size + 1`` ids."""
    if not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"--block-size must be an integer >= 1 (got {block_size!r})")
    return ([tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.bos_id])[:block_size + 1]


def wrap_all(tokenizer: Tokenizer, texts: list[str], block_size: int) -> tuple[list[list[int]], int, int]:
    """``wrap`` of every text, and what the cut dropped: (wrapped, how many were cut, the longest
    wrapped length before the cut), so that a caller can say once how much of its data the block loses."""
    if not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"--block-size must be an integer >= 1 (got {block_size!r})")
    out, cut, longest = [], 0, 0
    for text in texts:
        ids = [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.bos_id]
        longest = max(longest, len(ids))
        cut += len(ids) > block_size + 1
        out.append(ids[:block_size + 1])
    return out, cut, longest


def demo(argv: list[str] | None = None) -> None:
    """The teaching demo: one real document through the tokenizer and back."""
    parser = cli.OneLineErrorParser(prog="python -m microgpt.tokenizers", description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char")
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="text files or directories of *.txt (default: names.txt, see python -m microgpt.data)")
    parser.add_argument("--bpe-merges", type=int, default=64, help="number of BPE merges to learn")
    args = parser.parse_args(argv)
    docs = load_documents(args.data or [str(default_dataset())])
    train_cfg = TrainConfig()
    train, _ = split_documents(docs, train_cfg.val_fraction, train_cfg.seed)
    tok = build_tokenizer(args.tokenizer, train, docs, bpe_merges=args.bpe_merges)
    doc = docs[0]
    block_size = ModelConfig().block_size
    ids, wrapped = tok.encode(doc), wrap(tok, doc, block_size)
    shown = [f"{i}={t!r}" for i, t in enumerate(tok.tokens)]
    if len(shown) > 40:
        shown = shown[:30] + [f"... ({len(shown) - 40} more) ..."] + shown[-10:]
    print(f"{tok.kind} tokenizer, vocab_size {tok.vocab_size}: {' '.join(shown)} {tok.bos_id}=BOS")
    if isinstance(tok, BPETokenizer):
        first = [f"{tok.tokens[a]!r}+{tok.tokens[b]!r}" for a, b in tok.merges[:10]]
        print(f"{len(tok.merges)} merges learned on {len(train)} training docs, first: {', '.join(first)}")
    print(f"document:  {doc!r}")
    print(f"encode:    {ids}  (pieces: {[tok.tokens[i] for i in ids]})")
    print(f"wrapped:   {wrapped}  (BOS={tok.bos_id} at both ends, cut to block_size + 1 = {block_size + 1})")
    print(f"decoded:   {tok.decode(wrapped)!r}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(demo, argv)


if __name__ == "__main__":
    sys.exit(main())

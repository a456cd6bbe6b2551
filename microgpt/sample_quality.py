"""How much a set of sampled names looks like the data: a few numbers any two generators can be compared on.

Loss says how well a model predicts; these say what its samples are like, which is where a sampler's
flaws show (a loss can be good while the sampler collapses onto a few short names):

  * distinct   -- the fraction of samples that differ from every other (1.0: no repeats). The data itself
                  repeats a little, so a reference row of real names is printed beside the models.
  * in train   -- the share of samples that are names of the training set: high means the model recites,
                  near zero means it makes up strings; real held-out names score near zero too.
  * empty      -- samples with no characters (the model ended the name at once).
  * mean len   -- characters per sample, beside the data's.
  * len TV     -- the total-variation distance between the sample lengths' distribution and the training
                  names' (0: the same, 1: disjoint), lengths cut at ``max_len`` as training cuts them.

Pure functions on strings: no model, no tokenizer.
"""

from __future__ import annotations

from collections import Counter

COLUMNS = ("samples", "distinct", "in_train", "empty", "mean_len", "len_tv")


def length_distribution(names: list[str], max_len: int | None = None) -> dict[int, float]:
    """length -> fraction of ``names`` with that many characters (lengths over ``max_len`` counted as it)."""
    if not names:
        return {}
    counts = Counter(min(len(n), max_len) if max_len else len(n) for n in names)
    return {length: c / len(names) for length, c in sorted(counts.items())}


def total_variation(p: dict, q: dict) -> float:
    """Half the L1 distance between two distributions given as value -> probability."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def sample_quality(samples: list[str], train_names: list[str], max_len: int | None = None) -> dict:
    """The numbers in the module docstring for ``samples`` against the training names."""
    if not samples:
        raise ValueError("sample quality needs at least one sample")
    if not train_names:
        raise ValueError("sample quality needs the training names")
    known = set(train_names)
    return {
        "samples": len(samples),
        "distinct": len(set(samples)) / len(samples),
        "in_train": sum(s in known for s in samples) / len(samples),
        "empty": sum(not s for s in samples) / len(samples),
        "mean_len": sum(len(s) for s in samples) / len(samples),
        "data_mean_len": sum(min(len(n), max_len) if max_len else len(n) for n in train_names) / len(train_names),
        "len_tv": total_variation(length_distribution(samples, max_len), length_distribution(train_names, max_len)),
        "lengths": length_distribution(samples, max_len),
    }


def quality_table(rows: dict[str, dict]) -> list[str]:
    """One line per generator (label -> sample_quality result), with a header, for a terminal."""
    width = max(len(label) for label in rows)
    lines = [f"{'':<{width}} | samples | distinct | in train | empty | mean len | len TV"]
    for label, q in rows.items():
        lines.append(f"{label:<{width}} | {q['samples']:>7} | {q['distinct']:>8.3f} | {q['in_train']:>8.3f} | "
                     f"{q['empty']:>5.3f} | {q['mean_len']:>8.2f} | {q['len_tv']:>6.3f}")
    return lines

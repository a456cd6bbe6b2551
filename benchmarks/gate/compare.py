"""Deciding: one verdict per benchmark, and how a comparison is printed."""

from __future__ import annotations

import fnmatch
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from microgpt import UserError

from benchmarks.gate.results import load_history, text_table, write_text_atomic
from benchmarks.gate.environment import fingerprint, machine_differences, python_differences
from benchmarks.gate.stats import round_model, run_model, sum_of_squares, t_ppf

DEFAULT_ALPHA = 0.01
DEFAULT_THRESHOLD = 0.05              # times: a smaller change is lost in any machine's noise
DEFAULT_COUNT_THRESHOLD = 0.01        # instruction counts: deterministic, so 1% is a real change


@dataclass
class Verdict:
    id: str
    metric: str
    # "regression", "faster", "no change", "inconclusive", "untestable", "only in base", "only in current"
    verdict: str
    threshold: float
    base_ms: float | None = None      # the base's and the current median (of instructions too, for that metric)
    cur_ms: float | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None        # one-sided, in the direction of the observed change
    n: tuple[int, int] = (0, 0)   # samples (pairs for ab), or runs for separate runs
    paired: bool = False          # samples taken in interleaved pairs (ab): t test on the rounds' ratios
    note: str = ""
    base_samples: list[float] = field(default_factory=list, repr=False)
    cur_samples: list[float] = field(default_factory=list, repr=False)
    runs: bool = False            # separate runs judged by the run-level model (n counts runs)
    rounds: int = 0               # paired: the rounds (process pairs) the pairs came from, the test's unit


def _finite(bench_id: str, metric: str, threshold: float, base: list[float], cur: list[float],
            paired: bool) -> Verdict:
    """A verdict shell holding the finite samples, "untestable" until a test says more."""
    if paired:
        kept = [(b, c) for b, c in zip(base, cur) if math.isfinite(b) and math.isfinite(c)]
        clean_b, clean_c = [b for b, _ in kept], [c for _, c in kept]
    else:
        clean_b = [x for x in base if math.isfinite(x)]
        clean_c = [x for x in cur if math.isfinite(x)]
    dropped = len(base) + len(cur) - len(clean_b) - len(clean_c)
    return Verdict(bench_id, metric, "untestable", threshold, n=(len(clean_b), len(clean_c)), paired=paired,
                   note=f"{dropped} non-finite sample(s) dropped" if dropped else "", base_samples=clean_b,
                   cur_samples=clean_c)


def _add_note(v: Verdict, note: str) -> Verdict:
    v.note = "; ".join(filter(None, [v.note, note]))
    return v


def _decide(v: Verdict, p_slower: float, p_faster: float, alpha: float) -> Verdict:
    v.p = p_slower if v.ratio >= 1 else p_faster
    if p_slower < alpha and v.ratio > 1 + v.threshold:
        v.verdict = "regression"
    elif p_faster < alpha and v.ratio < 1 / (1 + v.threshold):
        v.verdict = "faster"
    else:
        v.verdict = "no change"
    return v


def _by_model(v: Verdict, model, alpha: float, unknown: str, hint: str) -> Verdict:
    """The verdict of a t model (stats.RunModel): "regression" / "faster" need its test (p < alpha) and the
    floor; "no change" needs its 95% interval inside the floor on both sides; anything else is
    "inconclusive" (``unknown`` says why when nothing measured the noise, ``hint`` what would tell)."""
    v.ratio, v.ci = math.exp(model.log_ratio), model.ci()
    if model.se is None:
        v.verdict = "inconclusive"
        return _add_note(v, unknown)
    _decide(v, model.p_slower(), model.p_faster(), alpha)
    if v.verdict == "no change" and not (1 / (1 + v.threshold) < v.ci[0] and v.ci[1] < 1 + v.threshold):
        v.verdict = "inconclusive"
        _add_note(v, f"the noise (±{(math.exp(t_ppf(0.975, model.df) * model.se) - 1):.0%} at 95%, {model.df} df) is "
                     f"wider than the floor; {hint}")
    return v


def round_values(rounds: list[tuple[list[float], list[float]]]) -> list[float]:
    """One value per round of interleaved pairs: the median of its pairs' log ratios (head over base),
    robust to one sample caught by a burst; rounds without a finite positive pair are left out."""
    values = []
    for base, cur in rounds:
        d = [math.log(c / b) for b, c in zip(base, cur) if math.isfinite(b) and math.isfinite(c) and min(b, c) > 0]
        if d:
            values.append(statistics.median(d))
    return values


def judge(bench_id: str, rounds: list[tuple[list[float], list[float]]], threshold: float = DEFAULT_THRESHOLD,
          alpha: float = DEFAULT_ALPHA, metric: str = "wall") -> Verdict:
    """Interleaved pairs (``ab``), grouped by round: ``rounds[r]`` = (base samples, head samples) of round r,
    where one base and one head process took turns, ``base[i]`` and ``cur[i]`` timing the same batches
    moments apart. Load that comes and goes cancels within a pair; what the two processes bring with them
    for the whole round does not, so the pairs of a round are not independent and the test is on rounds
    (stats.round_model): a regression needs its t test (p < alpha) *and* a ratio above the floor, and with
    one round, or rounds that disagree, the verdict is "inconclusive"."""
    kept = []
    for base, cur in rounds:
        if len(base) != len(cur):
            raise ValueError(f"{bench_id}: paired samples need equal lengths ({len(base)} and {len(cur)})")
        kept.append([(b, c) for b, c in zip(base, cur) if math.isfinite(b) and math.isfinite(c)])
    v = _finite(bench_id, metric, threshold, [x for base, _ in rounds for x in base],
                [x for _, cur in rounds for x in cur], paired=True)
    if min(v.n) < 2:
        return _add_note(v, f"needs >= 2 finite samples per side (has {v.n[0]} and {v.n[1]})")
    if min(v.base_samples + v.cur_samples) <= 0:
        return _add_note(v, "a time of zero cannot be compared")
    v.base_ms, v.cur_ms = statistics.median(v.base_samples), statistics.median(v.cur_samples)
    values = round_values([([b for b, _ in r], [c for _, c in r]) for r in kept])
    v.rounds = len(values)
    model = round_model(values)
    return _by_model(v, model, alpha, "one round: the noise between rounds (between processes) is unknown; "
                                      "`--rounds 3` or more", "more rounds (`--rounds`) narrow it")


def judge_runs(bench_id: str, base_runs: list[list[float]], cur_runs: list[list[float]],
               threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA, metric: str = "cpu",
               history: list[float] = (), pooled: tuple[float, int] | None = None) -> Verdict:
    """Separate runs (``compare`` of two files), each a list of samples: the run-level model of
    stats.run_model, judged as ``_by_model`` says: "inconclusive" when the runs cannot tell a change of
    the floor's size from the machine's run-to-run noise (or that noise is unknown: one run per side and
    no history)."""
    base_runs = [[x for x in r if math.isfinite(x)] for r in base_runs]
    cur_runs = [[x for x in r if math.isfinite(x)] for r in cur_runs]
    v = _finite(bench_id, metric, threshold, [x for r in base_runs for x in r], [x for r in cur_runs for x in r],
                paired=False)
    base_runs, cur_runs = [r for r in base_runs if r], [r for r in cur_runs if r]
    if not base_runs or not cur_runs:
        return _add_note(v, "no finite sample on one side")
    v.base_ms, v.cur_ms = statistics.median(v.base_samples), statistics.median(v.cur_samples)
    medians = [statistics.median(r) for r in base_runs + cur_runs]
    if min(medians) <= 0:
        return _add_note(v, "a median of zero cannot be compared")
    values = [math.log(m) for m in medians]
    model = run_model(values[:len(base_runs)], values[len(base_runs):], history, pooled)
    v.runs, v.n = True, model.runs
    return _by_model(v, model, alpha, "one run per side and no history on this machine: the run-to-run noise is "
                                      "unknown; `ab` pairs the samples, `update-baseline --runs 3` measures the noise",
                     "`ab` pairs the samples")


def judge_counts(bench_id: str, base: list[float], cur: list[float], threshold: float = DEFAULT_COUNT_THRESHOLD
                 ) -> Verdict:
    """Instruction counts (per step, one per callgrind process): deterministic, so the verdict is the ratio
    of the medians against the floor, with no test. The counts' own spread is reported, and a spread
    wider than half the floor makes the verdict "inconclusive" rather than trusted."""
    v = _finite(bench_id, "instructions", threshold, base, cur, paired=False)
    if not min(v.n):
        return _add_note(v, "no count on one side")
    v.base_ms, v.cur_ms = statistics.median(v.base_samples), statistics.median(v.cur_samples)
    if min(v.base_ms, v.cur_ms) <= 0:
        return _add_note(v, "a count of zero cannot be compared")
    v.ratio = v.cur_ms / v.base_ms
    spread = max(max(s) / min(s) - 1 for s in (v.base_samples, v.cur_samples))
    v.ci = (min(v.cur_samples) / max(v.base_samples), max(v.cur_samples) / min(v.base_samples))
    if spread > threshold / 2:
        v.verdict = "inconclusive"
        return _add_note(v, f"counts of one side spread {spread:.2%}, more than half the floor")
    v.verdict = ("regression" if v.ratio > 1 + threshold else "faster" if v.ratio < 1 / (1 + threshold)
                 else "no change")
    return v


def paired_rounds(b: dict, c: dict, key: str) -> list[tuple[list[float], list[float]]]:
    """The samples two sides took in turns, per round (same round, same position in it): a list of
    (base samples, head samples) of equal lengths, one per round both sides measured."""
    def by_round(rec):
        rounds = {}
        for x, r in zip(rec[key], rec.get("sample_rounds") or [0] * len(rec[key])):
            rounds.setdefault(r, []).append(x)
        return rounds
    rb, rc = by_round(b), by_round(c)
    out = []
    for r in sorted(set(rb) & set(rc)):
        n = min(len(rb[r]), len(rc[r]))
        out.append((rb[r][:n], rc[r][:n]))
    return out


def runs_of(rec: dict, key: str) -> list[list[float]]:
    """A record's samples grouped by the run that took them ("sample_runs"; one run when absent)."""
    runs: dict[int, list[float]] = {}
    for x, r in zip(rec[key], rec.get("sample_runs") or [0] * len(rec[key])):
        runs.setdefault(r, []).append(x)
    return [runs[r] for r in sorted(runs)]


METRICS = ("auto", "cpu", "wall", "instructions")
SAMPLE_KEYS = {"cpu": "cpu_samples_ms", "wall": "samples_ms", "instructions": "instruction_samples"}


def pick_metric(metric: str, b: dict, c: dict) -> str:
    """``auto``: instructions when both records counted them, else CPU time for one-thread benchmarks that
    recorded it on both sides, wall time otherwise (several threads or data-parallel ranks waiting on each
    other, or a device, only show in wall time)."""
    if metric != "auto":
        return metric
    if b.get("instruction_samples") and c.get("instruction_samples"):
        return "instructions"
    has_cpu = bool(b.get("cpu_samples_ms")) and bool(c.get("cpu_samples_ms"))
    one_thread = all(rec.get("threads", 1) == 1 and rec.get("ranks", 1) == 1 for rec in (b, c))
    return "cpu" if has_cpu and one_thread else "wall"


def parse_fraction(text: str, what: str = "--threshold") -> float:
    """'5%' -> 0.05 and '0.05' -> 0.05; a bare number above 1 is refused (it would mean over 100%)."""
    text = text.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"{what} must be a percentage like 5% (or a fraction like 0.05), got {text!r}") from None
    if not text.endswith("%") and number > 1:
        raise UserError(f"{what} {text} would be {number:.0%}: write {text}% for {text} percent, or a fraction <= 1")
    if not 0 <= number < 10:
        raise UserError(f"{what} must be between 0% and 1000% (got {text})")
    return number


def thresholds_from(specs: list[str]) -> tuple[float | None, list[tuple[str, float]]]:
    """``--threshold 5%`` sets the default floor, ``--threshold 'python *=10%'`` one for matching ids."""
    default, patterns = None, []
    for spec in specs:
        pattern, _, value = spec.rpartition("=")
        number = parse_fraction(value, f"--threshold {spec!r}:")
        if pattern:
            patterns.append((pattern, number))
        else:
            default = number
    return default, patterns


def history_values(history: list[dict], base: dict, cur: dict, metric: str) -> dict[str, list[float]]:
    """Per benchmark, the log medians of earlier baselines measured on the current file's machine and
    Python build (history entries keyed by environment.fingerprint), leaving out the runs of the files
    being compared (update-baseline puts the baseline's own runs into the history too)."""
    env = cur.get("environment") or {}
    key = env.get("fingerprint") or fingerprint(env)
    field_name = {"cpu": "cpu_ms_per_step", "wall": "ms_per_step", "instructions": "instructions_per_step"}[metric]
    seen = {s for doc in (base, cur) for s in
            ((doc.get("settings") or {}).get("sessions") or [(doc.get("settings") or {}).get("session")])}
    out: dict[str, list[float]] = {}
    for e in history:
        if e.get("fingerprint") != key or e.get("session") in seen:
            continue
        for bench_id, b in (e.get("benchmarks") or {}).items():
            value = b.get(field_name)
            if isinstance(value, (int, float)) and value > 0:
                out.setdefault(bench_id, []).append(math.log(value))
    return out


def interleaved(base: dict, cur: dict) -> bool:
    """Whether two results files are the two sides of one interleaved session (``ab``), not separate runs."""
    session = (base.get("settings") or {}).get("session")
    return session is not None and session == (cur.get("settings") or {}).get("session")


def compare_results(base: dict, cur: dict, metric: str = "auto", alpha: float = DEFAULT_ALPHA,
                    thresholds: list[str] | None = None, history: list[dict] | None = None) -> list[Verdict]:
    """One verdict per benchmark id found in either file (sorted as in the current file): paired when both
    files come from one interleaved session (``ab``), by the run-level model for separate runs (with
    ``history``, the entries of a baseline history, for the noise between runs), by ratio for counts."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1) (got {alpha})")
    default, patterns = thresholds_from(thresholds or [])
    paired = interleaved(base, cur)
    b_by_id = {r["id"]: r for r in base["results"]}
    c_by_id = {r["id"]: r for r in cur["results"]}
    if not set(b_by_id) & set(c_by_id):
        raise UserError("the two files have no benchmark in common (different matrices or engines?)")
    plans = []
    for bench_id in list(c_by_id) + [i for i in b_by_id if i not in c_by_id]:
        b, c = b_by_id.get(bench_id), c_by_id.get(bench_id)
        m = pick_metric(metric, b or c, c or b)
        threshold = (c or b).get("threshold",
                                 default if default is not None else DEFAULT_COUNT_THRESHOLD if m == "instructions"
                                 else DEFAULT_THRESHOLD)
        for pattern, value in patterns:
            if fnmatch.fnmatchcase(bench_id, pattern):
                threshold = value
        if b is not None and c is not None:
            key = SAMPLE_KEYS[m]
            if not b.get(key) or not c.get(key):
                raise UserError(f"--metric {m}: {bench_id} has no {key} in both files"
                                + ("" if m == "instructions" else " (use --metric wall)"))
        plans.append((bench_id, b, c, m, threshold))
    # the run-to-run variance of all benchmarks together, lent to each (stats.noise)
    by_metric: dict[str, dict[str, list[float]]] = {}
    groups = []
    for bench_id, b, c, m, _ in plans:
        if b is None or c is None or paired or m == "instructions":
            continue
        hist = by_metric.setdefault(m, history_values(history or [], base, cur, m))
        for rec in (b, c):
            groups.append([math.log(statistics.median(r)) for r in runs_of(rec, SAMPLE_KEYS[m]) if r and min(r) > 0])
        groups.append(hist.get(bench_id, []))
    ss, df = sum_of_squares(groups)
    pooled = (ss / df, df) if df else None
    busy = busy_machine(base, cur)
    verdicts = []
    for bench_id, b, c, m, threshold in plans:
        if b is None or c is None:
            verdicts.append(Verdict(bench_id, "-", "only in current" if b is None else "only in base", threshold))
            continue
        key = SAMPLE_KEYS[m]
        label = (c.get("timer") or m).rsplit(".", 1)[-1]       # pytest-benchmark names its timer
        if m == "instructions":
            verdicts.append(judge_counts(bench_id, b[key], c[key], threshold))
        elif paired:
            verdicts.append(judge(bench_id, paired_rounds(b, c, key), threshold, alpha, label))
            verdicts[-1].paired = True
        else:
            verdicts.append(judge_runs(bench_id, runs_of(b, key), runs_of(c, key), threshold, alpha, label,
                                       by_metric.get(m, {}).get(bench_id, []), pooled))
            if busy and verdicts[-1].verdict in ("regression", "faster"):
                _add_note(verdicts[-1], f"{verdicts[-1].verdict} by the runs, but {busy}")
                verdicts[-1].verdict = "inconclusive"
    return verdicts


def busy_machine(base: dict, cur: dict) -> str:
    """Why separate runs cannot be judged at all, or "": a run that shared its machine with more runnable
    jobs than it has CPUs (1-minute load average). Run-to-run noise is then heavy-tailed (2.8x in one
    A/A run at load 10 on 2 CPUs), beyond what a few runs can estimate."""
    for side, doc in (("base", base), ("current", cur)):
        load = (doc.get("settings") or {}).get("load_average")
        cpus = (doc.get("environment") or {}).get("machine", {}).get("cpus")
        if load and cpus and load[1] > cpus:
            return (f"the {side} run shared a busy machine (load average up to {load[1]:g} on {cpus} CPUs); "
                    f"`ab` pairs the samples so that load cancels")
    return ""


# ----------------------------------------------------------------------------------------------------
# Printing a comparison


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.4g}"


def _fmt_pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%" if math.isfinite(ratio) else "inf"


def verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    """Table rows of the benchmarks both files measured (the others are listed by ``unmatched``)."""
    rows = []
    for v in verdicts:
        if v.verdict.startswith("only in"):
            continue
        ci = f"[{_fmt_pct(v.ci[0])}, {_fmt_pct(v.ci[1])}]" if v.ci else "-"
        p = "-" if v.p is None else ("<0.001" if v.p < 0.001 else f"{v.p:.3f}")
        label = v.verdict.upper() if v.verdict == "regression" else v.verdict
        n = f"{v.rounds} rounds, {v.n[0]} pairs" if v.paired else f"{v.n[0]}+{v.n[1]}" + (" runs" if v.runs else "")
        rows.append([v.id, v.metric, n, _fmt_ms(v.base_ms), _fmt_ms(v.cur_ms),
                     _fmt_pct(v.ratio) if v.ratio else "-", ci, p, f"{v.threshold:.0%}",
                     label + (f" ({v.note})" if v.note else "")])
    return rows


HEADER = ["benchmark", "metric", "n", "base", "current", "change", "95% CI", "p", "floor", "verdict"]
KINDS = ("regression", "faster", "no change", "inconclusive", "untestable", "only in base", "only in current")


def unmatched(verdicts: list[Verdict]) -> list[str]:
    """One line per file for the benchmarks only it has (other matrices, engines missing on one side)."""
    lines = []
    for kind in ("only in base", "only in current"):
        ids = [v.id for v in verdicts if v.verdict == kind]
        if ids:
            lines.append(f"{kind} ({len(ids)}): {', '.join(ids)}")
    return lines


def summary_line(verdicts: list[Verdict]) -> str:
    counts = Counter(v.verdict for v in verdicts)
    return f"{len(verdicts)} benchmarks: " + ", ".join(f"{counts[k]} {k}" for k in KINDS if counts[k])


def method(verdicts: list[Verdict], alpha: float) -> str:
    """One sentence per kind of test the verdicts used."""
    said = []
    if any(v.paired for v in verdicts):
        said.append(f"interleaved pairs: each round (one process per side) a median ratio, a one-sided t test on "
                    f"the rounds (p < {alpha:g}) *and* a change above the floor; inconclusive when the rounds "
                    f"cannot tell the floor from their noise")
    if any(v.runs for v in verdicts):
        said.append(f"separate runs: the run as a random effect (Student's t on run medians, p < {alpha:g}, the "
                    f"noise between runs from the runs and this machine's history) *and* a change above the floor; "
                    f"inconclusive when the runs cannot tell the floor from that noise")
    if any(v.metric == "instructions" for v in verdicts):
        said.append("instructions per step under callgrind: deterministic, the ratio against the floor")
    return "; ".join(said)


def mermaid_chart(verdicts: list[Verdict], title: str = "change vs base, %") -> str:
    """A Mermaid xychart-beta of each benchmark's change in percent, which GitHub draws in a comment and
    a job summary; empty when no benchmark has a ratio."""
    shown = [v for v in verdicts if v.ratio and math.isfinite(v.ratio)]
    if not shown:
        return ""
    changes = [round((v.ratio - 1) * 100, 2) for v in shown]
    top = max(5.0, max(abs(c) for c in changes) * 1.2)
    labels = ", ".join('"' + v.id.replace('"', "'") + '"' for v in shown)
    return "\n".join(["```mermaid", "xychart-beta", f'    title "{title}"', f"    x-axis [{labels}]",
                      f'    y-axis "change (%)" {-top:.1f} --> {top:.1f}', f"    bar [{', '.join(map(str, changes))}]",
                      "```"])


def markdown(verdicts: list[Verdict], warnings: list[str], title: str, alpha: float, extra: str = "") -> str:
    regressions = [v for v in verdicts if v.verdict == "regression"]
    inconclusive = [v for v in verdicts if v.verdict == "inconclusive"]
    head = (f"**{len(regressions)} regression{'s' * (len(regressions) != 1)}**" if regressions
            else "**Inconclusive**" if inconclusive and len(inconclusive) == len([v for v in verdicts if v.ratio])
            else "**No regression**")
    lines = [f"### {title}", "", f"{head} — {summary_line(verdicts)}. {method(verdicts, alpha)[:1].upper()}"
             f"{method(verdicts, alpha)[1:]}. `cpu` = process CPU time (one-thread benchmarks), `wall` = elapsed "
             f"time.", ""]
    lines += [f"> :warning: {w}" for w in warnings] + ([""] if warnings else [])
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 2) + ["---"]) + "|")
    for row in verdict_rows(verdicts):
        row[0] = f"`{row[0]}`"
        if row[-1].startswith("REGRESSION"):
            row[-1] = f"**{row[-1]}**"
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"_{line}_" for line in unmatched(verdicts)]
    chart = mermaid_chart(verdicts)
    if chart:
        lines += ["", chart]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def comparison_warnings(base: dict, cur: dict) -> list[str]:
    warnings = []
    diffs = machine_differences(base.get("environment", {}), cur.get("environment", {}))
    if diffs:
        warnings.append("DIFFERENT MACHINES: the two files were measured on different hardware ("
                        + "; ".join(diffs) + "), so every ratio mixes code changes with machine changes")
    builds = python_differences(base.get("environment", {}), cur.get("environment", {}))
    if builds:
        warnings.append("DIFFERENT PYTHON BUILDS (" + "; ".join(builds) + "): the same version built differently "
                        "runs pure-Python engines at very different speeds")
    isa_base = {r["id"]: r.get("isa") for r in base.get("results", [])}
    for r in cur.get("results", []):
        if r["id"] in isa_base and isa_base[r["id"]] and r.get("isa") and isa_base[r["id"]] != r["isa"]:
            warnings.append(f"{r['id']} ran the {isa_base[r['id']]} kernels in the base and {r['isa']} in the current "
                            f"results: its ratio mixes instruction sets")
    for side, doc in (("base", base), ("current", cur)):
        if doc.get("environment", {}).get("git", {}).get("dirty"):
            warnings.append(f"the {side} results were measured with uncommitted changes")
        load = (doc.get("settings") or {}).get("load_average")
        cpus = doc.get("environment", {}).get("machine", {}).get("cpus")
        if load and cpus and load[1] > cpus and not interleaved(base, cur):
            warnings.append(f"the {side} run shared a busy machine (1-minute load average up to {load[1]:g} on "
                            f"{cpus} CPUs): other jobs' load is in its times; `benchmark.py ab` cancels it")
    return warnings


def draw_distributions(verdicts: list[Verdict], stem: str) -> list[str]:
    """The sample distributions as .svg and .png, or nothing with a note when matplotlib is missing
    (compare and ab must work on a bare install)."""
    try:
        import report_charts
        return [str(p) for p in report_charts.distribution_chart(verdicts, stem)]
    except ImportError as e:
        print(f"note: charts skipped ({e.name or e} is not installed)", file=sys.stderr)
        return []


def report_comparison(base: dict, cur: dict, args, title: str) -> int:
    """Print (and optionally write as markdown) the comparison; the exit status of ``compare``."""
    history_path = getattr(args, "history", None)
    history = load_history(Path(history_path))["entries"] if history_path and Path(history_path).exists() else []
    verdicts = compare_results(base, cur, args.metric, args.alpha, args.threshold, history)
    warnings = comparison_warnings(base, cur)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    print(text_table(verdict_rows(verdicts), HEADER))
    for line in unmatched(verdicts):
        print(line)
    print(summary_line(verdicts))
    if any(v.verdict == "inconclusive" for v in verdicts):
        if interleaved(base, cur):     # ab: the sides were interleaved already
            print("inconclusive: these benchmarks' rounds disagree by more than the floor; more rounds "
                  "(`--rounds`) narrow it, `--metric instructions` counts deterministically", file=sys.stderr)
        else:
            print("inconclusive: separate runs cannot tell these changes from the machine's run-to-run noise; "
                  "`benchmark.py ab --base REV` measures both sides interleaved, `--metric instructions` counts "
                  "deterministically", file=sys.stderr)
    if args.md:
        write_text_atomic(Path(args.md), markdown(verdicts, warnings, title, args.alpha, getattr(args, "md_extra", "")))
    if args.charts:
        written = draw_distributions(verdicts, args.charts)
        if written:
            print(f"chart: {', '.join(written)}")
    regressions = [v for v in verdicts if v.verdict == "regression"]
    return 1 if regressions and not args.no_fail else 0

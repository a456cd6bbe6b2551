"""Proof of the regression gate: it must not cry wolf, and it must not miss a real slowdown.

    python benchmarks/experiment.py aa                  # 20 interleaved A/A comparisons: expect 0 regressions
    python benchmarks/experiment.py slowdown            # 20 against a ~10% slower train.py: expect >= 19 flagged
    python benchmarks/experiment.py runs-aa --quick     # 20 pairs of separate runs + compare: expect 0 regressions
    python benchmarks/experiment.py instructions        # instruction counts: A/A, a ~2% and a ~10% slowdown

``aa`` and ``slowdown`` are exactly what ``benchmark.py ab`` does on a pull request: ``measure`` with a
side A and a side B whose workers take turns sample by sample, over the "experiment" matrix of
benchmarks/matrix.json (the python and c engines), then ``compare_results`` with the default gate
(metric auto, alpha 0.01, floor 5%). ``runs-aa`` is what a user of ``compare`` does: two separate
``run``s of identical code (here the "quick" matrix, or --matrix), then ``compare`` of the two files
(and of the second against a baseline of the first --baseline-runs runs). ``instructions`` counts the
python and c engines' steps under callgrind (``--metric instructions``) for identical code and for the
two slow variants. The summary goes to stdout and, with every verdict, to ``--out`` as JSON.

The slow variants are real code, not sleeps: a copy of train.py, the reference engine, edited (see
VARIANTS) in a scratch directory that comes first on side B's PYTHONPATH, so its workers import the
slow train.py and everything else from this checkout. ``dot-list`` materialises the products of every
dot product in a list before summing them, ``sum(list(map(mul, a, b)))``: one extra allocation and pass
per dot product, the kind of change that slips into a review, ~7% (one document per step) to ~13%
(eight) more CPU time, +6.3% instructions. ``dot-list-long`` does it only for vectors longer than 16
(+2.3% instructions); ``dot-axpy-list`` also materialises axpy's products (+9.7% instructions). Only the
python benchmarks get slower; the c benchmarks are the control and must stay unflagged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gate.compare import compare_results  # noqa: E402  (after the path is set)
from benchmarks.gate.matrix import load_matrix, resolve_data  # noqa: E402
from benchmarks.gate.results import results_document, write_json_atomic  # noqa: E402
from benchmarks.gate.worker import Side, measure, measure_instructions  # noqa: E402
from microgpt import UserError  # noqa: E402
from microgpt.cli import run_main  # noqa: E402

# train.py edits that cost more: each a list of (an original line, its slower replacement)
DOT_LIST = ("    return sum(map(mul, a, b))", "    return sum(list(map(mul, a, b)))")
AXPY_LIST = ("    return list(map(add, y, map(s.__mul__, x)))", "    return list(map(add, y, list(map(s.__mul__, x))))")
VARIANTS = {
    "dot-list": [DOT_LIST],                                         # ~10% CPU time, +6.3% instructions
    "dot-list-long": [(DOT_LIST[0], "    return sum(list(map(mul, a, b))) if len(a) > 16 else sum(map(mul, a, b))")],
    "dot-axpy-list": [DOT_LIST, AXPY_LIST],                         # +9.7% instructions
}


def variant_root(name: str, parent: Path) -> Path:
    """A directory holding train.py with the ``name`` edit; put first on a worker's PYTHONPATH (the rest
    of the code comes from this checkout, see ``variant_side``)."""
    text = (REPO / "train.py").read_text()
    for old, new in VARIANTS[name]:
        if text.count(old) != 1:
            raise UserError(f"variant {name}: train.py no longer has exactly one {old.strip()!r}")
        text = text.replace(old, new)
    root = parent / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(text)
    return root


def variant_side(name: str, parent: Path) -> Side:
    """Side B running this checkout's worker with the slow train.py first on its path: ``-c`` puts the
    working directory (the variant's) first, where running benchmark.py as a script would put its own."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return Side("B", variant_root(name, parent),
                [sys.executable, "-c", "import sys, benchmark; sys.exit(benchmark.main(['worker']))"])


def verdict_list(verdicts) -> list[dict]:
    return [{"id": v.id, "metric": v.metric, "verdict": v.verdict, "ratio": v.ratio, "p": v.p, "ci": v.ci}
            for v in verdicts]


def comparison(sides: list[Side], settings: dict, cases, data: str, data_info: dict, counted: bool,
               keep: Path | None = None) -> dict:
    """One comparison of side A with every other side: {plan or metric: verdicts}; with ``keep``, each
    side's results document is written there too (``<side>.json``), to judge again offline."""
    warn = lambda message: message.startswith("warning") and print(message, file=sys.stderr, flush=True)
    if counted:
        measured = measure_instructions(sides, cases, settings, data, log=warn, rounds=settings["rounds"])
    else:
        measured = measure(sides, cases, settings, data, log=warn)
    docs = [results_document(measured[s.name], cases, settings, data_info, "experiment", []) for s in sides]
    for s, d in zip(sides, docs if keep else []):
        write_json_atomic(keep / f"{s.name}.json", d)
    if counted:             # every other side against A, counted in the same call
        return {s.name: verdict_list(compare_results(docs[0], d)) for s, d in zip(sides[1:], docs[1:])}
    return {metric: verdict_list(compare_results(docs[0], docs[1], metric=metric)) for metric in ("auto", "wall")}


def summarise(kind: str, runs: list[dict], seconds: float) -> dict:
    """Per metric: comparisons the gate failed, and per benchmark how often each verdict came and its ratios."""
    summary = {"experiment": kind, "comparisons": len(runs), "seconds": round(seconds)}
    for metric in dict.fromkeys(k for run in runs for k in run):
        mine = [run[metric] for run in runs if run.get(metric)]
        per_bench = {}
        for bench_id in [v["id"] for v in mine[0]]:
            verdicts = [next(v for v in run if v["id"] == bench_id) for run in mine]
            ratios = [v["ratio"] for v in verdicts if v["ratio"]]
            per_bench[bench_id] = {"metric": verdicts[0]["metric"],
                                   "verdicts": {k: sum(v["verdict"] == k for v in verdicts)
                                                for k in dict.fromkeys(v["verdict"] for v in verdicts)},
                                   "median_ratio": statistics.median(ratios) if ratios else None,
                                   "ratio_range": [min(ratios), max(ratios)] if ratios else None}
        summary[metric] = {"comparisons": len(mine), "benchmarks": per_bench,
                           "gate_failed": sum(any(v["verdict"] == "regression" for v in run) for run in mine)}
    return summary


def print_summary(s: dict) -> None:
    print(f"\n{s['experiment']}: {s['comparisons']} comparisons in {s['seconds']} s")
    for metric, m in s.items():
        if not isinstance(m, dict) or "benchmarks" not in m:
            continue
        print(f"  {metric}: {m['gate_failed']}/{m['comparisons']} comparisons reported a regression")
        for bench_id, b in m["benchmarks"].items():
            lo, hi = b["ratio_range"] or (float("nan"), float("nan"))
            counts = ", ".join(f"{k} {n}" for k, n in b["verdicts"].items())
            print(f"    {bench_id:<28} [{b['metric']:>12}] {counts}; median ratio {b['median_ratio'] or float('nan'):.4f} "
                  f"(range {lo:.4f}-{hi:.4f})")


def separate_runs(args, data: str) -> list[dict]:
    """``runs-aa``: pairs of separate ``benchmark.py run``s of identical code, each pair compared as a user
    would; the second run of each pair is also compared with a baseline of the first --baseline-runs
    first runs (merged as update-baseline --runs does), which lets the run-level model judge."""
    from benchmarks.gate.results import load_results, merge_runs
    out = Path(tempfile.mkdtemp(prefix="microgpt-runs-aa-"))
    flags = ["--quick"] if args.quick else ["--matrix", args.matrix or "experiment"]
    if args.engines:
        flags += ["--engines", args.engines]
    if data:
        flags += ["--data", data]
    comparisons, firsts = [], []
    for i in range(args.comparisons):
        paths = [out / f"{i}-{side}.json" for side in ("a", "b")]
        for p in paths:
            subprocess.run([sys.executable, str(REPO / "benchmark.py"), "run", *flags, "--quiet", "-o", str(p)],
                           check=True, capture_output=True, text=True)
        a, b = (load_results(p) for p in paths)
        firsts.append(a)
        entry = {"auto": verdict_list(compare_results(a, b))}
        if len(firsts) >= args.baseline_runs:
            entry["baseline"] = verdict_list(compare_results(merge_runs(firsts[:args.baseline_runs]), b))
        comparisons.append(entry)
        print(f"comparison {i + 1}/{args.comparisons}: "
              + "; ".join(f"{k}: {sum(v['verdict'] == 'regression' for v in vs)} regression(s), "
                          f"{sum(v['verdict'] == 'inconclusive' for v in vs)} inconclusive" for k, vs in entry.items()),
              flush=True)
    return comparisons


def experiment(args) -> int:
    if args.comparisons < 1:
        raise UserError(f"--comparisons must be >= 1 (got {args.comparisons})")
    data, data_info = resolve_data(args.data)
    started = time.perf_counter()
    if args.experiment == "runs-aa":
        runs = separate_runs(args, args.data)
        print(f"(comparisons against a baseline start once {args.baseline_runs} first runs exist)")
    else:
        counted = args.experiment == "instructions"
        settings, cases, _ = load_matrix(args.matrix or ("instructions" if counted else "experiment"))
        for key in ("rounds", "samples"):
            if getattr(args, key):
                settings[key] = getattr(args, key)
        with tempfile.TemporaryDirectory(prefix="microgpt-experiment-") as tmp:
            if counted:
                sides = [Side("A", REPO), Side("aa", REPO)]
                for name in ("dot-list-long", "dot-axpy-list"):
                    sides.append(variant_side(name, Path(tmp)))
                    sides[-1].name = name
            elif args.experiment == "slowdown":
                sides = [Side("A", REPO), variant_side("dot-list", Path(tmp))]
            else:
                sides = [Side("A", REPO), Side("B", REPO)]
            runs = []
            for i in range(args.comparisons):
                runs.append(comparison(sides, settings, cases, data, data_info, counted,
                                       Path(args.keep) / str(i + 1) if args.keep else None))
                flagged = {k: [v["id"] for v in vs if v["verdict"] == "regression"] for k, vs in runs[-1].items()}
                print(f"comparison {i + 1}/{args.comparisons} ({time.perf_counter() - started:.0f} s): "
                      + "; ".join(f"{k}: {', '.join(ids) or 'no regression'}" for k, ids in flagged.items()),
                      flush=True)
    summary = summarise(args.experiment, runs, time.perf_counter() - started)
    print_summary(summary)
    out = Path(args.out or REPO / "out" / f"experiment-{args.experiment}.json")
    write_json_atomic(out, {"summary": summary, "comparisons": runs})
    print(f"details: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("aa", "slowdown", "runs-aa", "instructions"))
    p.add_argument("--comparisons", type=int, default=20)
    p.add_argument("--matrix", help="a matrix of benchmarks/matrix.json (default: experiment; instructions: "
                                    "instructions; runs-aa: experiment, or quick with --quick)")
    p.add_argument("--quick", action="store_true", help="runs-aa: the quick matrix")
    p.add_argument("--engines", help="runs-aa: only these engines")
    p.add_argument("--baseline-runs", type=int, default=3, help="runs-aa: runs in the baseline (default 3)")
    p.add_argument("--rounds", type=int, help="worker processes per engine and side (default: the matrix's)")
    p.add_argument("--samples", type=int, help="samples per process and benchmark (default: the matrix's)")
    p.add_argument("--data", help="documents (default: names.txt)")
    p.add_argument("--out", help="JSON with every verdict (default: out/experiment-<name>.json)")
    p.add_argument("--keep", metavar="DIR", help="aa, slowdown, instructions: every comparison's results files in "
                                                 "DIR/<k>/<side>.json, to judge again offline")
    return run_main(experiment, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

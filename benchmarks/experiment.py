"""Proof of the regression gate: it must not cry wolf, and it must not miss a real slowdown.

    python benchmarks/experiment.py aa         # 20 comparisons of identical code: expect 0 regressions
    python benchmarks/experiment.py slowdown   # 20 comparisons against a ~10% slower variant: expect >= 19 flagged

Each comparison is exactly what ``benchmark.py ab`` does on a pull request: ``benchmark.measure`` with a
side A and a side B whose workers take turns sample by sample, over the "experiment" matrix of
benchmarks/matrix.json (the python and c engines), then ``benchmark.compare_results`` with the default
gate (metric auto, alpha 0.01, floor 5%). The summary goes to stdout and, with every verdict and sample,
to ``--out`` as JSON.

The slow variant (side B of ``slowdown``) is the reference engine train.py with its dot product
materialising the products in a list before summing them, ``sum(list(map(mul, a, b)))`` instead of
``sum(map(mul, a, b))``: one extra allocation and pass per dot product, the kind of change that slips
into a review, measured at ~7% (one document per step) to ~13% (eight) more CPU time. This script
injects it into B's worker processes only (``experiment.py slow-worker``); no product code knows of it.
Only the python benchmarks get slower; the c benchmarks are the control and must stay unflagged.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from operator import mul
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import benchmark  # noqa: E402  (after the path is set: this file lives in benchmarks/)
from microgpt import UserError  # noqa: E402


def slow_dot(a: list[float], b: list[float]) -> float:
    """The de-optimised op: the same sum, through a throw-away list."""
    return sum(list(map(mul, a, b)))


def slow_worker() -> None:
    import train
    train.dot = slow_dot        # every op of train.py looks dot up at call time
    benchmark.worker()


def comparison(sides: list[benchmark.Side], settings: dict, cases: list[benchmark.Case], data: str,
               data_info: dict) -> dict:
    warn = lambda message: message.startswith("warning") and print(message, file=sys.stderr, flush=True)
    measured = benchmark.measure(sides, cases, settings, data, log=warn)
    docs = [benchmark.results_document(measured[s.name], cases, settings, data_info, "experiment", []) for s in sides]
    out = {"samples": {s.name: {r["id"]: {k: r[k] for k in ("samples_ms", "cpu_samples_ms", "sample_rounds")}
                                for r in d["results"]} for s, d in zip(sides, docs)}}
    for metric in ("auto", "wall"):
        verdicts = benchmark.compare_results(docs[0], docs[1], metric=metric)
        out[metric] = [{"id": v.id, "metric": v.metric, "verdict": v.verdict, "ratio": v.ratio, "p": v.p,
                        "ci": v.ci} for v in verdicts]
    return out


def summarise(kind: str, runs: list[dict], seconds: float) -> dict:
    """Per metric: comparisons the gate failed, and per benchmark how often it was flagged and its ratios."""
    summary = {"experiment": kind, "comparisons": len(runs), "seconds": round(seconds)}
    for metric in ("auto", "wall"):
        ids = [v["id"] for v in runs[0][metric]]
        per_bench = {}
        for bench_id in ids:
            verdicts = [next(v for v in run[metric] if v["id"] == bench_id) for run in runs]
            ratios = [v["ratio"] for v in verdicts if v["ratio"]]
            per_bench[bench_id] = {"metric": verdicts[0]["metric"],
                                   "flagged": sum(v["verdict"] == "regression" for v in verdicts),
                                   "median_ratio": statistics.median(ratios) if ratios else None,
                                   "ratio_range": [min(ratios), max(ratios)] if ratios else None}
        summary[metric] = {"gate_failed": sum(any(v["verdict"] == "regression" for v in run[metric]) for run in runs),
                           "benchmarks": per_bench}
    return summary


def print_summary(s: dict) -> None:
    expectation = {"aa": "0 expected", "slowdown": ">= 19 expected"}[s["experiment"]]
    print(f"\n{s['experiment']}: {s['comparisons']} comparisons in {s['seconds']} s")
    for metric, label in (("auto", "gate (metric auto: CPU time for one thread)"), ("wall", "wall time only")):
        m = s[metric]
        print(f"  {label}: {m['gate_failed']}/{s['comparisons']} comparisons reported a regression ({expectation})")
        for bench_id, b in m["benchmarks"].items():
            lo, hi = b["ratio_range"]
            print(f"    {bench_id:<28} [{b['metric']:>4}] flagged {b['flagged']:>2}/{s['comparisons']}  "
                  f"median ratio {b['median_ratio']:.3f} (range {lo:.3f}-{hi:.3f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("aa", "slowdown", "slow-worker"))
    p.add_argument("--comparisons", type=int, default=20)
    p.add_argument("--rounds", type=int, help="worker processes per engine and side (default: the matrix's)")
    p.add_argument("--samples", type=int, help="samples per process and benchmark (default: the matrix's)")
    p.add_argument("--data", help="documents (default: names.txt)")
    p.add_argument("--out", help="JSON with every verdict (default: out/experiment-<name>.json)")
    args = p.parse_args(argv)
    if args.experiment == "slow-worker":
        slow_worker()
        return 0
    try:
        if args.comparisons < 1:
            raise UserError(f"--comparisons must be >= 1 (got {args.comparisons})")
        settings, cases, _ = benchmark.load_matrix("experiment")
        for key in ("rounds", "samples"):
            if getattr(args, key):
                settings[key] = getattr(args, key)
        data, data_info = benchmark.resolve_data(args.data)
        b_argv = [sys.executable, str(Path(__file__).resolve()), "slow-worker"] if args.experiment == "slowdown" else []
        sides = [benchmark.Side("A", REPO), benchmark.Side("B", REPO, b_argv)]
        runs, started = [], time.perf_counter()
        for i in range(args.comparisons):
            runs.append(comparison(sides, settings, cases, data, data_info))
            flagged = [v["id"] for v in runs[-1]["auto"] if v["verdict"] == "regression"]
            print(f"comparison {i + 1}/{args.comparisons} ({time.perf_counter() - started:.0f} s): "
                  f"{'regression in ' + ', '.join(flagged) if flagged else 'no regression'}", flush=True)
        summary = summarise(args.experiment, runs, time.perf_counter() - started)
        summary["settings"] = settings
        print_summary(summary)
        out = Path(args.out or REPO / "out" / f"experiment-{args.experiment}.json")
        benchmark.write_json_atomic(out, {"summary": summary, "comparisons": runs})
        print(f"details: {out}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``benchmark.py report``: markdown with charts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


from benchmarks.gate import REPO, log_stderr
from benchmarks.gate.environment import machine_line
from benchmarks.gate.compare import compare_results, comparison_warnings, markdown
from benchmarks.gate.results import load_history, load_results, read_json, write_text_atomic


def cmd_report(args) -> int:
    import report_charts

    cur = load_results(args.results)
    out = Path(args.out)
    sections = [f"# Benchmark report\n\n{len(cur['results'])} benchmarks from `{args.results}` "
                f"({cur.get('created')}, matrix {cur.get('matrix')}, "
                f"{machine_line(cur.get('environment', {}))}).\n"]

    def chart(title: str, paths: list[Path], text: str = "") -> None:
        png = [p for p in paths if p.suffix == ".png"][0]
        sections.append(f"## {title}\n\n{text}![{title}]({png.relative_to(out)})\n")

    records = [r for r in cur["results"] if "tokens_per_s" in r]
    if records:
        chart("Throughput", report_charts.throughput_chart(records, out / "throughput"))
        speedups = report_charts.speedup_chart(records, out / "speedup")
        if speedups:
            chart("Speedup over train.py", speedups, "Each engine against the reference engine (python, float64, "
                  "one thread) on the same model and batch size.\n\n")
        if not args.no_roofline:
            import roofline
            from microgpt import machine
            ceilings = machine.ceilings()
            for threads in sorted({r["threads"] for r in records}):     # each against its own roofs
                rows = [roofline.analyse(dict(r), ceilings) for r in records if r["threads"] == threads]
                stem = out / ("roofline" if threads == 1 else f"roofline-{threads}-threads")
                chart(f"Roofline, {threads} thread{'s' * (threads > 1)}",
                      report_charts.roofline_chart(ceilings, rows, stem))
    if args.base:
        base = load_results(args.base)
        verdicts = compare_results(base, cur, args.metric, args.alpha, args.threshold)
        chart("Base vs current, every sample", report_charts.distribution_chart(verdicts, out / "distributions"))
        sections.append(markdown(verdicts, comparison_warnings(base, cur), "Comparison", args.alpha))
    history_path = Path(args.history)
    if history_path.exists():
        # one machine and Python build per trend: a line across machines would chart the hardware
        key = cur.get("environment", {}).get("fingerprint")
        entries = [e for e in load_history(history_path)["entries"] if e.get("fingerprint") == key]
        if len(entries) >= 2:
            chart(f"Trend over baselines ({machine_line(cur['environment'])})",
                  report_charts.trend_chart(entries, out / "trend"))
    logs = [Path(p) for p in args.loss_log or []]
    if args.loss_steps:
        logs += run_loss_logs(args, sorted({r["engine"] for r in records}), out)
    if logs:
        loaded = [read_json(p, "loss log") for p in logs]
        chart("Loss curves", report_charts.loss_chart(loaded, out / "losses"),
              "Every engine trains the same model from the same weights on the same documents.\n\n")
    write_text_atomic(out / "report.md", "\n".join(sections))
    print(f"report: {out / 'report.md'}")
    return 0


def run_loss_logs(args, engines: list[str], out: Path) -> list[Path]:
    """Train each engine ``--loss-steps`` steps with train.py and keep its --loss-log."""
    logs, started = [], time.perf_counter()
    for k, engine in enumerate(engines, 1):
        path = out / f"loss-{engine}.json"
        cmd = [sys.executable, str(REPO / "train.py"), "--engine", engine, "--num-steps", str(args.loss_steps),
               "--loss-log", str(path), "--quiet", "--num-samples", "0", "--eval-every", "0"]
        if args.data:
            cmd += ["--data", args.data]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode == 0:
            logs.append(path)
        else:
            log_stderr(f"loss curve of {engine} skipped: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        elapsed = time.perf_counter() - started
        if not args.quiet:
            log_stderr(f"[{k}/{len(engines)}] loss curve of {engine}: {args.loss_steps} steps "
                       f"({elapsed:.0f} s so far, ETA {elapsed / k * (len(engines) - k):.0f} s)")
    return logs

"""``benchmark.py report`` (markdown with charts) and ``publish`` (README's numbers, from docs/results/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path


from microgpt import UserError

from benchmarks.gate import REPO, log_stderr
from benchmarks.gate.environment import environment, machine_line
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


# ----------------------------------------------------------------------------------------------------
# README's published numbers: generated from docs/results/<machine>.json, never typed

PUBLISHED_SCHEMA = "microgpt-lab/published/1"
BEGIN, END = "<!-- benchmark.py publish: {name} (generated from {source}; do not edit) -->", "<!-- end {name} -->"


def machine_slug(env: dict) -> str:
    """A results file's name for a machine: its CPU model and fingerprint, e.g. intel-xeon-7757357b."""
    model = (env.get("machine") or {}).get("model") or "unknown"
    words = re.sub(r"\([^)]*\)|processor|cpu|core|@.*", " ", model.lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", words)[:4]) or "machine"
    return f"{slug}-{(env.get('fingerprint') or '')[:8]}".rstrip("-")


def record_table(results_dir: Path, name: str, rows_paths: list[Path], command: str, caption: str) -> Path:
    """Put a table (the rows of ``engine_table.py -o`` files, whatever columns they have) into this
    machine's results file under ``name``, with the environment it was measured in."""
    rows = []
    for rows_path in rows_paths:
        got = read_json(rows_path, "engine_table rows")
        got = got.get("rows") if isinstance(got, dict) else got
        if not isinstance(got, list) or not all(isinstance(r, dict) and "engine" in r for r in got):
            raise UserError(f"{rows_path}: expected the JSON rows engine_table.py -o writes")
        rows += got
    env = environment()
    path = results_dir / f"{machine_slug(env)}.json"
    doc = read_json(path, "published results") if path.exists() else {"schema": PUBLISHED_SCHEMA, "tables": {}}
    doc["environment"] = env
    # the figures, not every sample: per-sample lists (thousands of document lengths) stay in the rows file
    rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(p.stat().st_mtime for p in rows_paths)))
    doc["tables"][name] = {"command": command, "caption": caption, "rows": rows, "created": measured}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path


def render_table(table: dict, env: dict, source: str) -> str:
    """One published table: engines x (config, batch), CPU ms per step as engine_table's --pivot lays it
    out, and the machine, ISA and Python build it was measured on under it."""
    from benchmarks.engine_table import pivot_table

    lines = [pivot_table(table["rows"]).rstrip()]
    # The compile cost of the engines whose first step is mostly compilation (over 10 steady steps and a
    # quarter of a second), as a range per engine over the table's cells; other first steps are steps like
    # the rest (with a first allocation).
    compiles: dict[str, list[float]] = {}
    for r in table["rows"]:
        first = r.get("first_step_ms")
        if isinstance(first, (int, float)) and first > max(10 * r.get("ms_per_step", first), 250):
            compiles.setdefault(r["engine"], []).append(first / 1e3)
    if compiles:
        lines += ["", "First step, compilation included (wall): " + "; ".join(
            f"`{name}` {min(s):.2g}-{max(s):.2g} s" for name, s in compiles.items()) + "."]
    lines += ["", f"Measured on {machine_line(env)}, {table['created'][:10]}: `{table['command']}`"
              + (f". {table['caption']}" if table.get("caption") else "") + f" (from [{source}]({source}))."]
    return "\n".join(lines)


def generated_sections(results_dir: Path, root: Path) -> dict[str, str]:
    """Every table of every results file, by marker name ``<machine slug>/<table>``."""
    sections = {}
    for path in sorted(results_dir.glob("*.json")):
        doc = read_json(path, "published results")
        if doc.get("schema") != PUBLISHED_SCHEMA:
            raise UserError(f"{path} is not a published results file (schema {PUBLISHED_SCHEMA})")
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        for name, table in doc["tables"].items():
            sections[f"{path.stem}/{name}"] = (render_table(table, doc["environment"], source), source)
    return sections


def publish(readme: Path, results_dir: Path, check: bool = False) -> int:
    """Rewrite every generated section of README.md (between its markers) from the results files; with
    ``check``, change nothing and exit 1 when README and results disagree."""
    text = readme.read_text()
    sections = generated_sections(results_dir, readme.parent)
    pattern = re.compile(r"<!-- benchmark\.py publish: (?P<name>\S+) \(generated from [^)]*\) -->\n.*?"
                         r"<!-- end (?P=name) -->", re.S)
    found = {m.group("name") for m in pattern.finditer(text)}
    missing = sorted(found - set(sections))
    if missing:
        raise UserError(f"{readme} has generated sections without a results table: {', '.join(missing)} "
                        f"(results in {results_dir})")

    def body(m) -> str:
        name = m.group("name")
        rendered, source = sections[name]
        return f"{BEGIN.format(name=name, source=source)}\n{rendered}\n{END.format(name=name)}"

    new = pattern.sub(body, text)
    unplaced = sorted(set(sections) - found)
    if check:
        stale = new != text
        if stale:
            print(f"{readme} disagrees with {results_dir}: run python benchmark.py publish", file=sys.stderr)
        for name in unplaced:
            print(f"note: {name} is not placed in {readme} (add its markers to publish it)", file=sys.stderr)
        return 1 if stale else 0
    if new != text:
        write_text_atomic(readme, new)
    print(f"{readme}: {len(found)} generated section(s) from {results_dir}"
          + (f"; not placed: {', '.join(unplaced)}" if unplaced else ""))
    return 0

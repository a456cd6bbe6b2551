"""``benchmark.py report`` (markdown with charts) and ``publish`` (README's numbers, from docs/results/)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from microgpt import UserError
from microgpt.files import write_atomic

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
            # each against its own roofs: a step on 2 threads, or on 2 data-parallel ranks, has 2 cores'
            for cores in sorted({roofline.cores(r) for r in records}):
                rows = [roofline.analyse(dict(r), ceilings) for r in records if roofline.cores(r) == cores]
                stem = out / ("roofline" if cores == 1 else f"roofline-{cores}-cores")
                chart(f"Roofline, {cores} core{'s (threads x ranks)' * (cores > 1)}",
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


def machine_results(results_dir: Path) -> tuple[Path, dict]:
    """This machine's results file (its path and contents, a new one when absent), its environment
    refreshed: whatever is recorded next was measured here, now."""
    env = environment()
    path = results_dir / f"{machine_slug(env)}.json"
    doc = read_json(path, "published results") if path.exists() else {"schema": PUBLISHED_SCHEMA, "tables": {}}
    doc["environment"] = env
    return path, doc


def save_results(path: Path, doc: dict) -> Path:
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path


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
    path, doc = machine_results(results_dir)
    # the figures, not every sample: per-sample lists (thousands of document lengths) stay in the rows file
    rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(p.stat().st_mtime for p in rows_paths)))
    doc["tables"][name] = {"command": command, "caption": caption, "rows": rows, "created": measured}
    return save_results(path, doc)


def record_run(results_dir: Path, name: str, results_path: Path, command: str, caption: str) -> Path:
    """Put a ``benchmark.py run`` results file into this machine's results as table ``name``: per benchmark
    its engine, shape, threads, data-parallel ranks, median wall and CPU ms per step and all-reduce share
    (rendered by ``run_table``: how one step runs on processes x threads, not engine against engine)."""
    from microgpt.cli import config_label
    from microgpt.config import ModelConfig
    doc = load_results(results_path)
    rows = [{"engine": r["engine"], "isa": r.get("isa"),
             "config_name": config_label(ModelConfig.from_dict(r["config"])),
             "batch_size": r["batch_size"], "dtype": r["dtype"], "threads": r["threads"], "ranks": r.get("ranks", 1),
             "ms_per_step": r["ms_per_step"], "cpu_ms_per_step": r["cpu_ms_per_step"],
             "allreduce_share": r.get("allreduce_share")}
            for r in doc["results"] if "ms_per_step" in r and "cpu_ms_per_step" in r]
    if not rows:
        raise UserError(f"{results_path}: no timed results to record (instruction counts are not a table)")
    path, out = machine_results(results_dir)
    out["tables"][name] = {"kind": "run", "command": command, "caption": caption, "rows": rows,
                           "created": doc["created"]}
    return save_results(path, out)


def run_table(rows: list[dict]) -> str:
    """A run's benchmarks laid out by how a step ran: a row per processes x threads, an engine per column,
    wall ms per step with the CPU ms of every process and thread in brackets; then, where there are
    data-parallel rows, the all-reduce's share of their step and their scaling efficiency T1 / (N TN)
    against the same engine on one process of one thread."""
    from benchmarks.engine_table import ms
    from microgpt.timing import engine_label
    shapes = list(dict.fromkeys((r["config_name"], r["batch_size"], r["dtype"]) for r in rows))
    engines = list(dict.fromkeys(engine_label(r["engine"], r.get("isa")) for r in rows))
    out = []
    for config, batch, dtype in shapes:
        cells: dict[tuple, dict[str, dict]] = {}
        for r in rows:
            if (r["config_name"], r["batch_size"], r["dtype"]) == (config, batch, dtype):
                cells.setdefault((r["ranks"], r["threads"]), {})[engine_label(r["engine"], r.get("isa"))] = r
        out += [f"{config} b{batch} {dtype}: wall ms per step (CPU ms of all processes and threads):", "",
                "| | " + " | ".join(f"`{e}`" for e in engines) + " |", "|---|" + "---:|" * len(engines)]
        for (ranks, threads), by_engine in sorted(cells.items()):
            label = f"{ranks} process{'es' * (ranks > 1)} × {threads} thread{'s' * (threads > 1)}"
            out.append(f"| {label} | " + " | ".join(
                f"{ms(by_engine[e]['ms_per_step'])} ({ms(by_engine[e]['cpu_ms_per_step'])})" if e in by_engine else "-"
                for e in engines) + " |")
        single = cells.get((1, 1), {})
        for ranks in sorted({n for n, _ in cells if n > 1}):
            parallel = cells.get((ranks, 1), {})
            out.append(f"| all-reduce's share of a {ranks}-rank step (waiting for the other ranks included) | " +
                       " | ".join(f"{100 * parallel[e]['allreduce_share']:.0f}%"
                                  if parallel.get(e, {}).get("allreduce_share") is not None else "-"
                                  for e in engines) + " |")
            sub = str(ranks).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
            out.append(f"| scaling efficiency of {ranks} ranks, T₁ / ({ranks} T{sub}) | " + " | ".join(
                f"{100 * single[e]['ms_per_step'] / (ranks * parallel[e]['ms_per_step']):.0f}%"
                if e in single and e in parallel else "-" for e in engines) + " |")
        out.append("")
    return "\n".join(out)


def record_output(results_dir: Path, name: str, command: str, abridge: list[tuple[int, int]], caption: str = ""
                  ) -> Path:
    """Run ``command`` (a shell-like line run from the checkout, ``python`` meaning this interpreter) and keep
    what it printed as transcript ``name`` of this machine: README's "What you get" is such a run."""
    argv = shlex.split(command)
    if not argv:
        raise UserError("--record-output needs --command-line: the command whose output README shows")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    log_stderr(f"running {command} (its output goes into {results_dir})")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise UserError(f"{command} failed (exit status {proc.returncode}){': ' + tail[0] if tail else ''}")
    path, doc = machine_results(results_dir)
    doc.setdefault("outputs", {})[name] = {"command": command, "caption": caption, "output": proc.stdout,
                                           "abridge": [list(part) for part in abridge],
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return save_results(path, doc)


def record_chart(results_dir: Path, name: str, entry: dict) -> Path:
    """Chart ``name`` of this machine's results file: drawn by ``publish`` as docs/<name>.png."""
    path, doc = machine_results(results_dir)
    doc.setdefault("charts", {})[name] = {**entry, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return save_results(path, doc)


def losses_entry(log_paths: list[Path], command: str) -> dict:
    """A loss chart's input: the trainers' ``--loss-log`` files (a few hundred losses each), kept whole."""
    logs = [read_json(p, "loss log") for p in log_paths]
    for p, log in zip(log_paths, logs):
        if not isinstance(log, dict) or not isinstance(log.get("train"), list):
            raise UserError(f"{p} is not a trainer's --loss-log (no 'train' list)")
    return {"kind": "losses", "command": command, "logs": logs}


def roofline_entry(specs: list[str], doc_tables: dict) -> dict:
    """A roofline chart's input: rows of this machine's tables (``TABLE`` or ``TABLE:ENGINE,ENGINE``) and
    the machine's measured ceilings (microgpt.machine: the cache, measured first if absent)."""
    from microgpt import machine
    sources = []
    for spec in specs:
        table, _, engines = spec.partition(":")
        if table not in doc_tables:
            raise UserError(f"--record-roofline {spec}: no table {table!r} in this machine's results "
                            f"(has {', '.join(doc_tables) or 'none'})")
        sources.append({"table": table, "engines": engines.split(",") if engines else []})
    return {"kind": "roofline", "sources": sources, "ceilings": machine.ceilings()}


COMM_KEYS = ("record", "results", "batch_size", "dtype")


def comm_entry(path: Path, command: str) -> dict:
    """A communication chart's input: what ``roofline.py --comm --save-results FILE`` wrote (the measured
    all-reduce model and the data-parallel table per engine x config), kept whole."""
    saved = read_json(path, "roofline.py --comm results")
    if not isinstance(saved, dict) or saved.get("kind") != "comm" or any(k not in saved for k in COMM_KEYS):
        raise UserError(f"{path} is not what roofline.py --comm --save-results writes (kind 'comm', with "
                        f"{', '.join(COMM_KEYS)})")
    return {"kind": "comm", "command": command, **{k: saved[k] for k in COMM_KEYS}}


def render_table(table: dict, env: dict, source: str) -> str:
    """One published table: engines x (config, batch), CPU ms per step as engine_table's --pivot lays it
    out, and the machine, ISA and Python build it was measured on under it."""
    from benchmarks.engine_table import pivot_table

    lines = [(run_table if table.get("kind") == "run" else pivot_table)(table["rows"]).rstrip()]
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


def abridged(text: str, parts: list[list[int]]) -> list[str]:
    """The lines of ``text`` in ``parts`` (Python slices [start, stop], negative from the end), "..." where
    lines are left out; every line without ``parts``."""
    lines = text.rstrip("\n").split("\n")
    if not parts:
        return lines
    shown, at = [], 0
    for start, stop in parts:
        start, stop, _ = slice(start, stop).indices(len(lines))
        if start > at or (start < at and shown):
            shown.append("...")
        shown += lines[start:stop]
        at = stop
    return shown + (["..."] if at < len(lines) else [])


def render_output(entry: dict, env: dict, source: str) -> str:
    """A recorded run as a terminal transcript: the command, then the lines its ``abridge`` keeps."""
    lines = abridged(entry["output"], entry.get("abridge") or [])
    return "\n".join(["```", f"$ {entry['command']}", *lines, "```", "",
                      f"Printed on {machine_line(env)}, {entry['created'][:10]}"
                      + (f". {entry['caption']}" if entry.get("caption") else "") + f" (from [{source}]({source}))."])


def generated_sections(results_dir: Path, root: Path) -> dict[str, tuple[str, str]]:
    """Every table and transcript of every results file, by marker name ``<machine slug>/<name>``."""
    sections = {}
    for path, doc, source in results_files(results_dir, root):
        for name, table in doc["tables"].items():
            sections[f"{path.stem}/{name}"] = (render_table(table, doc["environment"], source), source)
        for name, entry in (doc.get("outputs") or {}).items():
            sections[f"{path.stem}/{name}"] = (render_output(entry, doc["environment"], source), source)
    return sections


def results_files(results_dir: Path, root: Path):
    for path in sorted(results_dir.glob("*.json")):
        doc = read_json(path, "published results")
        if doc.get("schema") != PUBLISHED_SCHEMA:
            raise UserError(f"{path} is not a published results file (schema {PUBLISHED_SCHEMA})")
        yield path, doc, str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# --- charts: docs/<name>.png, each stamped with a digest of what it was drawn from ---------------------

PNG_SIGNATURE, STAMP_KEY = b"\x89PNG\r\n\x1a\n", b"microgpt-publish"


def chart_inputs(entry: dict, doc: dict) -> dict:
    """What a chart is drawn from, resolved: the loss logs, the all-reduce model and its table, or the
    roofline's rows and ceilings."""
    if entry["kind"] == "losses":
        return {"kind": "losses", "logs": entry["logs"]}
    if entry["kind"] == "comm":
        return {"kind": "comm", **{k: entry[k] for k in COMM_KEYS}}
    rows = []
    for source in entry["sources"]:
        table = doc["tables"].get(source["table"])
        if table is None:
            raise UserError(f"chart roofline: no table {source['table']!r} in its results file")
        rows += [r for r in table["rows"] if not source["engines"] or r["engine"] in source["engines"]]
    return {"kind": "roofline", "rows": rows, "ceilings": entry["ceilings"]}


def digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def png_stamp(path: Path) -> str | None:
    """The digest publish wrote into a PNG's text chunk, or None (no file, no stamp): read with the
    standard library, so ``--check`` needs no matplotlib."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    i = len(PNG_SIGNATURE)
    while data.startswith(PNG_SIGNATURE) and i + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + length]
        if kind == b"tEXt" and body.startswith(STAMP_KEY + b"\0"):
            return body[len(STAMP_KEY) + 1:].decode("latin-1")
        i += 12 + length
    return None


def stamp_png(path: Path, value: str) -> None:
    """Add a tEXt chunk holding ``value`` before the PNG's last chunk (IEND)."""
    data = path.read_bytes()
    body = STAMP_KEY + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    write_atomic(path, data[:-12] + chunk + data[-12:])


def draw(inputs: dict, stem: Path) -> list[Path]:
    """A chart with report_charts.py (matplotlib), the roofline's rows placed by roofline.analyse."""
    import report_charts
    if inputs["kind"] == "losses":
        return report_charts.loss_chart(inputs["logs"], stem)
    if inputs["kind"] == "comm":
        return report_charts.comm_chart(inputs["record"], inputs["results"], stem, batch_size=inputs["batch_size"],
                                        dtype=inputs["dtype"])
    import roofline
    rows = [roofline.analyse(dict(r), inputs["ceilings"]) for r in inputs["rows"]]
    return report_charts.roofline_chart(inputs["ceilings"], rows, stem)


def publish_charts(results_dir: Path, root: Path, check: bool) -> list[str]:
    """Draw every chart whose PNG is missing or stamped with other inputs; the stale ones' paths with
    ``check`` (nothing drawn)."""
    stale, owners = [], {}
    for path, doc, source in results_files(results_dir, root):
        for name, entry in (doc.get("charts") or {}).items():
            png = root / "docs" / f"{name}.png"
            if png in owners:
                raise UserError(f"{png} is a chart of {owners[png]} and of {source}: name one of them differently")
            owners[png] = source
            inputs = chart_inputs(entry, doc)
            if png_stamp(png) != digest(inputs):
                stale.append((png, inputs))
    if check or not stale:
        return [str(png.relative_to(root)) for png, _ in stale]
    try:
        import report_charts  # noqa: F401
    except ImportError:
        raise UserError(f"{len(stale)} chart(s) not drawn ({', '.join(p.name for p, _ in stale)}): matplotlib is not "
                        f"installed (pip install matplotlib); README's text is up to date") from None
    for png, inputs in stale:
        draw(inputs, png.with_suffix(""))
        stamp_png(png, digest(inputs))
        print(f"chart: {png.relative_to(root)}")
    return []


def publish(readme: Path, results_dir: Path, check: bool = False) -> int:
    """Rewrite every generated section of README.md (between its markers) from the results files and
    redraw their stale charts; with ``check``, change nothing and exit 1 when README or a chart disagrees
    with the results."""
    text = readme.read_text()
    root = readme.parent
    sections = generated_sections(results_dir, root)
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
        charts = publish_charts(results_dir, root, check=True)
        if charts:
            print(f"{', '.join(charts)} not drawn from {results_dir}: run python benchmark.py publish", file=sys.stderr)
        for name in unplaced:
            print(f"note: {name} is not placed in {readme} (add its markers to publish it)", file=sys.stderr)
        return 1 if stale or charts else 0
    if new != text:
        write_text_atomic(readme, new)
    print(f"{readme}: {len(found)} generated section(s) from {results_dir}"
          + (f"; not placed: {', '.join(unplaced)}" if unplaced else ""))
    publish_charts(results_dir, root, check=False)
    return 0

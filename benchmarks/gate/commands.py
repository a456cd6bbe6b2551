"""The commands ``run``, ``compare``, ``ab`` and ``update-baseline`` of benchmark.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microgpt import UserError

from benchmarks.gate import REPO, log_stderr
from benchmarks.gate.compare import report_comparison
from benchmarks.gate.matrix import matrix_for, resolve_data
from benchmarks.gate.environment import git_info, machine_line
from benchmarks.gate.results import (HISTORY_LIMIT, history_entries, load_history, load_results, merge_runs,
                                     print_results, results_document, write_json_atomic)
from benchmarks.gate.worker import Side, measure, measure_instructions

# this machine's own: a baseline measured elsewhere cannot judge a run here (compare learns the noise only
# from runs of the same fingerprint), so none is checked in; CI keeps one per runner fingerprint on its
# data branch
BASELINE = Path("out/baseline.json")
HISTORY = Path("out/history.json")


def measure_sides(sides: list[Side], args, log) -> tuple[list[dict], str]:
    """Measure (or count, with --metric instructions) the matrix on every side; their results documents
    and the matrix name."""
    name, settings, cases, left_out = matrix_for(args)
    data, data_info = resolve_data(args.data)
    started = time.perf_counter()
    if getattr(args, "metric", "time") == "instructions":
        settings = {**settings, "rounds": args.rounds or 1, "metric": "instructions"}
        measured = measure_instructions(sides, cases, settings, data, log=log, rounds=settings["rounds"])
    else:
        measured = measure(sides, cases, settings, data, log=log)
    docs = [results_document(measured[s.name], cases, settings, data_info, name, left_out, s.root) for s in sides]
    for d in docs:
        d["seconds"] = round(time.perf_counter() - started, 1)
    return docs, name


def cmd_run(args) -> int:
    (doc,), _ = measure_sides([Side("head", REPO)], args, None if args.quiet else log_stderr)
    out = Path(args.output or f"out/bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json_atomic(out, doc)
    print_results(doc)
    load = doc["settings"]["load_average"]
    print(f"results: {out} ({doc['seconds']:.0f} s" + (f"; load average {load[0]:g}-{load[1]:g})" if load else ")"))
    return 0


def cmd_compare(args) -> int:
    base, cur = load_results(args.base), load_results(args.current)
    return report_comparison(base, cur, args, f"Benchmarks: {Path(args.current).name} vs {Path(args.base).name}")


def git(args: list[str], cwd: Path = REPO) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"git {' '.join(args)} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return proc.stdout.strip()


def build_extensions(root: Path, log) -> None:
    """Build a checkout's C/Cython extensions in place (what ``pip install -e .`` does, without installing)."""
    log(f"building the extensions of {root}")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise UserError(f"building the extensions in {root} failed:\n{tail}")


EXTENSION_SOURCES = ["setup.py", "pyproject.toml", "*.c", "*.h", "*.pyx", "*.pxd"]


def reuse_extensions(worktree: Path, rev: str) -> bool:
    """Copy this checkout's built extensions into the worktree when their sources are the same at ``rev``
    and here (most pull requests do not touch C): the binaries would be identical, the build is minutes."""
    from importlib.machinery import EXTENSION_SUFFIXES

    for args in (["diff", "--quiet", rev, "--"], ["diff", "--quiet", "HEAD", "--"]):
        if subprocess.run(["git", *args, *EXTENSION_SOURCES], cwd=REPO, capture_output=True).returncode != 0:
            return False
    built = [p for d in (REPO, REPO / "microgpt", REPO / "engines") for p in d.iterdir()
             if any(p.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES)]
    if not built:
        return False
    for path in built:
        shutil.copy2(path, worktree / path.relative_to(REPO))
    return True


def head_worktree(root: Path) -> None:
    """Make the worktree ``root`` (checked out at HEAD) hold this checkout's working tree: its modified and
    untracked (not ignored) files copied over, its deleted files deleted, its built extensions copied. The
    head then runs from a fresh worktree exactly as the base does: same kind of path, same length, no
    __pycache__ on either side (a worker running from the checkout itself measured numpy 7-14% faster
    than the same code from a worktree)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    listed = git(["ls-files", "-z", "--modified", "--others", "--exclude-standard"]).split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for name in filter(None, git(["ls-files", "-z", "--deleted"]).split("\0")):
        (root / name).unlink(missing_ok=True)
    for d in (REPO, REPO / "microgpt", REPO / "engines"):
        for p in d.iterdir():
            if any(p.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES):
                shutil.copy2(p, root / p.relative_to(REPO))


def cmd_ab(args) -> int:
    log = None if args.quiet else log_stderr
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    rev = found.stdout.strip() if found.returncode == 0 else ""
    if not rev:
        raise UserError(f"--base {args.base!r} is not a commit in this repository")
    if args.metric == "instructions" and not shutil.which("valgrind"):
        raise UserError("--metric instructions needs Valgrind (Debian/Ubuntu: apt-get install valgrind)")
    out = Path(args.out)
    quiet = log or (lambda m: None)
    with tempfile.TemporaryDirectory(prefix="microgpt-ab-") as tmp:
        worktrees = {name: Path(tmp) / name for name in ("base", "head")}
        try:
            git(["worktree", "add", "--detach", str(worktrees["base"]), rev])
            if not (worktrees["base"] / "benchmark.py").exists():
                raise UserError(f"the base revision {args.base} ({rev[:12]}) has no benchmark.py to run")
            git(["worktree", "add", "--detach", str(worktrees["head"]), "HEAD"])
            if args.build_head:
                build_extensions(REPO, quiet)
            head_worktree(worktrees["head"])
            if args.rebuild or not reuse_extensions(worktrees["base"], rev):
                build_extensions(worktrees["base"], quiet)
            else:
                quiet("extension sources are unchanged: the base reuses this checkout's builds")
            (base, head), _ = measure_sides([Side("base", worktrees["base"]), Side("head", worktrees["head"])], args,
                                            log)
        finally:
            for w in worktrees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(w)], cwd=REPO, capture_output=True)
    head["environment"]["git"] = git_info(REPO)      # the checkout's own state, not its worktree copy's
    write_json_atomic(out / "base.json", base)
    write_json_atomic(out / "head.json", head)
    print(f"results: {out / 'base.json'}, {out / 'head.json'}")
    args.md = args.md or str(out / "comparison.md")
    args.charts = args.charts or str(out / "distributions")
    args.history = None             # one interleaved session: the pairs carry the noise
    args.md_extra = f"Base `{rev[:12]}` ({args.base}), head `{(head['environment']['git']['commit'] or '?')[:12]}`" \
                    f"{' (dirty)' if head['environment']['git']['dirty'] else ''}; measured interleaved on one machine " \
                    f"({machine_line(head['environment'])})."
    return report_comparison(base, head, args, f"Benchmark: head vs {args.base}")


def cmd_update_baseline(args) -> int:
    if args.runs < 1:
        raise UserError(f"--runs must be >= 1 (got {args.runs})")
    if args.results:
        docs = [load_results(path) for path in args.results]
        if any(d.get("matrix") == "pytest-benchmark" for d in docs):
            raise UserError("the baseline holds benchmark.py results, not pytest-benchmark's")
        dirty = [path for path, d in zip(args.results, docs) if d.get("environment", {}).get("git", {}).get("dirty")]
    else:
        dirty = ["this checkout"] if git_info(REPO)["dirty"] else []
    if dirty and not args.force:
        raise UserError(f"{', '.join(map(str, dirty))}: measured with uncommitted changes, so no commit names the code "
                        f"of this baseline; commit first, or pass --force")
    if not args.results:
        docs = []
        for k in range(args.runs):
            if args.runs > 1 and not args.quiet:
                log_stderr(f"run {k + 1}/{args.runs}")
            cmd_run(args)       # writes args.output (a temporary file, see parse_args), then we read it back
            docs.append(load_results(args.output))
            os.unlink(args.output)
    doc = merge_runs(docs)
    if not doc["results"]:
        raise UserError("refusing to write a baseline without results")
    baseline, history_path = Path(args.baseline), Path(args.history)
    history = load_history(history_path)
    history["entries"] = (history["entries"] + history_entries(doc))[-HISTORY_LIMIT:]
    write_json_atomic(baseline, doc)
    write_json_atomic(history_path, history)
    print(f"baseline: {baseline} ({len(doc['results'])} benchmarks, {len(docs)} run{'s' * (len(docs) > 1)}); "
          f"history: {history_path} ({len(history['entries'])} entries)")
    return 0


def cmd_publish(args) -> int:
    from benchmarks.gate.report import (comm_entry, losses_entry, machine_results, publish, record_chart,
                                        record_output, record_run, record_table, roofline_entry)
    results_dir = Path(args.results_dir)
    recording = args.record or args.record_run or args.record_output or args.record_losses or args.record_comm
    if recording and not args.command_line:
        raise UserError("--record, --record-run, --record-output, --record-losses and --record-comm need "
                        "--command-line: the command that measured (or printed) what is recorded, for the reader")
    if args.record_run:
        name, results = args.record_run
        path = record_run(results_dir, name, Path(results), args.command_line, args.caption)
        print(f"recorded table {name} (benchmark.py run results) in {path}")
    if args.record:
        if len(args.record) < 2:
            raise UserError("--record NAME ROWS_JSON [ROWS_JSON ...]: a table name and engine_table.py -o files")
        path = record_table(results_dir, args.record[0], [Path(p) for p in args.record[1:]],
                            args.command_line, args.caption)
        print(f"recorded table {args.record[0]} in {path}")
    if args.record_output:
        try:
            parts = [tuple(int(x) for x in part.split(":")) for part in args.abridge.split(",") if part]
        except ValueError:
            parts = [()]
        if any(len(part) != 2 for part in parts):
            raise UserError(f"--abridge START:STOP,...: the line ranges to show, as Python slices (got {args.abridge!r})")
        path = record_output(results_dir, args.record_output, args.command_line, parts, args.caption)
        print(f"recorded the output of {args.command_line} as {args.record_output} in {path}")
    if args.record_losses:
        path = record_chart(results_dir, "losses", losses_entry([Path(p) for p in args.record_losses],
                                                                args.command_line))
        print(f"recorded chart losses ({len(args.record_losses)} loss logs) in {path}")
    if args.record_comm:
        path = record_chart(results_dir, "roofline-comm", comm_entry(Path(args.record_comm), args.command_line))
        print(f"recorded chart roofline-comm ({args.record_comm}) in {path}")
    if args.record_roofline:
        _, doc = machine_results(results_dir)
        path = record_chart(results_dir, "roofline", roofline_entry(args.record_roofline, doc["tables"]))
        print(f"recorded chart roofline ({', '.join(args.record_roofline)}) in {path}")
    return publish(Path(args.readme), results_dir, check=args.check)

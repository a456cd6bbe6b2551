"""benchmark.py: how fast every engine trains, measured so that a regression gate can be trusted.

    python benchmark.py run --quick                        # < 60 s: every engine that imports, the default model
    python benchmark.py run -o out/bench.json              # the default matrix, < 5 min
    python benchmark.py run --quick --isa all              # the c engine's cases once per instruction set
    python benchmark.py run --metric instructions --quick  # instructions per step under callgrind: deterministic
    python benchmark.py update-baseline --runs 3           # this machine's baseline of 3 runs (out/baseline.json)
    python benchmark.py compare out/baseline.json out/bench.json [--md out/compare.md]
    python benchmark.py ab --base origin/main --quick      # base and head interleaved, then compared (CI's gate)
    python benchmark.py ab --base origin/main --metric instructions   # the same with instruction counts
    python benchmark.py report out/bench.json [--base B]   # markdown and charts in out/report/
    python benchmark.py publish                            # README's tables and charts from docs/results/<machine>.json
    python benchmark.py machine                            # this machine and Python build, and their fingerprint
    pytest benchmarks/test_kernels.py --benchmark-json=out/kernels.json   # fastops micro-benchmarks (compare reads it)

Exit status: 0 fine (also "inconclusive"), 1 a regression, 2 a usage or input error, 3 an internal error.

Measuring. The matrix (benchmarks/matrix.json: engines x configs x batch sizes x dtypes x threads) is
timed with microgpt/timing.py in fresh worker processes: each round starts one process per engine and
thread count, pinned to fixed CPUs, so a process's luck (memory layout, import order) is one round's,
not the result's; the order of the engines rotates from round to round. Every sample is kept, in wall
and in CPU time. Each record of the c engine names the instruction set its kernels ran ("isa"); ``run
--isa avx2`` (a comma list, or all) times the c engine's cases on the named sets instead of its best, as
benchmarks of their own ids (``c[avx2] C16L1H4 b1 f64 t1``). ``--metric instructions`` counts instead of
timing: each case runs under Valgrind's callgrind, and its record holds instructions per step.

Deciding. Within one run, a process's samples share its luck; between runs the machine itself moves
(another tenant, a frequency step, the host's load), by more than any within-run spread shows. So
``compare`` of two separate runs models a run as a random effect: it estimates the run-to-run spread
from the runs it has (a baseline of ``--runs N``, its history on the same machine, the rounds within
each run) and calls a regression only when the change exceeds what that spread allows. When it cannot
estimate it (one run each, no history), the verdict is "inconclusive" (exit 0) with a pointer to ``ab``.
``ab`` checks the base revision and the head out into two equivalent temporary worktrees and runs a
base and a head worker side by side that take turns sample by sample (A B, B A, ...) on the same
batches, so a burst of load lands on both halves of a pair; the pairs of one round share its two
processes' luck, so its verdicts treat the round as the unit (each round's median pair ratio, a t test
over the rounds; "inconclusive" when they are too few or disagree). Instruction counts are deterministic: identical code
gives identical counts, so their floor can be small (default 1%). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# benchmarks.gate, wherever this is imported from; appended, so that a directory put first on the path
# (experiment.py's slow variant of train.py) still wins
sys.path.append(str(Path(__file__).resolve().parent))

from benchmarks.gate import REPO  # noqa: E402
from benchmarks.gate.commands import (BASELINE, HISTORY, cmd_ab, cmd_compare, cmd_publish, cmd_run,  # noqa: E402
                                      cmd_update_baseline)
from benchmarks.gate.compare import DEFAULT_ALPHA, METRICS  # noqa: E402
from benchmarks.gate.matrix import MATRIX  # noqa: E402
from microgpt import UserError  # noqa: E402
from microgpt.cli import OneLineErrorParser, run_main  # noqa: E402

COMMANDS = ("run", "compare", "ab", "update-baseline", "report", "publish", "machine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    # the metavar lists the public commands: ``worker`` (the protocol a later revision's ``ab`` calls) is
    # internal and stays out of --help
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser,
                           metavar="{" + ",".join(COMMANDS) + "}")

    def matrix_flags(q):
        q.add_argument("--quick", action="store_true", help="the quick matrix (< 60 s)")
        q.add_argument("--matrix", help="a named matrix of --matrix-file (default: default, or quick)")
        q.add_argument("--matrix-file", default=str(MATRIX), help=f"matrix definitions (default: {MATRIX.relative_to(REPO)})")
        q.add_argument("--engines", help="only these engines (comma-separated)")
        q.add_argument("--rounds", type=int, help="worker processes per engine and side (default: the matrix's)")
        q.add_argument("--samples", type=int, help="samples per process and benchmark (default: the matrix's)")
        q.add_argument("--data", help="documents to train on (default: names.txt)")
        q.add_argument("--quiet", action="store_true", help="no progress lines")

    def measure_flags(q):
        matrix_flags(q)
        q.add_argument("--isa", default="auto",
                       help="the c engine's instruction sets, comma-separated: auto (the best; ids unchanged), all, "
                            "or names such as avx512,avx2,sse,neon,generic (ids c[NAME] ...)")

    def stats_flags(q):
        q.add_argument("--metric", default="auto", choices=METRICS,
                       help="auto (CPU time for one-thread benchmarks, else wall; instructions when the files "
                            "hold counts), cpu, wall or instructions")
        q.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help=f"significance (default {DEFAULT_ALPHA})")
        q.add_argument("--threshold", action="append", default=[], metavar="[PATTERN=]PERCENT",
                       help="effect floor such as 5%% (or 0.05), default 5%% for times and 1%% for instructions; "
                            "with PATTERN (fnmatch on the id) for some benchmarks")

    def gate_flags(q):
        stats_flags(q)
        q.add_argument("--md", help="also write the comparison as markdown here (for a PR comment)")
        q.add_argument("--charts", help="also draw the sample distributions to this path stem (.svg and .png)")
        q.add_argument("--no-fail", action="store_true", help="exit 0 even when there is a regression")
        q.add_argument("--history", default=str(HISTORY),
                       help="baseline history: earlier runs on the same machine tell compare the run-to-run noise")

    q = sub.add_parser("run", help="measure the benchmark matrix")
    measure_flags(q)
    q.add_argument("--metric", choices=("time", "instructions"), default="time",
                   help="time (wall and CPU; default) or instructions per step under callgrind")
    q.add_argument("-o", "--output", help="results JSON (default: out/bench-<time>.json)")
    q = sub.add_parser("compare", help="compare two results files (ours or pytest-benchmark's)")
    q.add_argument("base", help="a results file, or a baseline of several runs (update-baseline --runs)")
    q.add_argument("current")
    gate_flags(q)
    q = sub.add_parser("ab", help="base and head in two worktrees, measured interleaved, compared")
    q.add_argument("--base", required=True, help="base revision (branch, tag or commit)")
    q.add_argument("--out", default="out/ab", help="directory for base.json, head.json, comparison.md, charts")
    q.add_argument("--build-head", action="store_true", help="also rebuild this checkout's extensions first")
    q.add_argument("--rebuild", action="store_true",
                   help="build the base's extensions even when their sources equal the head's")
    measure_flags(q)
    gate_flags(q)
    q = sub.add_parser("update-baseline", help="write this machine's baseline (out/baseline.json) and append it to "
                                               "the history (out/history.json)")
    q.add_argument("results", nargs="*", help="results files, one per run (default: run the matrix now)")
    q.add_argument("--runs", type=int, default=1, help="separate runs of the matrix in the baseline (default 1; "
                                                       "3 lets compare estimate the run-to-run noise)")
    q.add_argument("--force", action="store_true", help="write it even from a tree with uncommitted changes")
    q.add_argument("--metric", choices=("time", "instructions"), default="time", help="what the runs measure")
    q.add_argument("--baseline", default=str(BASELINE), help=f"default {BASELINE}")
    q.add_argument("--history", default=str(HISTORY), help=f"default {HISTORY}")
    measure_flags(q)
    q = sub.add_parser("report", help="markdown report with charts")
    q.add_argument("results")
    q.add_argument("--base", help="a base results file: add the comparison and its sample distributions")
    q.add_argument("--out", default="out/report", help="output directory (default out/report)")
    q.add_argument("--history", default=str(HISTORY), help="baseline history for the trend chart")
    q.add_argument("--loss-log", action="append", metavar="JSON", help="a --loss-log of a trainer (repeatable)")
    q.add_argument("--loss-steps", type=int, default=0, help="train each engine this many steps for the loss chart")
    q.add_argument("--data", help="documents for --loss-steps (default: names.txt)")
    q.add_argument("--no-roofline", action="store_true", help="skip the roofline (it may measure the machine first)")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    stats_flags(q)
    q = sub.add_parser("publish", help="README's generated tables, transcripts and docs/*.png charts from "
                                       "docs/results/*.json (--check: compare only)")
    q.add_argument("--check", action="store_true", help="exit 1 when README.md differs from what would be written")
    q.add_argument("--readme", default=str(REPO / "README.md"))
    q.add_argument("--results-dir", default=str(REPO / "docs" / "results"))
    q.add_argument("--record", nargs="+", metavar="NAME ROWS_JSON",
                   help="first store the rows of engine_table.py -o files as table NAME of this machine's results")
    q.add_argument("--record-run", nargs=2, metavar=("NAME", "RESULTS_JSON"),
                   help="first store a benchmark.py run results file as table NAME, laid out by processes x "
                        "threads (the data-parallel table)")
    q.add_argument("--record-output", metavar="NAME",
                   help="first run --command-line and store what it prints as transcript NAME (README's \"What you get\")")
    q.add_argument("--abridge", default="", metavar="START:STOP,...",
                   help="with --record-output: the line ranges shown (Python slices, e.g. 0:2,-24:-17), '...' for "
                        "the lines left out (default: every line)")
    q.add_argument("--record-losses", nargs="+", metavar="LOSS_LOG",
                   help="first store trainers' --loss-log files as the chart docs/losses.png")
    q.add_argument("--record-roofline", nargs="+", metavar="TABLE[:ENGINES]",
                   help="first store this machine's ceilings and the rows of these tables (optionally only the "
                        "comma-separated engines) as the chart docs/roofline.png")
    q.add_argument("--record-comm", metavar="COMM_JSON",
                   help="first store what roofline.py --comm --save-results COMM_JSON wrote as the chart "
                        "docs/roofline-comm.png")
    q.add_argument("--command-line", default="",
                   help="with --record, --record-run, --record-output, --record-losses, --record-comm: the command")
    q.add_argument("--caption", default="", help="with --record, --record-run, --record-output: a sentence under it")
    q = sub.add_parser("machine", help="this machine and Python build in one line, and its fingerprint")
    q.add_argument("--fingerprint", action="store_true", help="only the fingerprint (baselines are kept per fingerprint)")
    sub.add_parser("worker")
    args = p.parse_args(argv)
    if args.command == "update-baseline" and not args.results:
        args.output = str(Path(tempfile.gettempdir()) / f"microgpt-baseline-{os.getpid()}.json")
    if getattr(args, "loss_steps", 0) < 0:
        raise UserError(f"--loss-steps must be >= 0 (got {args.loss_steps})")
    return args


def dispatch(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.command == "worker":
        from benchmarks.gate.worker import worker
        worker()
        return 0
    if args.command == "machine":
        from benchmarks.gate.environment import environment, machine_line
        env = environment()
        print(env["fingerprint"] if args.fingerprint else f"{machine_line(env)}\nfingerprint {env['fingerprint']}")
        return 0
    if args.command == "report":
        from benchmarks.gate.report import cmd_report      # imports the chart code only when asked
        return cmd_report(args)
    return {"run": cmd_run, "compare": cmd_compare, "ab": cmd_ab, "update-baseline": cmd_update_baseline,
            "publish": cmd_publish}[args.command](args)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_main(dispatch, argv)
    except Exception as e:          # a bug of ours, not the user's: exit 3, apart from a regression's 1
        if os.environ.get("MICROGPT_TRACEBACK"):
            raise
        print(f"internal error: {type(e).__name__}: {e} (MICROGPT_TRACEBACK=1 shows where)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())

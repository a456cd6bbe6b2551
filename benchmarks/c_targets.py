"""The C engine's speed targets, checked on the rows of engine_table.py runs (README "How fast").

    python benchmarks/engine_table.py --engines c,cython,numpy,torch,torch-compile,jax --isa all --dtype float64 -o f64.json
    python benchmarks/engine_table.py --engines c,cython,numpy,torch,torch-compile,jax --isa all --dtype float32 -o f32.json
    python benchmarks/engine_table.py --engines c,numpy,torch --isa all --configs large,xl --batch-sizes 32 --dtype float32 -o large.json
    # on a CPU with AVX-512, the forced narrower rows race libraries held to their ISA:
    python benchmarks/framework_isa.py avx2 -- python benchmarks/engine_table.py --engines c,numpy,torch,torch-compile --isa avx2 --dtype float64 -o capped_avx2.json
    python benchmarks/c_targets.py f64.json f32.json large.json [capped_avx2.json threads2.json ...]

One line per target and cell: what was measured, what the target asks, and whether it holds. The targets:

- fastest: every ``c[isa]`` row is faster than every other engine of the same file (one run), config, batch,
  dtype and threads (framework yardsticks and the c-ops rung aside) whose own kernels ran that ISA or a
  narrower one (the row's "frameworks_isa"; rows without it ran this CPU's best): ms of CPU time per step
  with one thread, wall time with more, as the README's tables read them. A forced c[avx2] on an AVX-512
  machine races NumPy and PyTorch held to AVX2 (benchmarks/framework_isa.py avx2 -- engine_table.py ...);
  a c row with no such peer in its run is counted as not raced;
- peak: ``c[avx2]`` medium batch 32 float64 at >= 60% of this machine's measured AVX2 float64 peak
  (FLOPs from the tokens the step trained on; roofline.py's ceilings, measured once and cached);
- f32: ``c[avx2]`` medium batch 32 trains >= 1.7x the tokens per second in float32 as in float64;
- avx2/avx512: ``c[avx2]`` at most 1.3x the step time of ``c[avx512]`` with one document, 2.2x with 32;
- 128-bit/avx2: ``c[sse]`` (or ``c[neon]``) at most 2.5x the step time of ``c[avx2]``;
- tiny: ``c[avx2]`` tiny, one document, float32, at most 12 us per step.

A target with no rows to judge it is listed as not measured. The rows should come from the machine this
runs on (the peak is this machine's); its line heads the output. Exit status: 0 when every judged target
holds, 1 when one misses, 2 on bad input. Timing is noisy: a miss by a few percent deserves a second run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import roofline  # noqa: E402  (the FLOP model; the machine's ceilings, measured on first use, then cached)
from benchmarks.gate.environment import environment, fastops_isa, machine_line  # noqa: E402
from microgpt import cli, machine  # noqa: E402
from microgpt.cli import config_label  # noqa: E402
from microgpt.config import STANDARD_CONFIGS  # noqa: E402
from microgpt.timing import engine_label  # noqa: E402

PEAK_FRACTION = 0.60       # of the measured AVX2 float64 peak, medium batch 32
F32_SPEEDUP = 1.7          # float32 tokens/s over float64, AVX2 medium batch 32
AVX2_OVER_AVX512 = {1: 1.3, 32: 2.2}   # step-time ratio by batch size
NARROW_OVER_AVX2 = 2.5     # 128-bit instance against AVX2
TINY_B1_F32_US = 12.0      # AVX2 tiny, one document, float32
NOT_PEERS = ("c", "c-ops")  # engines that are not the c engine's competition
ISA_WIDTH = {"generic": 0, "sse": 1, "neon": 1, "avx2": 2, "avx512": 3}


@dataclass
class Check:
    target: str
    cell: str
    measured: str
    needs: str
    ok: bool | None          # None: not measured


def config_name(record: dict) -> str:
    c = record["config"]
    shape = (c.get("n_embd"), c.get("n_layer"), c.get("n_head"), c.get("block_size"))
    return next((name for name, s in STANDARD_CONFIGS.items() if s == shape), record.get("config_name") or
                config_label(c))


def step_ms(record: dict) -> float:
    """The clock the README's tables read: CPU time with one thread, wall time with more."""
    if record["threads"] == 1 and record.get("cpu_ms_per_step"):
        return record["cpu_ms_per_step"]
    return record["ms_per_step"]


def cell_of(record: dict) -> str:
    dtype = record["dtype"].replace("float", "f")
    threads = f" {record['threads']} threads" if record["threads"] > 1 else ""
    return f"{config_name(record)} b{record['batch_size']} {dtype}{threads}"


def c_row(rows: list[dict], isa: str, config: str, batch: int, dtype: str, threads: int = 1) -> dict | None:
    """The last c row of that isa and cell among ``rows`` (a later run of the same cell replaces an earlier)."""
    found = [r for r in rows if r["engine"] == "c" and r.get("isa") == isa and config_name(r) == config
             and r["batch_size"] == batch and r["dtype"] == dtype and r["threads"] == threads]
    return found[-1] if found else None


def races(c: dict, peer: dict, native: str | None) -> bool:
    """Whether ``peer``'s kernels ran an ISA no wider than c's (unknown ISAs race: nothing to tell them apart)."""
    mine, theirs = ISA_WIDTH.get(c.get("isa")), ISA_WIDTH.get(peer.get("frameworks_isa") or native)
    return mine is None or theirs is None or theirs <= mine


def fastest_checks(runs: list[list[dict]], native: str | None) -> tuple[list[Check], int]:
    """Each c row against the fastest other engine of its own run and cell that ran no wider an ISA; and
    how many c rows had no such engine beside them."""
    checks, unraced = [], 0
    for rows in runs:
        cells: dict[tuple, list[dict]] = {}
        for r in rows:
            if not r.get("yardstick"):
                cells.setdefault((config_name(r), r["batch_size"], r["dtype"], r["threads"]), []).append(r)
        for group in cells.values():
            peers = [r for r in group if r["engine"] not in NOT_PEERS]
            for c in (r for r in group if r["engine"] == "c"):
                rivals = [p for p in peers if races(c, p, native)]
                if not rivals:
                    unraced += bool(peers)
                    continue
                best = min(rivals, key=step_ms)
                checks.append(Check("fastest", f"{engine_label('c', c.get('isa'))} {cell_of(c)}",
                                    f"{step_ms(c):.4g} ms", f"< {engine_label(best['engine'], None)} {step_ms(best):.4g} ms",
                                    step_ms(c) < step_ms(best)))
    if not checks:
        checks.append(Check("fastest", "every c row", "", "a c row and another engine in one run", None))
    return checks, unraced


def peak_check(rows: list[dict], ceilings_of) -> Check:
    r = c_row(rows, "avx2", "medium", 32, "float64")
    needs = f">= {PEAK_FRACTION:.0%} of the AVX2 float64 peak"
    if r is None:
        return Check("peak", "c[avx2] medium b32 f64", "", needs, None)
    point = roofline.analyse(r, ceilings_of())
    return Check("peak", "c[avx2] medium b32 f64", f"{point['percent']:.0f}% of {point['roof_flops'] / 1e9:.3g} GFLOP/s "
                 f"({point['achieved'] / 1e9:.3g} GFLOP/s, {r['ms_per_step']:.3g} ms)", needs,
                 point["percent"] >= 100 * PEAK_FRACTION)


def ratio_check(target: str, cell: str, slow: dict, fast: dict, limit: float, per: str) -> Check:
    ratio = step_ms(slow) / step_ms(fast)
    return Check(target, cell, f"{ratio:.2f}x ({step_ms(slow):.4g} / {step_ms(fast):.4g} ms)", f"<= {limit}x {per}".rstrip(),
                 ratio <= limit)


def isa_ratio_checks(rows: list[dict]) -> list[Check]:
    """AVX2 against AVX-512, and the 128-bit instance against AVX2, in every cell that has both."""
    checks = []
    cells = sorted({(config_name(r), r["batch_size"], r["dtype"]) for r in rows if r["engine"] == "c"
                    and r["threads"] == 1}, key=lambda c: (c[2], list(STANDARD_CONFIGS).index(c[0])
                                                           if c[0] in STANDARD_CONFIGS else 99, c[1]))
    for config, batch, dtype in cells:
        where = f"{config} b{batch} {dtype.replace('float', 'f')}"
        avx2 = c_row(rows, "avx2", config, batch, dtype)
        avx512 = c_row(rows, "avx512", config, batch, dtype)
        limit = AVX2_OVER_AVX512.get(batch, AVX2_OVER_AVX512[32])
        if avx2 and avx512:
            checks.append(ratio_check("avx2/avx512", where, avx2, avx512, limit, f"at batch {batch}"))
        narrow = c_row(rows, "sse", config, batch, dtype) or c_row(rows, "neon", config, batch, dtype)
        if narrow and avx2:
            checks.append(ratio_check(f"{narrow['isa']}/avx2", where, narrow, avx2, NARROW_OVER_AVX2, ""))
    if not any(c.target == "avx2/avx512" for c in checks):
        checks.append(Check("avx2/avx512", "any cell", "", "c[avx2] and c[avx512] rows", None))
    if not any(c.target.endswith("/avx2") for c in checks):
        checks.append(Check("128-bit/avx2", "any cell", "", "c[sse] (or c[neon]) and c[avx2] rows", None))
    return checks


def f32_check(rows: list[dict]) -> Check:
    f64, f32 = c_row(rows, "avx2", "medium", 32, "float64"), c_row(rows, "avx2", "medium", 32, "float32")
    needs = f">= {F32_SPEEDUP}x the float64 tokens/s"
    if f64 is None or f32 is None:
        return Check("f32", "c[avx2] medium b32", "", needs, None)
    speedup = (f32["tokens_per_step"] / step_ms(f32)) / (f64["tokens_per_step"] / step_ms(f64))
    return Check("f32", "c[avx2] medium b32", f"{speedup:.2f}x", needs, speedup >= F32_SPEEDUP)


def tiny_check(rows: list[dict]) -> Check:
    r = c_row(rows, "avx2", "tiny", 1, "float32")
    needs = f"<= {TINY_B1_F32_US:g} us"
    if r is None:
        return Check("tiny", "c[avx2] tiny b1 f32", "", needs, None)
    us = step_ms(r) * 1e3
    return Check("tiny", "c[avx2] tiny b1 f32", f"{us:.3g} us", needs, us <= TINY_B1_F32_US)


def check_all(runs: list[list[dict]], ceilings_of, native: str | None) -> tuple[list[Check], int]:
    """Every target on the rows of ``runs`` (one list per engine_table.py run) of a CPU whose best ISA is
    ``native``; and the number of c rows not raced (see fastest_checks)."""
    rows = [r for run in runs for r in run]
    fastest, unraced = fastest_checks(runs, native)
    return [*fastest, peak_check(rows, ceilings_of), f32_check(rows), *isa_ratio_checks(rows), tiny_check(rows)], unraced


def report(checks: list[Check], unraced: int = 0) -> str:
    lines = ["| target | cell | measured | needs | holds |", "|---|---|---|---|---|"]
    for c in checks:
        verdict = "not measured" if c.ok is None else "yes" if c.ok else "**no**"
        lines.append(f"| {c.target} | {c.cell} | {c.measured} | {c.needs} | {verdict} |")
    judged = [c for c in checks if c.ok is not None]
    missed = [c for c in judged if not c.ok]
    lines += ["", f"{len(judged) - len(missed)} of {len(judged)} judged checks hold"
              + (f"; missed: {', '.join(f'{c.target} {c.cell}' for c in missed)}" if missed else "")
              + (f"; not measured: {', '.join(c.target for c in checks if c.ok is None)}"
                 if any(c.ok is None for c in checks) else "")]
    if unraced:
        lines.append(f"{unraced} c rows not raced: every engine beside them ran a wider instruction set (race "
                     "them in a benchmarks/framework_isa.py run)")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    p = cli.OneLineErrorParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="engine_table.py -o files (each one run)")
    args = p.parse_args(argv)
    runs = [roofline.load_results(path, "results file") for path in args.results]
    print(f"machine: {machine_line(environment())}")
    checks, unraced = check_all(runs, lambda: machine.ceilings(quality="quick", path=machine.cache_path()),
                                fastops_isa())
    print(report(checks, unraced))
    return 1 if any(c.ok is False for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

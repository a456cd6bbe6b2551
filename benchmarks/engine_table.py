"""One run, every engine: ms/step, tokens/s and speedup over train.py for the lab's standard configs.

    python benchmarks/engine_table.py                      # all engines x tiny/small/medium x batch 1, 32
    python benchmarks/engine_table.py --engines c,numpy --batch-sizes 1 --dtype float32 -o out/table.json
    python benchmarks/engine_table.py --engines c --isa all --configs large,xl --batch-sizes 32
    python benchmarks/engine_table.py --pivot out/table.json       # the README's layout: engines x configs
    python benchmarks/engine_table.py --engines torch,jax,mlx --yardsticks none   # without the textbook rows

--isa picks the instruction sets of the c engine's kernels, a comma list (avx512,avx2,sse,...; auto = the
best available, the default; all = every one this CPU and build run): each is its own row, c[avx2], and
each JSON row of the c engine records the "isa" that ran, and every row its "frameworks_isa": the ISA of
the engine's own kernels (c: its isa; numpy and torch: the cap of benchmarks/framework_isa.py, else this
CPU's best, as for every other engine). --configs takes any of STANDARD_CONFIGS; large
and xl (n_embd 256 and 512) are left out by default, as train.py would take minutes per step on them.

--yardsticks adds the textbook version of each framework (benchmarks/yardsticks.py: an nn.Module with
torch.optim.Adam, plain jax.grad with a hand Adam, mlx.nn with optim.Adam) as rows of their own, timed in
the same run: by default those of the frameworks among --engines (torch-yardstick beside torch and
torch-compile, jax-yardstick beside jax, mlx-yardstick beside mlx and mlx-compile).

Compile cost is reported, not hidden: "first step" is the wall time of a fresh engine's first training
step in this run (tracing and compilation included: jit, torch.compile, mx.compile), "steady" the
median over the samples after the warm-up steps. A jitted engine that compiles one program per bucketed
shape (jax) compiles the others as new shapes arrive during the warm-up; the median keeps a sample that
caught one out of the steady figure.

Every engine trains on the same real names in the same order (microgpt/timing.py), one thread unless --threads says more. An
engine x config whose first step predicts more than --max-step-seconds per step is reported as skipped,
not left out silently. Wall and process-CPU milliseconds are both printed: on a shared machine CPU time
is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.framework_isa import frameworks_isa  # noqa: E402
from benchmarks.gate.environment import fastops_isa  # noqa: E402
from benchmarks.yardsticks import BESIDE, YARDSTICKS, load_yardstick  # noqa: E402
from engines import ENGINES, load_engine  # noqa: E402
from microgpt import UserError  # noqa: E402
from microgpt.config import DEFAULT_CONFIGS, STANDARD_CONFIGS, ModelConfig  # noqa: E402
from microgpt.data import default_dataset, load_documents, split_documents  # noqa: E402
from microgpt.files import write_json_atomic  # noqa: E402
from microgpt.timing import engine_label, time_engine  # noqa: E402
from microgpt.tokenizers import build_tokenizer, wrap  # noqa: E402


def ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2g}x"


def ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def fresh_allocator_caches() -> None:
    """Every row starts from the same allocator state. MLX keeps up to 32 MB of freed buffers for reuse and
    never evicts them, so an MLX row would run on whatever the rows before it left there (mlx-yardstick,
    medium b1 float32: 17.4 ms in one table, 23.1 in another)."""
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        mx.clear_cache()


def yardsticks_for(option: str, engines: list[str]) -> list[str]:
    """The yardstick rows --yardsticks asks for: auto (those beside --engines), none, or a comma list."""
    if option == "auto":
        return [y for y, beside in BESIDE.items() if any(e in engines for e in beside)]
    if option == "none":
        return []
    names = option.split(",")
    unknown = [n for n in names if n not in YARDSTICKS]
    if unknown:
        raise UserError(f"--yardsticks: unknown {', '.join(unknown)} (known: auto, none, {', '.join(YARDSTICKS)})")
    return names


def load_row(name: str):
    """The class timed for a row: an engine, or a yardstick (benchmarks/yardsticks.py)."""
    if name not in YARDSTICKS:
        return load_engine(name)
    try:
        return load_yardstick(name)
    except ImportError as e:
        raise UserError(f"{name} cannot be loaded ({e})") from None


def pivot_table(rows: list[dict]) -> str:
    """Rows of -o JSON files as one markdown table per dtype: an engine per row (c once per isa), a config x
    batch per column, ms per step (CPU time with one thread; wall time with more, as CPU time adds the
    threads up), the fastest of each column in bold."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        cells: dict[str, dict[str, float]] = {}
        threads = max(r.get("threads", 1) for r in rows if r["dtype"] == dtype)
        key, clock = ("cpu_ms_per_step", "CPU time") if threads == 1 else ("ms_per_step", "wall time")
        for r in (r for r in rows if r["dtype"] == dtype):
            column = f"{r['config_name']} b{r['batch_size']}"
            cells.setdefault(engine_label(r["engine"], r.get("isa")), {})[column] = r[key]
        columns = list(dict.fromkeys(c for by_col in cells.values() for c in by_col))
        best = {c: min(v[c] for v in cells.values() if c in v) for c in columns}
        out += [f"{dtype}, ms of {clock} per step" + (f", {threads} threads each:" if threads > 1 else ":"), "", "| engine | " + " | ".join(columns) + " |",
                "|---|" + "---:|" * len(columns)]
        for label, by_col in cells.items():
            shown = [(f"**{ms(by_col[c])}**" if by_col[c] == best[c] else ms(by_col[c])) if c in by_col else "-"
                     for c in columns]
            out.append(f"| `{label}` | " + " | ".join(shown) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"names from STANDARD_CONFIGS: {', '.join(STANDARD_CONFIGS)} "
                        f"(default: {','.join(DEFAULT_CONFIGS)})")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="threads every engine may use (default 1); above 1, read the wall-time column: CPU time "
                        "adds up the threads")
    p.add_argument("--max-step-seconds", type=float, default=3.0)
    p.add_argument("--reference-max-step-seconds", type=float, default=15.0,
                   help="train.py is the yardstick of every speedup: it may take this long per step")
    p.add_argument("--isa", default="auto",
                   help="the c engine's instruction sets, comma-separated: auto (the best), all, or names such as "
                        "avx512,avx2,sse,neon,generic (default: auto)")
    p.add_argument("--yardsticks", default="auto",
                   help="textbook rows to time beside the engines: auto (those of the frameworks among --engines), "
                        f"none, or names: {', '.join(YARDSTICKS)} (default: auto)")
    p.add_argument("-o", "--output", help="also write the rows as JSON")
    p.add_argument("--pivot", nargs="+", metavar="JSON", help="print the rows of earlier -o files as the README's "
                   "table (engines x configs) and exit")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1 (got {args.threads})")
    if args.pivot:
        try:
            rows = [r for f in args.pivot for r in json.loads(Path(f).read_text())]
            print(pivot_table(rows))
        except (OSError, ValueError, TypeError, KeyError) as e:
            print(f"error: --pivot needs the JSON files engine_table.py -o writes ({e})", file=sys.stderr)
            return 2
        return 0
    try:
        names = args.engines.split(",")
        configs = args.configs.split(",")
        unknown = [c for c in configs if c not in STANDARD_CONFIGS]
        if unknown:
            raise UserError(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(STANDARD_CONFIGS)})")
        # (engine, isa) instances side by side: one per instruction set for the c engine (auto: None, its
        # best, whose row still names the isa that ran; and a checkout without fastops skips its row)
        instances = [(n, None) for n in names] + [(y, None) for y in yardsticks_for(args.yardsticks, names)]
        if args.isa.strip().lower() != "auto":
            if "c" not in names:
                raise UserError(f"--isa picks the kernels of the c engine, which is not among --engines {args.engines}")
            from train_fast import available_isas, parse_isas
            best = available_isas()[0]
            isas = list(dict.fromkeys(isa or best for isa in parse_isas(args.isa)))
            at = names.index("c")
            instances[at:at + 1] = [("c", isa) for isa in isas]
        native = fastops_isa()   # the CPU's best, which libraries left to themselves run too
        docs = load_documents([str(default_dataset())])
        train, _ = split_documents(docs, 0.1, 42)
        tok = build_tokenizer("char", train, docs)
        rows = []
        print("| engine | config | batch | first step (ms, wall) | steady ms/step (wall) | steady ms/step (CPU) "
              "| tokens/s | vs train.py |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for cname in configs:
            n_embd, n_layer, n_head, block = STANDARD_CONFIGS[cname]
            cfg = ModelConfig(vocab_size=tok.vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                              block_size=block).validate()
            encoded = [wrap(tok, d, block) for d in train[:4000]]
            one_doc_s = {}  # engine -> seconds per one-document step, to predict bigger batches
            for batch in map(int, args.batch_sizes.split(",")):
                reference = None
                for name, isa in instances:
                    row = engine_label(name, isa)
                    label = f"{cname} ({n_embd},{n_layer},{block})"
                    limit = args.reference_max_step_seconds if name == "python" else args.max_step_seconds
                    if one_doc_s.get(row, 0) * batch > limit:
                        print(f"| {row} | {label} | {batch} | skipped: ~{one_doc_s[row] * batch:.0f} s/step "
                              f"predicted > {limit:g} s | | | | |", flush=True)
                        continue
                    try:
                        engine_cls = load_row(name)
                        fresh_allocator_caches()
                        # the first step (compilation) and two more; a jitted engine may compile a new shape
                        # in one of those, so the faster of the two is the estimate of a step
                        probe = time_engine(engine_cls, cfg, encoded, batch, args.dtype, warmup=1, samples=2,
                                            min_sample_s=0.0, max_steps_per_sample=1, isa=isa,
                                            threads=args.threads)
                        step_s = min(probe.samples_ms) / 1e3
                        if batch == 1:
                            one_doc_s[row] = step_s
                        if step_s > limit:
                            print(f"| {row} | {label} | {batch} | skipped: {step_s:.1f} s/step "
                                  f"> {limit:g} s | | | | |", flush=True)
                            continue
                        # a slow engine (its steady step, not its first: compilation says nothing of the
                        # steps after it): its probe was the warm-up
                        slow = step_s > 0.3
                        t = time_engine(engine_cls, cfg, encoded, batch, args.dtype, warmup=0 if slow else 2,
                                        samples=2 if slow else args.samples, isa=isa, threads=args.threads)
                    except (UserError, ValueError) as e:
                        print(f"| {row} | {label} | {batch} | skipped: {e} | | | | |", flush=True)
                        continue
                    except Exception as e:   # noqa: BLE001 -- a framework that fails here (a JIT compiler
                        # that cannot build its kernels) costs its own row, not the rest of the table
                        first = (str(e).strip().splitlines() or [""])[0][:160]
                        print(f"| {row} | {label} | {batch} | failed: {type(e).__name__}: {first} | | | | |", flush=True)
                        continue
                    if name == "python":
                        reference = t.cpu_ms_per_step
                    speedup = ratio(reference / t.cpu_ms_per_step) if reference else "-"
                    first_ms = probe.warmup_s * 1e3   # the probe's one warm-up step: a fresh engine's first
                    print(f"| {t.label} | {label} | {batch} | {first_ms:,.0f} | {t.ms_per_step:.4g} | "
                          f"{t.cpu_ms_per_step:.4g} | {t.tokens_per_step / (t.cpu_ms_per_step / 1e3):,.0f} | {speedup} |",
                          flush=True)
                    rows.append({**t.to_dict(), "config_name": cname, "speedup_vs_python_cpu": speedup,
                                 "first_step_ms": first_ms, "yardstick": name in YARDSTICKS,
                                 "frameworks_isa": t.isa if name == "c" else frameworks_isa(name, native)})
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.output, rows, indent=1)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

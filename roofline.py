"""roofline.py: how much work a training step does, how fast this machine could do it, and how far each engine is.

    python roofline.py                     # default config, engines without a JIT framework; < 15 s
    python roofline.py --all-configs       # the standard configs, every engine but the *-compile ones; < 1 min
    python roofline.py --engines c --isa all --configs medium,large,xl   # the c engine on each instruction set
    python roofline.py --measure           # re-measure the machine's ceilings first (full sweep, ~20 s)
    python roofline.py --ops               # the per-op FLOP/byte table of one step, and its C phases
    python roofline.py --ops --engine c --configs medium --batch-size 32 --isa all
                                           # the fused C step's measured phases on the roofline
    python roofline.py --results FILE      # engine timings from benchmark results instead of timing here
    python roofline.py --comm --configs medium --batch-size 32   # data parallel: compute vs all-reduce per
                                           # step, N = 1, 2 measured, N = 4..64 projected (~1 min)

For every engine x config it prints FLOPs and bytes per step (microgpt/flops.py, from the real document
lengths of the timed steps), arithmetic intensity, achieved GFLOP/s, the binding roof and the verdict:

  * the compute roof is the fastest measured FMA peak for the engine's dtype and thread count; the
    memory roof is intensity x the bandwidth of the smallest cache level that holds the step's working
    set (a step whose weights, moments and activations fit in L2 is not DRAM-bound, whatever its bytes);
  * "compute-bound" / "<level>-bound": at least half of the lower of the two roofs;
  * "compute-bound (scalar)": within 4x of the roof of unvectorised code (the scalar FMA peak, or the
    memory roof if lower): the time goes to arithmetic, one lane at a time;
  * "overhead-bound": further below even that: most of the time goes to work the FLOP/byte model does
    not count (interpreter, dispatch, allocation), the truth for small pure-Python steps.

The c engine runs the kernels of one instruction set (``--isa``: auto, the best, by default; a comma list
or ``all`` times each as its own row, ``c[avx2]``). A row that names an instruction set the ceilings
measured (avx2, avx512) is held to that set's compute roof ("compute avx2"); others to the fastest.

``--ops --engine c`` profiles the fused C step instead of timing it whole: the MICROGPT_PROFILE=1 build of
fastops (microgpt/native.py compiles it into the cache on first use, ~20 s) trains a few dozen steps on
the real names, and each phase that fastops/profile.h times (embed, linear_forward, attention, norm_act,
cross_entropy, linear_backward; adam only with clipping) gets its time per step, its FLOPs and the bytes
the C step moves (microgpt/flops.py phase_costs), and a place under the roofs: the binding roof at its
intensity is the instruction set's compute peak or the bandwidth of the level that holds the step's
working set (the phases take turns over the same weights, moments and activations each step, so the
step's working set decides where their data come from; a phase more than 25% faster than that level
allows found its data closer, and is held to the nearest level that covers it). The verdict is
"compute-bound" or "<level>-bound" when the phase reaches at least a quarter of that roof, and
"latency-bound" below it: neither FLOP throughput nor bandwidth accounts for its time, which goes to
dependency chains, short loops, thread hand-offs and cache misses nothing prefetched. Each phase is timed
at its fastest sample's rate (on a shared machine a preempted sample runs at half speed or less);
"outside phases" is the rest of the step's wall time (the Python call, packing the batch). The chart has
one point per phase.

``--comm`` puts communication on the roofline (microgpt/comm.py): the all-reduce of torch.distributed (gloo
on CPU, NCCL on CUDA) is timed against message size over 2 processes on this machine (loopback) and the
ring alpha-beta model fitted to it, cached beside the ceilings (``--comm --measure`` re-measures it, a full
sweep to 128 MiB, ~1 min; the first run without a cache takes the quick one, to 16 MiB). Each
engine x config of a data-parallel step that splits the batch of B documents over N ranks, then all-reduces
the gradients (one message of n_params values, and the loss's one value beside it: microgpt/distributed.py),
gets per N:

  * compute: one process's measured step time on its share, ceil(B/N) documents (the slowest rank's);
  * all-reduce: measured at the gradients' exact size for N = 2, the fitted model at N > 2;
  * step = compute + all-reduce, speedup T(1) / T(N) and scaling efficiency T(1) / (N T(N));
  * beside them, N = 2 as it really runs: 2 torchrun processes training the batch (benchmarks/distributed.py,
    as the benchmark matrix's distributed cases), their step time, efficiency and each rank's compute,
    all-reduce (waiting for the other rank included) and update per step (--comm-model-only leaves it out).

N = 1 and 2 come from measurements here; N = 4 .. 64 are a projection from the model, which assumes
every rank has a core of its own and a link like this loopback's (a real network has a larger alpha and
a smaller bandwidth): the table and the chart mark them as such.

Results JSON (``--results`` reads it, ``--save-results`` writes it): a list of records, or an object
whose "results" key holds that list. A record:

    {"engine": "c", "config": {"n_embd": 16, "n_layer": 1, "n_head": 4, "block_size": 16,
                               "vocab_size": 27, "mlp_act": "relu2"},   # the last two optional
     "batch_size": 8, "dtype": "float64", "threads": 1,
     "ms_per_step": 0.41, "tokens_per_step": 61.5,                      # predictions per step
     "doc_lengths": [[7, 5, ...], ...],                                 # optional, see below
     "isa": "avx512"}                                                   # optional: the c engine's kernels

``doc_lengths`` holds the predictions (``len(doc) - 1``) of every document of every timed step, one list
per step; FLOPs are then exact. Without it each document is taken to have tokens_per_step / batch_size
predictions, and the table marks the row with "~" (attention cost depends on the spread of lengths).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from microgpt import UserError, cli, machine, timing
from microgpt.cli import config_label, duration, percent, si
from microgpt.config import DEFAULT_CONFIGS, STANDARD_CONFIGS, ModelConfig
from microgpt.flops import PHASES, PhaseCost, StepCost, phase_costs, step_cost, step_ops

DTYPES = {"float64": ("f64", 8), "float32": ("f32", 4)}
#: A roof counts as reached at half its height: the rest is the usual gap of real code to a micro-benchmark.
BOUND_FRACTION = 0.5
#: Within 4x of the scalar roof, scalar arithmetic (dependency chains, one lane per FMA) explains the time.
SCALAR_FRACTION = 0.25
#: Engines built on a JIT framework spend seconds importing and compiling per config before their first
#: step: the quick run leaves them out (and says so); --all-configs and --engines include them.
FRAMEWORK_PREFIXES = ("torch", "jax", "mlx")
#: Cap on timed steps per engine x config (a C step takes ~10 us: the time budget alone would allow 10^5).
MAX_TIMED_STEPS = 5000
#: A phase below a quarter of the roof that binds at its intensity is "latency-bound": the roof accounts for
#: under a quarter of its time (the same 4x as SCALAR_FRACTION). From a quarter up the phase is named after
#: that roof, and "% roof" says how close it comes.
LATENCY_FRACTION = 0.25
#: A level's roof is a triad's bandwidth; other access patterns (read-mostly, several streams) run up to about
#: this much faster from the same level, so only a phase faster still is taken to find its data in a closer one.
OUTRUN_MARGIN = 1.25
#: The measured profile: warm-up steps, then PROFILE_SAMPLES samples of as many steps as --seconds allows, or
#: more samples (of fewer steps) until PROFILE_MIN_STEPS steps; each phase is timed at its fastest sample's
#: rate (analyse_phases).
PROFILE_WARMUP, PROFILE_SAMPLES, PROFILE_MIN_STEPS = 2, 9, 45
#: The engines whose gradients the data-parallel trainer all-reduces (--comm's default).
COMM_ENGINES = ("torch", "c")
#: Progress lines (stderr) once building or profiling has taken this long.
PROGRESS_AFTER_S = 2.0


# --- engine timings: measured here ----------------------------------------------------------------------

def load_texts(paths: list[str] | None) -> list[str]:
    from microgpt.data import default_dataset, load_documents
    return load_documents(paths or [str(default_dataset())])


def time_engine(engine_cls, cfg: ModelConfig, docs: list[list[int]], batch_size: int, dtype: str, threads: int,
                budget_s: float, isa: str | None = None) -> dict:
    """The lab's timing harness (microgpt/timing.py) within about ``budget_s``: five samples after a warm-up."""
    t = timing.time_engine(engine_cls, cfg, docs, batch_size, dtype, threads, warmup=1, samples=5,
                           min_sample_s=budget_s / 5, max_steps_per_sample=MAX_TIMED_STEPS // 5, isa=isa)
    return t.to_dict()


def measure_engines(names: list[str], configs: list[ModelConfig], texts: list[str], batch_size: int, dtype: str,
                    threads: int, budget_s: float, max_step_s: float,
                    isas: list[str | None] = (None,)) -> tuple[list[dict], list[str]]:
    """Records for every engine x config that runs, and one line per skipped one saying why. The c engine
    is timed once per instruction set of ``isas`` (None: its best)."""
    from engines import load_engine
    from microgpt.tokenizers import build_tokenizer, wrap
    tokenizer = build_tokenizer("char", texts, texts)
    records, skipped = [], []
    for name, isa in [(n, isa) for n in names for isa in (isas if n == "c" else [None])]:
        try:
            engine_cls = load_engine(name)
        except UserError as e:                              # e.g. a framework that is not installed
            skipped.append(f"{name}: {e}")
            continue
        label = timing.engine_label(name, isa)
        rate = None                                         # FLOP/s on the previous config, to predict the next
        for cfg in configs:
            cfg = ModelConfig(**{**timing.model_dict(cfg), "vocab_size": tokenizer.vocab_size})
            docs = [wrap(tokenizer, text, cfg.block_size) for text in texts]
            if rate:
                sample = [len(docs[i]) - 1 for i in random.Random(0).sample(range(len(docs)), min(len(docs), 256))]
                per_step = step_cost(cfg, sample, DTYPES[dtype][1]).flops * batch_size / len(sample)
                if per_step / rate > max_step_s:
                    skipped.append(f"{label} {config_label(cfg)}: predicted {per_step / rate:.0f} s per step "
                                   f"at its {si(rate, 'FLOP/s')} (limit --max-step-seconds {max_step_s:g})")
                    continue
            try:
                record = time_engine(engine_cls, cfg, docs, batch_size, dtype, threads, budget_s, isa)
            except (ValueError, TypeError, NotImplementedError, UserError) as e:    # e.g. an unsupported dtype
                skipped.append(f"{label} {config_label(cfg)}: {e}")
                continue
            records.append(record)
            rate = analyse_cost(record).flops / (record["ms_per_step"] / 1e3)
    return records, skipped


# --- engine timings: read from benchmark results --------------------------------------------------------

def load_results(path: str, flag: str = "--results") -> list[dict]:
    """Benchmark records from ``path``, checked; a UserError names ``flag`` (the option that gave it) and the record."""
    data = cli.read_json(path, flag)
    records = data.get("results") if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise UserError(f"{flag} {path} must hold a non-empty list of records (or {{\"results\": [...]}})")
    for i, r in enumerate(records):
        where = f"{flag} {path}, record {i}"
        if not isinstance(r, dict):
            raise UserError(f"{where}: not an object")
        missing = [k for k in ("engine", "config", "batch_size", "dtype", "threads", "ms_per_step", "tokens_per_step")
                   if k not in r]
        if missing:
            raise UserError(f"{where}: missing {', '.join(missing)}")
        if r["dtype"] not in DTYPES:
            raise UserError(f"{where}: dtype must be one of {', '.join(DTYPES)} (got {r['dtype']!r})")
        for key in ("batch_size", "threads") + (("ranks",) if "ranks" in r else ()):
            if not isinstance(r[key], int) or isinstance(r[key], bool) or r[key] < 1:
                raise UserError(f"{where}: {key} must be an integer >= 1 (got {r[key]!r})")
        for key in ("ms_per_step", "tokens_per_step"):
            if not isinstance(r[key], (int, float)) or isinstance(r[key], bool) or not r[key] > 0:
                raise UserError(f"{where}: {key} must be a number > 0 (got {r[key]!r})")
        if not isinstance(r["config"], dict):
            raise UserError(f"{where}: config must be an object")
        try:
            r["model_config"] = ModelConfig.from_dict(r["config"])
        except TypeError as e:
            raise UserError(f"{where}: bad config ({e})") from None
        if r.get("isa") is not None and not isinstance(r["isa"], str):
            raise UserError(f"{where}: isa must be a string such as \"avx2\" (got {r['isa']!r})")
        lengths = r.get("doc_lengths")
        if lengths is not None and not (isinstance(lengths, list) and lengths
                                        and all(isinstance(step, list) and step for step in lengths)):
            raise UserError(f"{where}: doc_lengths must be a non-empty list of non-empty lists (one per step)")
    return records


# --- analysis -------------------------------------------------------------------------------------------

def analyse_cost(record: dict) -> StepCost:
    """Mean per-step cost of the record's steps (FLOPs exact when doc_lengths is present)."""
    cfg = record.get("model_config") or ModelConfig.from_dict(record["config"])
    size = DTYPES[record["dtype"]][1]
    steps = record.get("doc_lengths")
    if not steps:
        n = max(1, min(cfg.block_size, round(record["tokens_per_step"] / record["batch_size"])))
        steps = [[n] * record["batch_size"]]
    costs = [step_cost(cfg, lengths, size) for lengths in steps]
    mean = lambda field: round(statistics.fmean(getattr(c, field) for c in costs))
    return StepCost(mean("flops"), mean("bytes"), mean("matmul_fwd_flops"), mean("matmul_bwd_flops"),
                    max(c.working_set_bytes for c in costs))


def roof_isa(ceilings: dict, dtype: str, isa: str | None) -> str | None:
    """The ceilings' instruction set for an engine running ``isa``: itself when measured, else None (the fastest)."""
    return isa if isa and isa in ceilings["compute"].get(dtype, {}) else None


def binding_roof(ai: float, ceilings: dict, dtype: str, threads: int, level: str,
                 isa: str | None = None) -> tuple[str, float]:
    """The lower roof at intensity ``ai``: ("compute" or "compute avx2", its peak) or (``level``, ai x bandwidth)."""
    by_isa = roof_isa(ceilings, dtype, isa)
    compute = machine.peak(ceilings, dtype, threads, isa=by_isa)
    memory = ai * machine.bandwidth(ceilings, level, threads)
    if compute <= memory:
        return "compute" + (f" {by_isa}" if by_isa else ""), compute
    return level, memory


def classify(ai: float, achieved: float, ceilings: dict, dtype: str, threads: int, level: str,
             isa: str | None = None) -> dict:
    """Where a point of intensity ``ai`` (FLOP/byte) running at ``achieved`` FLOP/s sits under the roofs;
    code on the kernels of a measured instruction set ``isa`` is held to that set's compute roof."""
    roof, attainable = binding_roof(ai, ceilings, dtype, threads, level, isa)
    memory = ai * machine.bandwidth(ceilings, level, threads)
    scalar = min(machine.peak(ceilings, dtype, threads, isa="scalar"), memory)
    if achieved >= BOUND_FRACTION * attainable:
        verdict = "compute-bound" if roof.startswith("compute") else f"{level}-bound"
    elif achieved >= SCALAR_FRACTION * scalar:
        verdict = "compute-bound (scalar)"
    else:
        verdict = "overhead-bound"
    return {"roof": roof, "roof_flops": attainable, "percent": 100 * achieved / attainable, "verdict": verdict}


def cores(record: dict) -> int:
    """The cores a record's step ran on, which its roofs are: threads per process x data-parallel ranks."""
    return record["threads"] * record.get("ranks", 1)


def analyse(record: dict, ceilings: dict) -> dict:
    """A record on the roofline. A data-parallel record (``ranks`` > 1, benchmark.py's ``... r2`` cases) is
    one step of the whole batch on threads x ranks cores, held to that many cores' roofs; its "threads"
    are those cores, and its engine is labelled with the ranks."""
    cost = analyse_cost(record)
    dtype = DTYPES[record["dtype"]][0]
    achieved = cost.flops / (record["ms_per_step"] / 1e3)
    n = cores(record)
    level = machine.level_for(ceilings, cost.working_set_bytes, n)
    cfg = record.get("model_config") or ModelConfig.from_dict(record["config"])
    isa, ranks = record.get("isa"), record.get("ranks", 1)
    return {"engine": timing.engine_label(record["engine"], isa) + (f" r{ranks}" if ranks > 1 else ""), "isa": isa,
            "config": config_label(cfg), "batch_size": record["batch_size"],
            "dtype": record["dtype"], "threads": n, "ranks": ranks, "ms_per_step": record["ms_per_step"],
            "flops": cost.flops, "bytes": cost.bytes, "intensity": cost.intensity, "achieved": achieved,
            "level": level, "exact": bool(record.get("doc_lengths")),
            **classify(cost.intensity, achieved, ceilings, dtype, n, level, isa)}


# --- the fused C step, phase by phase (--ops --engine c) --------------------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_profiled_fastops(log=_log):
    """The MICROGPT_PROFILE=1 build of fastops; says so when it is being compiled (first use after a change)."""
    from microgpt import native
    notice = threading.Timer(0.5, log, ["building the profiled fastops (MICROGPT_PROFILE=1; once per version of "
                                        "the sources, ~20 s) ..."])
    notice.daemon = True
    t0 = time.perf_counter()
    notice.start()
    try:
        module = native.profiled_fastops()
    finally:
        notice.cancel()
    if time.perf_counter() - t0 > 0.5:
        log(f"profiled fastops ready after {time.perf_counter() - t0:.0f} s: {module.__file__}")
    return module


def profiled_engine(module):
    """train_fast.FastEngine (the c engine, built exactly as the benchmarks build it) on the profiled ``module``."""
    import train_fast

    class ProfiledFastEngine(train_fast.FastEngine):
        def __init__(self, *args, **kwargs):
            installed = train_fast._fastops
            train_fast._fastops = lambda: module   # FastEngine asks for the module once, while it constructs
            try:
                super().__init__(*args, **kwargs)
            finally:
                train_fast._fastops = installed
    return ProfiledFastEngine


def profile_phases(engine_cls, cfg: ModelConfig, docs: list[list[int]], batch_size: int, dtype: str, threads: int,
                   budget_s: float, isa: str | None = None, label: str = "", log=_log,
                   started: float | None = None) -> dict:
    """Trains on ``docs`` with the profiled c engine: PROFILE_SAMPLES samples of k steps after a warm-up, and
    for each sample the seconds per step of every phase (GPT.profile), the wall time and the doc lengths.
    Progress goes to ``log`` once the command (begun at ``started``) has run PROGRESS_AFTER_S."""
    start = time.perf_counter()
    started = start if started is None else started
    if start - started > PROGRESS_AFTER_S:
        log(f"profiling {label} ...")
    timer = timing.EngineTimer(engine_cls, cfg, docs, batch_size, dtype, threads, isa=isa)
    model = timer.engine.model
    timer.warm_up(PROFILE_WARMUP)
    # slow steps make short samples, and more of them: each is a fresh chance to run undisturbed
    k = timer.steps_for(budget_s / PROFILE_SAMPLES, MAX_TIMED_STEPS // PROFILE_SAMPLES)
    n_samples = max(PROFILE_SAMPLES, math.ceil(PROFILE_MIN_STEPS / k))
    model.profile(reset=True)
    samples, last_log = [], start
    for i in range(n_samples):
        wall_ms, _, lengths = timer.sample(k)
        prof = model.profile(reset=True)
        samples.append({"step_s": wall_ms / 1e3, "lengths": lengths,
                        "seconds": {name: p["seconds"] / k for name, p in prof.items()},
                        "calls": {name: p["calls"] / k for name, p in prof.items()}})
        if time.perf_counter() - last_log > PROGRESS_AFTER_S:       # a line every few seconds at most
            last_log = time.perf_counter()
            log(f"  {label}: sample {i + 1}/{n_samples} ({k} step{'s' * (k > 1)}, {duration(wall_ms / 1e3)}/step)")
    return {"isa": timer.isa, "steps_per_sample": k, "samples": samples}


def phase_verdict(ai: float, achieved: float, ceilings: dict, dtype: str, threads: int, level: str,
                  isa: str | None = None) -> dict:
    """The roof that binds a phase at intensity ``ai``, how close it comes, and compute-, <level>- or latency-bound.
    ``level`` holds the step's working set; a phase that outruns its bandwidth by more than OUTRUN_MARGIN
    evidently found its data closer (written or read just before it), and is held to the nearest closer level
    whose bandwidth covers it."""
    bandwidths = machine.levels(ceilings, threads)
    closer = [name for name in machine.LEVELS if name in bandwidths]
    closer = closer[:closer.index(level) + 1] if level in closer else [level]
    while len(closer) > 1 and achieved > OUTRUN_MARGIN * ai * bandwidths[closer[-1]]:
        closer.pop()
    level = closer[-1]
    roof, attainable = binding_roof(ai, ceilings, dtype, threads, level, isa)
    if achieved >= LATENCY_FRACTION * attainable:
        verdict = "compute-bound" if roof.startswith("compute") else f"{level}-bound"
    else:
        verdict = "latency-bound"
    return {"roof": roof, "roof_flops": attainable, "percent": 100 * achieved / attainable, "verdict": verdict}


def mean_phase_costs(cfg: ModelConfig, steps: list[list[int]], dtype_bytes: int,
                     fused_max_tokens: int) -> dict[str, PhaseCost]:
    """phase_costs averaged over the steps (FLOPs and bytes per step, as floats)."""
    total = {name: PhaseCost(name) for name in PHASES}
    for lengths in steps:
        for name, cost in phase_costs(cfg, lengths, dtype_bytes, fused_max_tokens=fused_max_tokens).items():
            total[name].flops += cost.flops
            total[name].bytes += cost.bytes
            total[name].fusion_saved_bytes += cost.fusion_saved_bytes
    for cost in total.values():
        cost.flops, cost.bytes = cost.flops / len(steps), cost.bytes / len(steps)
        cost.fusion_saved_bytes /= len(steps)
    return total


def analyse_phases(run: dict, cfg: ModelConfig, dtype: str, threads: int, ceilings: dict,
                   fused_max_tokens: int) -> dict:
    """Each phase of a profile_phases run placed on the roofline: rows for the phases that ran, then the time
    outside them, then the whole step (the sum of the rows above it).

    A phase's FLOPs and bytes are its mean per step over every profiled step; its time per step is that
    work at the phase's fastest rate in any sample: other processes only ever slow code down, and on a
    shared machine a preempted sample can take twice as long (the same "best of" as the lab's timing tests)."""
    size = DTYPES[dtype][1]
    samples = run["samples"]
    steps = [lengths for sample in samples for lengths in sample["lengths"]]
    costs = mean_phase_costs(cfg, steps, size, fused_max_tokens)
    per_sample = [mean_phase_costs(cfg, sample["lengths"], size, fused_max_tokens) for sample in samples]
    level = machine.level_for(ceilings, max(step_cost(cfg, lengths, size).working_set_bytes for lengths in steps),
                              threads)
    short = DTYPES[dtype][0]
    seconds = {}
    for name in PHASES:
        if costs[name].flops:
            best = max(c[name].flops / s["seconds"][name] for c, s in zip(per_sample, samples)
                       if s["seconds"][name] > 0)
            seconds[name] = costs[name].flops / best
        else:
            seconds[name] = min(s["seconds"][name] for s in samples)
    # the counters' ticks are calibrated against the wall clock to ~1e-4: never below zero
    seconds["outside phases"] = max(0.0, min(s["step_s"] - sum(s["seconds"].values()) for s in samples))
    step_s = sum(seconds.values())

    def row(name: str, seconds: float, flops: float, nbytes: float) -> dict:
        r = {"phase": name, "seconds": seconds, "share": 100 * seconds / step_s, "flops": flops, "bytes": nbytes}
        if flops and seconds > 0:
            ai = flops / nbytes
            r.update(intensity=ai, achieved=flops / seconds,
                     **phase_verdict(ai, flops / seconds, ceilings, short, threads, level, run["isa"]))
        return r

    rows = []
    for name in PHASES:
        if costs[name].flops == 0 and not any(s["calls"][name] for s in samples):
            continue                                           # adam: its own pass only with clipping
        rows.append(row(name, seconds[name], costs[name].flops, costs[name].bytes))
    rows.append(row("outside phases", seconds["outside phases"], 0, 0))
    rows.append(row("step", step_s, sum(c.flops for c in costs.values()), sum(c.bytes for c in costs.values())))
    n = len(steps)
    return {"isa": run["isa"], "rows": rows, "level": level, "steps": n, "steps_per_sample": run["steps_per_sample"],
            "samples": len(samples),
            "wall_s": statistics.median(s["step_s"] for s in samples), "tokens": sum(map(sum, steps)) / n,
            "fused": sum(sum(lengths) <= fused_max_tokens for lengths in steps) / n}


# --- printing -------------------------------------------------------------------------------------------

def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    for r in rows:
        print(line(r))


def print_ceilings(c: dict, path: Path) -> None:
    cpu = c["cpu"]
    mhz = f"; /proc/cpuinfo says {cpu['reported_mhz']:.0f} MHz" if cpu.get("reported_mhz") else ""
    print(f"machine: {cpu['model']}, {cpu['cpus']} CPUs, clock {cpu['measured_hz'] / 1e9:.2f} GHz measured "
          f"(dependent-add chain{mhz})")
    print(f"ceilings: {c['quality']} sweep of {c['created']} in {path} (re-measure: --measure)")
    threads = sorted({t for by_isa in c["compute"].values() for by_t in by_isa.values() for t in by_t}, key=int)
    rows = [[f"{dtype} {isa}"] + [f"{by_t[t] / 1e9:.1f}" if t in by_t else "-" for t in threads]
            + [f"{by_t['1'] / cpu['measured_hz']:.1f}"]
            for dtype, by_isa in c["compute"].items() for isa, by_t in by_isa.items()]
    print_table(rows, ["peak GFLOP/s"] + [f"{t} thr" for t in threads] + ["FLOP/cycle"])
    names = list(machine.LEVELS)
    rows = [[f"{kind}, {t} thr"] + [f"{levels[n] / 1e9:.1f}" if n in levels else "-" for n in names]
            for kind, by_t in c["levels"].items() for t, levels in by_t.items()]
    print_table(rows, ["bandwidth GB/s"] + names)
    caches = ", ".join(f"L{x['level']} {cli.binary_size(x['size'])}" for x in c["caches"])
    knees = ", ".join(map(cli.binary_size, c["knees"]["triad"]["1"]))
    print(f"  OS cache sizes (per instance): {caches}; triad curve knees (1 thread): {knees}")
    print("  triad counts 24 B/element (STREAM): the write-allocate read of a's line is not counted")
    for note in c.get("notes", []):
        print(f"  warning: {note}")


def print_ops(cfg: ModelConfig, lengths: list[int], dtype_bytes: int) -> None:
    ops = step_ops(cfg, lengths, dtype_bytes)
    total_flops = sum(op.flops for op in ops)
    print(f"per-op cost of one step: {config_label(cfg)}, {len(lengths)} docs, {sum(lengths)} predictions "
          f"(lengths {lengths}), {dtype_bytes}-byte values")
    rows = [[op.name, si(op.fwd_flops), si(op.bwd_flops), si(op.upd_flops), f"{100 * op.flops / total_flops:.1f}",
             si(op.bytes, "B"), f"{op.flops / op.bytes:.2f}", "mm" if op.matmul else ""] for op in ops]
    cost = step_cost(cfg, lengths, dtype_bytes)
    rows.append(["total", si(sum(o.fwd_flops for o in ops)), si(sum(o.bwd_flops for o in ops)),
                 si(sum(o.upd_flops for o in ops)), "100", si(cost.bytes, "B"), f"{cost.intensity:.2f}", ""])
    print_table(rows, ["op", "fwd FLOP", "bwd FLOP", "Adam FLOP", "% FLOP", "bytes", "FLOP/B", ""])
    print(f"working set {cli.binary_size(cost.working_set_bytes)} (weights, grads, Adam moments, saved activations)")
    phases = [p for p in phase_costs(cfg, lengths, dtype_bytes).values() if p.flops]
    print("the same step in the phases of the fused C engine (bytes as it moves them, Adam fused into the backward "
          "pass; --engine c times them):")
    print_table([[p.name, si(p.flops), f"{100 * p.flops / total_flops:.1f}", si(p.bytes, "B"), f"{p.intensity:.2f}"]
                 for p in phases], ["phase", "FLOP", "% FLOP", "bytes", "FLOP/B"])


def print_phases(analysis: dict, label: str, cfg: ModelConfig, batch_size: int, dtype: str, threads: int) -> None:
    a = analysis
    path = ("fused pass" if a["fused"] == 1 else "gemms" if a["fused"] == 0
            else f"fused pass in {100 * a['fused']:.0f}% of steps, gemms in the rest")
    print(f"phases of the fused C step: {label} {config_label(cfg)}, batch {batch_size}, {dtype}, {threads} "
          f"thread{'s' * (threads > 1)}; {a['steps']} steps on real names ({a['samples']} samples of "
          f"{a['steps_per_sample']}; each phase at its fastest sample's rate; the median step took "
          f"{duration(a['wall_s'])}); {a['tokens']:.1f} predictions/step; linear backward: {path}; "
          f"step working set in {a['level']}")
    rows = []
    for r in a["rows"]:
        placed = "achieved" in r
        rows.append([r["phase"], duration(r["seconds"]), f"{r['share']:.1f}",
                     si(r["flops"]) if r["flops"] else "", si(r["bytes"], "B") if r["bytes"] else "",
                     f"{r['intensity']:.2f}" if placed else "", f"{r['achieved'] / 1e9:.3g}" if placed else "",
                     f"{r['roof']} {r['roof_flops'] / 1e9:.3g}" if placed else "",
                     percent(r['percent']) if placed else "", r.get("verdict", "")])
    print_table(rows, ["phase", "time/step", "% step", "FLOP/step", "bytes/step", "FLOP/B", "GFLOP/s", "roof GFLOP/s",
                       "% roof", "verdict"])


# --- main -----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.OneLineErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="re-measure the machine's ceilings (full sweep)")
    p.add_argument("--all-configs", action="store_true",
                   help=f"the standard grid ({', '.join(DEFAULT_CONFIGS)}), not just the first")
    p.add_argument("--configs", metavar="NAMES",
                   help=f"comma-separated names from {', '.join(STANDARD_CONFIGS)} instead (large, xl: only so)")
    p.add_argument("--ops", action="store_true",
                   help="print the per-op FLOP/byte table of one step and its phases in the fused C step")
    p.add_argument("--engine", metavar="NAME",
                   help="with --ops: c profiles the fused C step's phases while it trains (the only engine with a "
                        "per-phase profile) and places each on the roofline")
    p.add_argument("--comm", action="store_true",
                   help="data parallel: the measured all-reduce model (2 processes here), compute vs all-reduce per "
                        "step for N = 1, 2 measured and N = 4..64 projected, and a chart (default engines torch,c)")
    p.add_argument("--comm-model-only", action="store_true",
                   help="with --comm: leave out the real data-parallel step on 2 torchrun processes (~15 s per engine "
                        "x config; the table's torchrun columns stay empty)")
    p.add_argument("--results", metavar="FILE", help="benchmark results JSON instead of timing engines here")
    p.add_argument("--save-results", metavar="FILE", help="write the timings measured here as results JSON (with "
                                                           "--comm: the model and the table, what its chart draws)")
    p.add_argument("--engines", help="comma-separated engines to time (default: every registered engine)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="documents to time on (default: names.txt)")
    p.add_argument("--batch-size", type=int, default=1, help="documents per timed step (default 1)")
    shape = p.add_argument_group("model shape, the trainer's flags (one config instead of --configs; the rest from "
                                 "the defaults)")
    cli.add_config_flags(shape, ModelConfig, only=cli.SHAPE_KEYS)
    p.add_argument("--dtype", choices=DTYPES, default="float64")
    p.add_argument("--threads", type=int, default=1, help="threads each engine may use")
    p.add_argument("--isa", default="auto",
                   help="the c engine's instruction sets, comma-separated: auto (the best), all, or names such as "
                        "avx512,avx2,sse,neon,generic; each is its own row, c[avx2] (default: auto)")
    p.add_argument("--seconds", type=float, default=0.5, help="timing budget per engine x config (default 0.5)")
    p.add_argument("--max-step-seconds", type=float, default=1.5,
                   help="skip an engine x config predicted to take longer per step (default 1.5)")
    p.add_argument("--chart", metavar="STEM", help="chart path without suffix ('' = none; default out/roofline, "
                                                    "and out/roofline-phases for --ops --engine c)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1:
        raise UserError("--batch-size and --threads must be integers >= 1")
    if not args.seconds > 0 or not args.max_step_seconds > 0:
        raise UserError("--seconds and --max-step-seconds must be > 0")
    if args.comm_model_only and not args.comm:
        raise UserError("--comm-model-only is an option of --comm")
    if args.engine is not None:
        if args.engine != "c":
            raise UserError(f"--engine {args.engine}: only the fused C step has a per-phase profile (--ops --engine c)")
        if not args.ops:
            raise UserError("--engine c profiles the phases of a step with --ops; to time whole steps use --engines")
        if args.results or args.engines:
            raise UserError("--ops --engine c profiles the c engine here; --results and --engines are for "
                            "whole-step timings")
    return args


def chosen_configs(args: argparse.Namespace) -> list[ModelConfig]:
    """--configs / --all-configs by name, or the one config of the shape flags."""
    shape = {k: getattr(args, k) for k in cli.SHAPE_KEYS if getattr(args, k) is not None}
    if shape:
        if args.configs or args.all_configs:
            raise UserError("the shape flags (--n-embd, --n-layer, --n-head, --block-size, --mlp-act) make one "
                            "config: drop --configs / --all-configs")
        return [ModelConfig(**shape).validate()]
    chosen = args.configs.split(",") if args.configs else list(DEFAULT_CONFIGS[:len(DEFAULT_CONFIGS) if
                                                                             args.all_configs else 1])
    unknown = [name for name in chosen if name not in STANDARD_CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(STANDARD_CONFIGS)})")
    return [ModelConfig(n_embd=c, n_layer=l, n_head=h, block_size=b)
            for c, l, h, b in (STANDARD_CONFIGS[name] for name in chosen)]


def profile_main(args: argparse.Namespace, configs: list[ModelConfig]) -> int:
    """--ops --engine c: each config x instruction set profiled phase by phase, printed and charted."""
    from microgpt.tokenizers import build_tokenizer, wrap
    from train_fast import parse_isas
    started = time.perf_counter()
    isas = parse_isas(args.isa)
    module = load_profiled_fastops()
    path = machine.cache_path()
    ceilings = machine.ceilings(remeasure=args.measure, quality="full" if args.measure else "quick", path=path)
    sys.stderr.flush()
    print_ceilings(ceilings, path)
    print()
    texts = load_texts(args.data)
    tokenizer = build_tokenizer("char", texts, texts)
    engine_cls = profiled_engine(module)
    points, roofs = [], {}
    for cfg in configs:
        cfg = ModelConfig(**{**timing.model_dict(cfg), "vocab_size": tokenizer.vocab_size})
        docs = [wrap(tokenizer, text, cfg.block_size) for text in texts]
        for isa in isas:
            label = timing.engine_label("c", isa)
            try:
                run = profile_phases(engine_cls, cfg, docs, args.batch_size, args.dtype, args.threads, args.seconds,
                                     isa, f"{label} {config_label(cfg)} batch {args.batch_size}", started=started)
            except (ValueError, TypeError) as e:
                raise UserError(f"{label} {config_label(cfg)}: {e}") from None
            label = timing.engine_label("c", run["isa"])
            analysis = analyse_phases(run, cfg, args.dtype, args.threads, ceilings, module.FUSED_MAX_TOKENS)
            print_phases(analysis, label, cfg, args.batch_size, args.dtype, args.threads)
            print()
            run_label = f"{label} {config_label(cfg)} b{args.batch_size}"
            points += [{"engine": r["phase"], "config": run_label, "intensity": r["intensity"],
                        "achieved": r["achieved"], "threads": args.threads}
                       for r in analysis["rows"] if "achieved" in r and r["phase"] != "step"]
            by_isa = roof_isa(ceilings, DTYPES[args.dtype][0], run["isa"])
            if by_isa:
                roofs[f"{args.dtype.replace('float', 'fp')} {by_isa}"] = machine.peak(
                    ceilings, DTYPES[args.dtype][0], args.threads, isa=by_isa)
    stem = "out/roofline-phases" if args.chart is None else args.chart
    if stem and points:
        cpu = ceilings["cpu"]["model"]
        draw_chart("roofline_chart", ceilings, points, stem, roofs=list(roofs.items()),
                   title=f"Phases of the fused C step — {cpu}, {args.threads} thread{'s' * (args.threads > 1)}")
    return 0


#: Ranks of the data-parallel projection (--comm): N = 1 and 2 measured here, the rest from the model.
COMM_WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)
MEASURED_WORLD_SIZES = (1, 2)
SOURCES = {"measured": "measured: compute + all-reduce, each alone", "model": "measured compute, fitted all-reduce",
           "projection": "projection (model)"}


def print_comm(record: dict, path: Path) -> None:
    """The all-reduce measurement: its fitted alpha and beta, then every size with the model's residual."""
    fit = record["fit"]
    print(f"all-reduce: {record['backend']} over {record['world_size']} processes, {record['transport']}, torch "
          f"{record['torch']}; {record['quality']} sweep of {record['created']} in {path} (re-measure: --measure)")
    print(f"  model: {record['model']}")
    print(f"  fit (least squares on the medians, weighted by 1/T^2): alpha {duration(fit['alpha_s'])}, beta "
          f"{fit['beta_s_per_byte'] * 1e9:.3g} ns/B ({si(1 / fit['beta_s_per_byte'], 'B/s') if fit['beta_s_per_byte'] else 'inf'}); "
          f"residuals rms {100 * fit['rms_residual']:.0f}%, largest {100 * fit['max_residual']:.0f}%")
    grads = {n: label for label, n in comm_gradient_sizes().items()}
    rows = [[cli.binary_size(n), duration(t), f"{duration(q1)} .. {duration(q3)}",
             duration(t / (1 + r)), f"{100 * r:+.0f}%", grads.get(n, "")]
            for n, t, (q1, q3), r in zip(record["sizes"], record["median_s"], record["quartiles_s"], fit["residuals"])]
    print_table(rows, ["message", "median", "quartiles", "model", "residual", "gradients of"])


def comm_gradient_sizes() -> dict[str, int]:
    from microgpt import comm
    return comm.gradient_sizes()


def allreduce_at(record: dict, n_bytes: int, world_size: int) -> tuple[float, str]:
    """Seconds of one all-reduce of ``n_bytes`` over ``world_size`` ranks and where the figure comes from:
    the measured median at that exact size and N, else the fitted model (a projection beyond the measured N)."""
    from microgpt import comm
    if world_size == 1:
        return 0.0, "measured"
    if world_size == record["world_size"] and n_bytes in record["sizes"]:
        return record["median_s"][record["sizes"].index(n_bytes)], "measured"
    source = "model" if world_size == record["world_size"] else "projection"
    return comm.allreduce_seconds(record["fit"], n_bytes, world_size), source


def scaling_rows(compute_s: dict[int, float], grad_bytes: int, record: dict, batch_size: int,
                 world_sizes=COMM_WORLD_SIZES, measured_steps: dict[int, float] | None = None) -> list[dict]:
    """Per N: the share of the slowest rank, its compute seconds (``compute_s`` by per-rank batch), the
    all-reduce's, their sum, speedup and efficiency against N = 1, and whether N was measured or projected.
    ``measured_steps`` (N -> seconds of a real data-parallel step under torchrun) adds those beside."""
    rows = []
    for n in world_sizes:
        share = math.ceil(batch_size / n)
        allreduce, source = allreduce_at(record, grad_bytes, n)
        step = compute_s[share] + allreduce
        rows.append({"world_size": n, "share": share, "compute_s": compute_s[share], "allreduce_s": allreduce,
                     "step_s": step, "allreduce_source": source,
                     "projection": n not in MEASURED_WORLD_SIZES or source == "projection",
                     "measured_step_s": (measured_steps or {}).get(n)})
    t1 = rows[0]["step_s"]
    for r in rows:
        r["speedup"] = t1 / r["step_s"]
        r["efficiency"] = r["speedup"] / r["world_size"]
        if r["measured_step_s"]:
            r["measured_efficiency"] = (rows[0]["measured_step_s"] or t1) / (r["world_size"] * r["measured_step_s"])
    return rows


def time_data_parallel(name: str, cfg: ModelConfig, args: argparse.Namespace) -> tuple[dict[int, float], list]:
    """A real data-parallel step: ``name`` trained by 2 torchrun processes (benchmarks/distributed.py, the
    benchmark matrix's distributed cases) on the batch; {2: seconds per step} and each rank's compute,
    all-reduce and update milliseconds per step."""
    from benchmarks.distributed import time_case
    from microgpt.data import default_dataset
    _log(f"timing {name} {config_label(cfg)} batch {args.batch_size} as 2 torchrun processes (startup ~10 s)")
    config = {k: getattr(cfg, k) for k in ("n_embd", "n_layer", "n_head", "block_size", "mlp_act")}
    case = {"id": "roofline", "engine": name, "config": config, "batch_size": args.batch_size, "dtype": args.dtype,
            "threads": args.threads, "ranks": 2}
    data = args.data[0] if args.data else str(default_dataset())
    t = time_case(case, data, warmup=2, samples=5, min_sample_s=args.seconds / 5)
    return {2: t["ms_per_step"] / 1e3}, t["rank_parts_ms"]


def comm_main(args: argparse.Namespace, configs: list[ModelConfig]) -> int:
    """--comm: the all-reduce model, then per engine x config the data-parallel step at every N, and a chart."""
    from engines import load_engine
    from microgpt import comm
    from microgpt.params import num_params
    from microgpt.tokenizers import build_tokenizer, wrap
    names = args.engines.split(",") if args.engines else list(COMM_ENGINES)
    record = comm.comm_model(2, remeasure=args.measure, quality="full" if args.measure else "quick")
    sys.stderr.flush()
    print_comm(record, comm.cache_path(record["backend"], record["world_size"]))
    print()
    texts = load_texts(args.data)
    tokenizer = build_tokenizer("char", texts, texts)
    # the benchmark gate's document order (benchmarks/gate/count.py), which the torchrun step trains on too
    random.Random(0).shuffle(texts)
    shares = sorted({math.ceil(args.batch_size / n) for n in COMM_WORLD_SIZES}, reverse=True)
    results = []
    for name in names:
        engine_cls = load_engine(name)
        for cfg in configs:
            cfg = ModelConfig(**{**timing.model_dict(cfg), "vocab_size": tokenizer.vocab_size})
            docs = [wrap(tokenizer, text, cfg.block_size) for text in texts]
            compute = {}
            for share in shares:
                _log(f"timing {name} {config_label(cfg)} on a rank's share: batch {share} "
                     f"({shares.index(share) + 1}/{len(shares)})")
                compute[share] = time_engine(engine_cls, cfg, docs, share, args.dtype, args.threads,
                                             args.seconds)["ms_per_step"] / 1e3
            grad_bytes = num_params(cfg) * DTYPES[args.dtype][1]
            measured, parts = {}, None
            if not args.comm_model_only:
                measured, parts = time_data_parallel(name, cfg, args)
            rows = scaling_rows(compute, grad_bytes, record, args.batch_size, measured_steps=measured)
            results.append({"engine": name, "config": config_label(cfg), "grad_bytes": grad_bytes, "rows": rows,
                            "torchrun_rank_parts_ms": parts})
            print(f"data-parallel step: {name} {config_label(cfg)}, batch {args.batch_size} split over N ranks, "
                  f"{args.dtype}, {args.threads} thread{'s' * (args.threads > 1)} per rank; gradients "
                  f"{cli.binary_size(grad_bytes)} all-reduced once per step over {record['backend']}")
            print_table([[r["world_size"], r["share"], f"{r['compute_s'] * 1e3:.3g}", f"{r['allreduce_s'] * 1e3:.3g}",
                          f"{100 * r['allreduce_s'] / r['step_s']:.0f}", f"{r['step_s'] * 1e3:.3g}",
                          f"{r['speedup']:.2f}", f"{100 * r['efficiency']:.0f}",
                          f"{r['measured_step_s'] * 1e3:.3g}" if r["measured_step_s"] and r["world_size"] > 1 else "",
                          f"{100 * r['measured_efficiency']:.0f}" if r["measured_step_s"] and r["world_size"] > 1 else "",
                          SOURCES[r["allreduce_source"]] if r["world_size"] > 1 else "measured"]
                         for r in rows],
                        ["N", "docs/rank", "compute ms", "all-reduce ms", "% comm", "step ms", "speedup",
                         "% efficiency", "torchrun ms", "torchrun % eff", "source"])
            if parts:
                print("torchrun step by part (medians, ms per step): " + "; ".join(
                    f"rank {i}: compute {c:.3g}, all-reduce {a:.3g} ({100 * a / (c + a + u):.0f}%, waiting for the "
                    f"other rank included), update {u:.3g}" for i, (c, a, u) in enumerate(parts)))
            print()
    print("compute: one process's measured step on a rank's share of the batch; N >= 4 assumes a core per rank and "
          "a link like this machine's loopback, and is a projection, not a measurement")
    if args.save_results:       # what the chart is drawn from: benchmark.py publish --record-comm takes it
        machine.save({"kind": "comm", "record": record, "results": results, "batch_size": args.batch_size,
                      "dtype": args.dtype}, Path(args.save_results))
    stem = "out/roofline-comm" if args.chart is None else args.chart
    if stem and results:
        draw_chart("comm_chart", record, results, stem, batch_size=args.batch_size, dtype=args.dtype)
    return 0


def draw_chart(chart: str, *args, **options) -> None:
    """One chart of report_charts (``chart`` names its function, which gets the arguments) as SVG and PNG, or a
    note when matplotlib (the dev extra) is not installed: the tables above are the measurement, the chart
    only draws them."""
    try:
        import report_charts
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib); --chart '' leaves it out")
        return
    written = getattr(report_charts, chart)(*args, **options)
    print(f"chart: {', '.join(map(str, written))}")


def run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    configs = chosen_configs(args)
    if args.comm:
        if args.ops or args.results:
            raise UserError("--comm times the engines here per rank's share of the batch: drop --ops / --results")
        return comm_main(args, configs)
    if args.ops and args.engine:
        return profile_main(args, configs)
    if args.ops:
        texts = load_texts(args.data)
        from microgpt.tokenizers import build_tokenizer
        vocab = build_tokenizer("char", texts, texts).vocab_size
        sample = random.Random(0).sample(texts, args.batch_size)
        for cfg in configs:
            lengths = [min(len(t) + 1, cfg.block_size) for t in sample]
            print_ops(ModelConfig(**{**timing.model_dict(cfg), "vocab_size": vocab}), lengths, DTYPES[args.dtype][1])
            print()
        return 0

    from engines import ENGINES
    names = args.engines.split(",") if args.engines else list(ENGINES)
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise UserError(f"--engines: unknown {', '.join(unknown)} (registered: {', '.join(ENGINES)})")
    isas: list[str | None] = [None]
    if args.isa.strip().lower() != "auto":
        if args.results:
            raise UserError("--isa chooses the kernels timed here; the records of --results name their own isa")
        if "c" not in names:
            raise UserError("--isa picks the kernels of the c engine, which is not among the engines timed")
        from train_fast import parse_isas
        isas = parse_isas(args.isa)
    left_out = []
    if not args.engines:
        # the quick run leaves out every JIT framework; --all-configs only those that compile for tens
        # of seconds per config (their timings come from benchmark results through --results)
        slow = [n for n in names if n.startswith(FRAMEWORK_PREFIXES) and (not args.all_configs or
                                                                         n.endswith("-compile"))]
        left_out, names = slow, [n for n in names if n not in slow]
    path = machine.cache_path()
    ceilings = machine.ceilings(remeasure=args.measure, quality="full" if args.measure else "quick", path=path)
    sys.stderr.flush()
    print_ceilings(ceilings, path)
    print()

    if args.results:
        records, skipped = load_results(args.results), []
    else:
        records, skipped = measure_engines(names, configs, load_texts(args.data), args.batch_size, args.dtype,
                                           args.threads, args.seconds, args.max_step_seconds, isas)
        if args.save_results:
            machine.save({"results": records}, Path(args.save_results))
    rows = [analyse(r, ceilings) for r in records]
    print_table([[r["engine"], r["config"], r["batch_size"], r["dtype"].replace("float", "f"), r["threads"],
                  f"{r['ms_per_step']:.3g}", ("" if r["exact"] else "~") + si(r["flops"]), si(r["bytes"], "B"),
                  f"{r['intensity']:.2f}", f"{r['achieved'] / 1e9:.3g}", f"{r['roof']} {r['roof_flops'] / 1e9:.3g}",
                  percent(r['percent']), r["verdict"]] for r in rows],
                ["engine", "config", "batch", "dtype", "thr", "ms/step", "FLOP/step", "bytes/step", "FLOP/B",
                 "GFLOP/s", "roof GFLOP/s", "% roof", "verdict"])
    for line in skipped:
        print(f"skipped {line}")
    if left_out and not args.results:
        print(f"not timed in this run (JIT frameworks, seconds of compile each): {', '.join(left_out)}; "
              "time them with --engines, or read benchmark timings with --results")
    if not rows:
        print("no engine could be timed")
    stem = "out/roofline" if args.chart is None else args.chart
    if stem and rows:
        draw_chart("roofline_chart", ceilings, rows, stem)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

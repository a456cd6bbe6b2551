"""The C trainer's speed table (issue 3): every rung and dtype against train.py, measured side by side.

    python benchmarks/bench_fastops.py                 # the table, memory floor, batch throughput, int8 (~1 min)
    python benchmarks/bench_fastops.py --quick         # fewer repeats
    python benchmarks/bench_fastops.py --only memory   # one section: steps, memory, batch or int8
    python benchmarks/bench_fastops.py --isa avx512,avx2,sse   # the fused rung on each instruction set (all: every one)
    pytest benchmarks/bench_fastops.py --benchmark-timer=time.process_time   # the same steps, pytest-benchmark

One document per step unless noted (names average ~7 tokens). Each case times a call that runs many
steps (the fused rung takes them all in one C call), repeated; the table shows medians, of wall time and
of this process's CPU time (the machine may be shared: CPU time excludes the waits, not the cache
contention). tokens/s counts predicted positions; speedups are against train.py in the same run.
The fused rung runs the kernels of the instruction sets of --isa (default auto: the best available), each
as its own rows, labelled c[avx2]; the int8 section times InferenceGPT per token on the same ones (the
int8 kernel of avx512 is VNNI; avx2-vnni, AVX-VNNI, joins avx2 where the CPU has it).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from microgpt import UserError  # noqa: E402
from microgpt.native import import_fastops  # noqa: E402
from conftest import encode_names, read_names  # noqa: E402
from microgpt.config import ModelConfig, TrainConfig  # noqa: E402
from microgpt.flops import step_cost  # noqa: E402
from microgpt.params import init_params  # noqa: E402
from train import PythonEngine  # noqa: E402
from microgpt.timing import engine_label  # noqa: E402
from train_fast import FastEngine, OpsEngine, parse_isas  # noqa: E402

try:
    fastops = import_fastops()
except ImportError as e:
    sys.exit(f"bench_fastops.py: {e}; run: pip install -e .")

CONFIGS = {"(16,1,8)": (16, 1, 8), "(64,2,16)": (64, 2, 16), "(128,4,32)": (128, 4, 32)}
RUNGS = {  # name -> (engine class, dtype)
    "train.py": (PythonEngine, "float64"),
    "c-ops": (OpsEngine, "float64"),
    "c float64": (FastEngine, "float64"),
    "c float32": (FastEngine, "float32"),
}


def model_cfg(shape) -> ModelConfig:
    C, L, B = shape
    return ModelConfig(vocab_size=27, n_embd=C, n_layer=L, n_head=4, block_size=B).validate()


def make_engine(rung: str, shape, threads: int = 1, isa: str | None = None):
    """The rung's engine; ``isa`` picks the fused rung's instruction set (None: the best)."""
    cls, dtype = RUNGS[rung]
    cfg = model_cfg(shape)
    return cls(cfg, TrainConfig(num_steps=10 ** 6).validate(), init_params(cfg, 42), dtype=dtype, threads=threads,
               **({"isa": isa} if isa and cls is FastEngine else {}))


def rung_label(rung: str, isa: str | None) -> str:
    """'c float64', 'avx2' -> 'c[avx2] float64'; the other rungs keep their names."""
    engine, _, dtype = rung.partition(" ")
    return f"{engine_label(engine, isa)} {dtype}" if RUNGS[rung][0] is FastEngine else rung


def resolve_isas(text: str | None) -> list[str]:
    """--isa as instruction-set names, best first for auto, duplicates dropped (one-line UserError if unavailable)."""
    best = fastops.available_isas()[0]
    return list(dict.fromkeys(isa or best for isa in parse_isas(text)))


def batches_for(shape, n_steps: int, batch_size: int = 1):
    docs = encode_names(read_names(), shape[2])
    return [docs[(i * batch_size) % len(docs):(i * batch_size) % len(docs) + batch_size] for i in range(n_steps)]


def run_steps(engine, batches, lr: float = 1e-3):
    if hasattr(engine, "train_steps"):
        return engine.train_steps(batches, [lr] * len(batches))
    return [engine.train_step(b, lr) for b in batches]


def time_steps(engine, batches, repeats: int) -> tuple[float, float]:
    """Median seconds per step (wall, CPU) over `repeats` calls of len(batches) steps, after a warm-up."""
    run_steps(engine, batches[:2])
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        run_steps(engine, batches)
        wall.append((time.perf_counter() - w) / len(batches))
        cpu.append((time.process_time() - c) / len(batches))
    return statistics.median(wall), statistics.median(cpu)


#: steps per timed call: ~0.1-1 s for each rung and config
STEPS = {"train.py": (50, 5, 2), "c-ops": (500, 50, 10), "c float64": (20000, 1000, 100), "c float32": (20000, 1000, 100)}


def speed_table(repeats: int, out=sys.stdout, isas: list[str | None] = (None,)) -> None:
    print("| config | rung | ms/step (wall) | ms/step (cpu) | tokens/s (cpu) | speedup vs train.py |", file=out)
    print("|---|---|---:|---:|---:|---:|", file=out)
    for i, (label, shape) in enumerate(CONFIGS.items()):
        reference = None
        for rung in RUNGS:
            for isa in (isas if RUNGS[rung][0] is FastEngine else [None]):
                batches = batches_for(shape, STEPS[rung][i])
                tokens = sum(len(d) - 1 for b in batches for d in b) / len(batches)
                engine = make_engine(rung, shape, isa=isa)
                wall, cpu = time_steps(engine, batches, repeats if rung != "train.py" else 1)
                reference = reference or cpu
                print(f"| {label} | {rung_label(rung, getattr(engine, 'isa', None))} | {wall * 1e3:.4f} | "
                      f"{cpu * 1e3:.4f} | {tokens / cpu:,.0f} | {reference / cpu:,.0f}x |", file=out, flush=True)


def memory_floor(repeats: int, out=sys.stdout, isas: list[str | None] = (None,)) -> None:
    """One-document float64 steps against the time this machine needs just to move their bytes.

    With ~7 tokens a step does ~6 FLOPs per weight but moves every weight and both Adam moments: the
    fused step reads W (forward), then reads and writes W, m and v (backward + Adam), 7 x 8 bytes per
    parameter over a footprint of 3 x 8 bytes per parameter. The floor is those bytes over the triad
    bandwidth (microgpt/ceilings.c) measured at that footprint in the same run. The last column is the
    same step with --threads 2 (tiny models stay on one thread: see fastops.c, run_batch).
    """
    from microgpt import _ceilings
    print("\n| config | rung | one-document step, ms (cpu) | MB moved | triad GB/s at its footprint | "
          "memory floor, ms | step / floor | on 2 threads, ms (wall) |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|---:|", file=out)
    for i, (label, shape) in enumerate(CONFIGS.items()):
        bandwidth = None
        for isa in isas:
            engine = make_engine("c float64", shape, isa=isa)
            batches = batches_for(shape, STEPS["c float64"][i])
            _, step = time_steps(engine, batches, repeats)
            two_threads, _ = time_steps(make_engine("c float64", shape, threads=2, isa=isa), batches, repeats)
            n = len(engine.params)
            moved = 7 * 8 * n
            bandwidth = bandwidth or _ceilings.bandwidth("triad", [3 * 8 * n], 1, repeats)[0]
            floor = moved / bandwidth
            print(f"| {label} | {rung_label('c float64', engine.isa)} | {step * 1e3:.4f} | {moved / 1e6:.1f} | "
                  f"{bandwidth / 1e9:.0f} | {floor * 1e3:.4f} | {step / floor:.1f} | {two_threads * 1e3:.4f} |",
                  file=out, flush=True)


def batch_throughput(repeats: int, out=sys.stdout, isas: list[str | None] = (None,)) -> None:
    """(128,4,32) with 32 documents per step: GFLOP/s from the actual tokens, against the measured peak."""
    from microgpt import machine
    record = machine.ceilings(quality="quick")
    shape, batch = CONFIGS["(128,4,32)"], 32
    batches = batches_for(shape, 20, batch)
    cfg = model_cfg(shape)
    print("\n| (128,4,32), 32 docs/step | threads | ms/step (wall) | GFLOP/s (wall) | % of 1-thread peak |",
          file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    for rung in ("c float64", "c float32"):
        dtype = RUNGS[rung][1]
        flops = statistics.mean(step_cost(cfg, [len(d) - 1 for d in b], 8 if dtype == "float64" else 4).flops
                                for b in batches)
        peak = machine.peak(record, "f64" if dtype == "float64" else "f32", 1)
        for isa in isas:
            for threads in (1, 2):
                engine = make_engine(rung, shape, threads, isa)
                wall, _ = time_steps(engine, batches, repeats)
                print(f"| {rung_label(rung, engine.isa)} | {threads} | {wall * 1e3:.2f} | {flops / wall / 1e9:.1f} | "
                      f"{100 * flops / wall / peak:.0f}% |", file=out, flush=True)
    print(f"(peaks measured by microgpt.machine: fp64 {machine.peak(record, 'f64', 1) / 1e9:.1f}, "
          f"fp32 {machine.peak(record, 'f32', 1) / 1e9:.1f} GFLOP/s on one thread)", file=out)


def int8_isas(isas: list[str] | None) -> list[str]:
    """InferenceGPT's instruction sets for the fused rung's --isa list: those it runs here for int8 (avx512 needs
    VNNI), with avx2-vnni (AVX-VNNI, an int8 kernel of its own) beside avx2 where the CPU has it."""
    have, out = fastops.InferenceGPT.available_isas(), []
    for isa in isas or have[:1]:
        out += [i for i in (("avx2-vnni", "avx2") if isa == "avx2" else (isa,)) if i in have and i not in out]
    return out


def int8_report(out=sys.stdout, steps: int = 2000, isas: list[str] | None = None) -> None:
    """Train (64,2,16) for `steps` steps, then compare float32 and int8 InferenceGPT on the held-out names;
    the model alone per token on each instruction set of `isas` (default: the best)."""
    from microgpt.sampling import sample
    from microgpt.config import SampleConfig
    from microgpt.tokenizers import CharTokenizer

    shape = CONFIGS["(64,2,16)"]
    cfg = model_cfg(shape)
    docs = encode_names(read_names(), cfg.block_size)
    random.Random(42).shuffle(docs)
    train, val = docs[:-2000], docs[-2000:]
    engine = FastEngine(cfg, TrainConfig(num_steps=steps).validate(), init_params(cfg, 42), dtype="float32")
    engine.train_steps([train[4 * s:4 * s + 4] for s in range(steps)], [0.01 * (1 - s / steps) for s in range(steps)])
    params = engine.export_params().data
    models = {int8: fastops.InferenceGPT(params, 27, *shape[:2], 4, shape[2], int8=int8) for int8 in (False, True)}
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    scfg = SampleConfig(num_samples=500, temperature=1.0).validate()
    rows = {}
    for int8, model in models.items():
        loss = model.eval_loss(val)
        best = []
        for _ in range(5):
            t = time.process_time()
            sample(model.logits, tokenizer, cfg.block_size, scfg)
            best.append(time.process_time() - t)
        rows[int8] = (model.weight_bytes, loss, statistics.median(best))
    (b32, l32, t32), (b8, l8, t8) = rows[False], rows[True]
    print(f"\nint8 inference, (64,2,16) after {steps} steps of batch 4 (float32), {len(val)} held-out names:", file=out)
    print("| weights | bytes | validation loss | 500 samples (sampling.py), CPU s |\n|---|---:|---:|---:|", file=out)
    print(f"| float32 | {b32:,} | {l32:.4f} | {t32:.3f} |", file=out)
    print(f"| int8 (per-row scales) | {b8:,} | {l8:.4f} | {t8:.3f} |", file=out)
    print(f"size {b32 / b8:.2f}x smaller, sampling {t32 / t8:.2f}x faster end to end, validation loss "
          f"{l8 - l32:+.4f} (isa {models[True].isa})", file=out)
    # The model alone: logits() as sampling calls it (one token longer each call, KV cache reused).
    print("\n| config | kernels (float32 / int8) | float32 us/token | int8 us/token | int8 speedup | float32 bytes "
          "| int8 bytes |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|", file=out)
    for label, shape in CONFIGS.items():
        params = init_params(model_cfg(shape), 1).data
        rng = random.Random(0)
        seqs = [[26] + [rng.randrange(26) for _ in range(shape[2] - 1)] for _ in range(100)]
        for isa in int8_isas(isas):
            per_token, size, kernel = {}, {}, {}
            for int8 in (False, True):
                model = fastops.InferenceGPT(params, 27, shape[0], shape[1], 4, shape[2], int8=int8,
                                             isa=isa if int8 or isa != "avx2-vnni" else "avx2")
                times = []
                for _ in range(5):
                    t = time.process_time()
                    for seq in seqs:
                        for n in range(1, len(seq) + 1):
                            model.logits(seq[:n])
                    times.append((time.process_time() - t) / (len(seqs) * shape[2]))
                per_token[int8], size[int8], kernel[int8] = statistics.median(times), model.weight_bytes, model.isa
            print(f"| {label} | {kernel[False]} / {kernel[True]} | {per_token[False] * 1e6:.2f} | "
                  f"{per_token[True] * 1e6:.2f} | {per_token[False] / per_token[True]:.2f}x | {size[False]:,} | "
                  f"{size[True]:,} |", file=out, flush=True)


# ---- the same cases for pytest-benchmark ----

try:
    import pytest
except ImportError:  # the script runs without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("label", list(CONFIGS))
    @pytest.mark.parametrize("rung", ["c-ops", "c float64", "c float32"])
    def test_step(benchmark, rung, label):
        shape = CONFIGS[label]
        engine = make_engine(rung, shape)
        batches = batches_for(shape, 50)
        if hasattr(engine, "isa"):
            benchmark.extra_info["isa"] = engine.isa    # the instruction set, in --benchmark-json's record
        benchmark(run_steps, engine, batches)

    @pytest.mark.parametrize("int8", [False, True])
    def test_sampling_logits(benchmark, int8):
        shape = CONFIGS["(64,2,16)"]
        model = fastops.InferenceGPT(init_params(model_cfg(shape), 42).data, 27, 64, 2, 4, 16, int8=int8)
        seq = [26] + [random.Random(0).randrange(26) for _ in range(15)]
        benchmark(lambda: [model.logits(seq[:n]) for n in range(1, 17)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    p.add_argument("--only", choices=("steps", "memory", "batch", "int8"), help="one section only")
    p.add_argument("--isa", default="auto",
                   help="the fused rung's instruction sets, comma-separated: auto (the best), all, or names such as "
                        "avx512,avx2,sse,neon,generic; each gets its own rows, c[avx2] (default: auto)")
    args = p.parse_args(argv)
    try:
        isas = resolve_isas(args.isa)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    repeats = 3 if args.quick else 7
    print(f"fastops instruction sets: {', '.join(fastops.available_isas())} (timing {', '.join(isas)}); "
          f"{len(read_names())} names")
    if args.only in (None, "steps"):
        speed_table(repeats, isas=isas)
    if args.only in (None, "memory"):
        memory_floor(repeats, isas=isas)
    if args.only in (None, "batch"):
        batch_throughput(repeats, isas=isas)
    if args.only in (None, "int8"):
        int8_report(isas=isas)


if __name__ == "__main__":
    main()

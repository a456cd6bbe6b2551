"""This machine's roofs, measured: peak FLOP/s, bandwidth of every cache level, and a JSON cache of both.

Nothing here is assumed from a spec sheet. The probes are the C kernels of ``microgpt._ceilings``:

  * compute: FMA chains on every instruction set of the C engine's vector layer the CPU has (scalar,
    128-bit SSE+FMA, AVX2, AVX-512 on x86-64; NEON on AArch64), fp64 and fp32, on 1 thread and on all
    the CPUs this process may use;
  * memory: triad (a = b + s c) and read-only sweeps, with the widest of those instruction sets, over
    working sets from 16 KiB to well past the last-level cache. Bytes are program bytes (``BYTES``):
    24 per triad element (STREAM's and likwid-bench's convention: the write-allocate read of a's line
    is not counted), as in microgpt/flops.py. Each cache level's bandwidth is the median of the sweep
    points that fit in it comfortably (from 1.5x the level below to 3/4 of the level, sizes from
    /sys/devices/system/cpu/*/cache), and the knees of the curve are located as a cross-check;
  * the core clock: a chain of dependent adds (one per cycle), because under a hypervisor /proc/cpuinfo
    only reports the base clock.

tests/test_ceilings_vs_likwid.py holds every level and the fp64 peak to likwid-bench's figures on the
same machine. Results are cached as JSON in the user cache directory (``$MICROGPT_CACHE`` or
~/.cache/microgpt-lab) with a timestamp and a fingerprint of the CPU; a cache from another machine, an
older schema, one older than ``MAX_AGE_DAYS`` or one that does not parse is reported in one line and
measured again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from microgpt import UserError
from microgpt.data import cache_dir
from microgpt.files import write_json_atomic

SCHEMA = 2      # 2: probes on the vector layer, compact arrays, SSE and NEON peaks, register-add clock
MAX_AGE_DAYS = 30
ISAS = ("scalar", "sse", "avx2", "avx512", "neon")
DTYPES = ("f64", "f32")
KINDS = ("triad", "read")
LEVELS = ("L1", "L2", "L3", "DRAM")
#: What one element of each memory probe counts as moved (the probes' own accounting, in the record).
BYTES = {"triad": "24 bytes per element: 2 loads and 1 store of float64; a write-allocate cache also "
                  "reads the stored line first (32 bytes move), not counted, as in STREAM and likwid-bench",
         "read": "8 bytes per element: 1 load of float64"}
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: (sweep points per octave, smallest largest working set, rounds, repeats per round, bytes per timed repetition).
#: Rounds interleave all the probes and keep each one's best: another process that loads a core for a
#: second spoils one round of a probe, not its result.
SWEEPS = {"full": (2, GiB, 3, 5, 64 * MiB), "quick": (1, 256 * MiB, 2, 3, 16 * MiB)}
#: FMA probes: many short repetitions (~0.3-1 ms each), so that some run between two preemptions.
FMA_ITERS, FMA_REPEATS_PER_REPEAT = 250_000, 4


def _ceilings():
    try:
        from microgpt import _ceilings
    except ImportError as e:
        raise UserError(f"the ceiling probes are not built ({e}); run: pip install -e .") from None
    return _ceilings


# --- what the OS says about the CPU -------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def caches() -> list[dict]:
    """Data and unified caches of the first allowed CPU: level, size and which CPUs share each instance."""
    cpu = allowed_cpus()[0]
    out = []
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        kind, level, size = _read(index / "type"), _read(index / "level"), _read(index / "size")
        if kind not in ("Data", "Unified") or not level.isdigit() or not size[:-1].isdigit():
            continue
        scale = {"K": KiB, "M": MiB, "G": GiB}.get(size[-1], 1)
        out.append({"level": int(level), "size": int(size[:-1]) * scale})
    return out


def _instances(level: int, cpus: list[int]) -> int:
    """How many separate instances of cache ``level`` the given CPUs use (private caches: one each)."""
    seen = set()
    for cpu in cpus:
        for index in Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*"):
            if _read(index / "level") == str(level) and _read(index / "type") in ("Data", "Unified"):
                seen.add(_read(index / "shared_cpu_list") or f"cpu{cpu}")
    return max(len(seen), 1)


def capacities(cache_list: list[dict], threads: int) -> dict[str, int]:
    """Bytes of each level that ``threads`` threads pinned to the first allowed CPUs can use together."""
    cpus = allowed_cpus()[:threads]
    return {f"L{c['level']}": c["size"] * _instances(c["level"], cpus) for c in cache_list}


def cpu_info() -> dict:
    fields = {}
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in fields:           # the first CPU's block is enough
            fields[key] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "family_model_stepping": [fields.get("cpu family"), fields.get("model"), fields.get("stepping")],
        "simd_flags": sorted(flags & {"sse2", "avx", "fma", "avx2", "avx512f", "avx512vl", "avx512_bf16",
                                      "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd"}),
        "cpus": len(allowed_cpus()),
        "reported_mhz": float(fields["cpu MHz"]) if fields.get("cpu MHz", "").replace(".", "", 1).isdigit() else None,
    }


def fingerprint(cpu: dict, cache_list: list[dict]) -> str:
    """Changes when the CPU, its allowed core count or its caches change (the measured clock does not count)."""
    key = {k: cpu[k] for k in ("model", "family_model_stepping", "simd_flags", "cpus")}
    key["caches"] = cache_list
    key["schema"] = SCHEMA
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --- measurement ---------------------------------------------------------------------------------------

def sweep_sizes(step_per_octave: int, largest: int, smallest: int = 16 * KiB) -> list[int]:
    """Working-set sizes from ``smallest`` to ``largest``, ``step_per_octave`` points per doubling, 4 KiB aligned."""
    octaves = math.log2(largest / smallest)
    count = round(octaves * step_per_octave) + 1
    return sorted({int(smallest * 2 ** (i / step_per_octave)) // (4 * KiB) * 4 * KiB for i in range(count)})


def plateaus(sizes: list[int], bandwidths: list[float], capacity: dict[str, int]) -> dict[str, float]:
    """Each level's bandwidth: the median of the sweep points from 1.5x the level below to 3/4 of the
    level (DRAM: from 4x the last cache), away from the transitions. A level with no point is left out."""
    caches = [name for name in ("L1", "L2", "L3") if name in capacity]
    out, low = {}, 0
    for name in caches:
        window = [bw for size, bw in zip(sizes, bandwidths) if low < size <= 0.75 * capacity[name]]
        if window:
            out[name] = statistics.median(window)
        low = 1.5 * capacity[name]
    window = [bw for size, bw in zip(sizes, bandwidths) if size >= 4 * capacity[caches[-1]]] if caches else []
    if window:
        out["DRAM"] = statistics.median(window)
    return out


def knees(sizes: list[int], bandwidths: list[float], drop: float = 0.25) -> list[int]:
    """The last working-set sizes before bandwidth falls by more than ``drop`` within two sweep steps:
    where the curve says a cache level ends, to compare with the sizes the OS reports."""
    out, i, n, bw = [], 0, len(sizes), bandwidths
    while i < n - 1:
        if min(bw[i + 1:i + 3]) < (1 - drop) * bw[i]:
            while i + 1 < n and bw[i + 1] >= 0.9 * bw[i]:      # to the last point of the plateau
                i += 1
            out.append(sizes[i])
            i += 1
            while i + 1 < n and bw[i + 1] < 0.9 * bw[i]:       # down the transition to the next plateau
                i += 1
        else:
            i += 1
    return out


def measure(quality: str = "full", threads: list[int] | None = None, sizes: list[int] | None = None,
            rounds: int | None = None, log=None) -> dict:
    """Run every probe and return the ceilings record (see ``load`` for the JSON layout)."""
    c = _ceilings()
    if quality not in SWEEPS:
        raise UserError(f"sweep quality must be one of {', '.join(SWEEPS)} (got {quality!r})")
    steps, largest, default_rounds, repeats, min_bytes = SWEEPS[quality]
    rounds = rounds or default_rounds
    cpu, cache_list = cpu_info(), caches()
    threads = threads or sorted({1, cpu["cpus"]})
    if sizes is None:
        llc = max((capacities(cache_list, max(threads)).values()), default=32 * MiB)
        sizes = sweep_sizes(steps, min(max(largest, 8 * llc), _memory_bytes() // 4))
    log = log or (lambda message: None)
    started = time.time()

    cpu["measured_hz"] = c.clock_hz()
    cpu["frequency_source"] = "dependent-add chain (1 add per cycle), best of 20 runs after a warm-up"
    probes = [(dtype, isa, t) for dtype in DTYPES for isa in ISAS if c.isa_supported(isa) for t in threads]
    if not probes:
        raise UserError("the FMA probes need an x86-64 CPU with FMA; this CPU has none of their variants")
    best = dict.fromkeys(probes, 0.0)
    curves = {kind: {str(t): [0.0] * len(sizes) for t in threads} for kind in KINDS}
    for r in range(rounds):
        for dtype, isa, t in probes:
            flops = c.peak_flops(isa, dtype, t, iters=FMA_ITERS, repeats=FMA_REPEATS_PER_REPEAT * repeats)
            best[dtype, isa, t] = max(best[dtype, isa, t], flops)
        for kind in KINDS:
            for t in threads:
                bws = c.bandwidth(kind, sizes, t, repeats=repeats, min_bytes=min_bytes)
                curves[kind][str(t)] = list(map(max, curves[kind][str(t)], bws))
        log(f"round {r + 1}/{rounds}: {len(probes)} FMA peaks, triad and read sweeps of {len(sizes)} sizes "
            f"up to {sizes[-1] // MiB} MiB on {'/'.join(map(str, threads))} thread(s) ({time.time() - started:.1f}s)")
    compute = {dtype: {} for dtype in DTYPES}
    for (dtype, isa, t), flops in best.items():
        compute[dtype].setdefault(isa, {})[str(t)] = flops
    level_bw = {kind: {t: plateaus(sizes, bws, capacities(cache_list, int(t))) for t, bws in by_t.items()}
                for kind, by_t in curves.items()}
    knee_sizes = {kind: {t: knees(sizes, bws) for t, bws in by_t.items()} for kind, by_t in curves.items()}
    notes = sanity_notes(compute, level_bw)
    now = time.time()
    return {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "created_unix": now,
        "fingerprint": fingerprint(cpu, cache_list), "quality": quality, "seconds": round(now - started, 1),
        "rounds": rounds, "repeats": repeats, "cpu": cpu, "caches": cache_list, "compute": compute,
        "memory_isa": c.memory_isa(), "bytes_counted": BYTES,
        "bandwidth": {kind: {t: {"sizes": sizes, "bytes_per_s": bws} for t, bws in by_t.items()}
                      for kind, by_t in curves.items()},
        "levels": level_bw, "knees": knee_sizes, "notes": notes,
    }


def sanity_notes(compute: dict, level_bw: dict) -> list[str]:
    """What in a measurement looks disturbed: FMA units are private to a core, so the peak must scale
    with threads; a faster level below a slower one means a level's sweep was slowed down."""
    notes = []
    scalar = [compute[dtype]["scalar"]["1"] for dtype in DTYPES if "scalar" in compute.get(dtype, {})]
    if len(scalar) == 2 and max(scalar) > 1.2 * min(scalar):
        notes.append("scalar fp64 and fp32 peaks differ by more than 20% although they issue the same FMAs: "
                     "a probe was slowed down; re-measure with --measure when the machine is idle")
    for dtype, by_isa in compute.items():
        for isa, by_t in by_isa.items():
            for t, flops in by_t.items():
                if int(t) > 1 and flops < 0.8 * int(t) * by_t["1"]:
                    notes.append(f"{dtype} {isa} on {t} threads is only {flops / by_t['1']:.1f}x one thread: "
                                 "another process was probably busy; re-measure with --measure when the machine is idle")
    for kind, by_t in level_bw.items():
        for t, bws in by_t.items():
            values = [bws[name] for name in LEVELS if name in bws]
            if any(lower > 1.1 * upper for upper, lower in itertools.pairwise(values)):
                notes.append(f"{kind} bandwidth on {t} thread(s) is not ordered L1 >= L2 >= L3 >= DRAM")
            slower = [name for name, bw in bws.items() if bw < 0.9 * by_t["1"].get(name, 0)]
            if slower:
                notes.append(f"{kind} bandwidth on {t} threads is below one thread's in {', '.join(slower)}: "
                             "another process was probably using the memory system; re-measure with --measure")
    return notes


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * GiB


# --- the JSON cache ------------------------------------------------------------------------------------

def cache_path() -> Path:
    return cache_dir() / "ceilings.json"


def save(record: dict, path: Path) -> None:
    write_json_atomic(path, record, indent=1)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def problem(record, current_fingerprint: str, now: float | None = None) -> str | None:
    """Why a loaded record cannot be used (None if it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != SCHEMA:
        return f"schema {record.get('schema')!r}, this version writes {SCHEMA}"
    if record.get("fingerprint") != current_fingerprint:
        return "measured on a different CPU or core count"
    age = ((now or time.time()) - record["created_unix"]) / 86400 if _positive(record.get("created_unix")) else None
    if age is None or age < -1:
        return "no valid timestamp"
    if age > MAX_AGE_DAYS:
        return f"stale ({age:.0f} days old, limit {MAX_AGE_DAYS})"
    compute, level_bw = record.get("compute"), record.get("levels")
    if not isinstance(compute, dict) or not isinstance(level_bw, dict):
        return "missing compute or levels"
    for dtype in DTYPES:
        peaks = compute.get(dtype)
        if not isinstance(peaks, dict) or not peaks or not all(
                isinstance(by_t, dict) and "1" in by_t and all(map(_positive, by_t.values())) for by_t in peaks.values()):
            return f"bad {dtype} compute peaks"
    for kind in KINDS:
        by_t = level_bw.get(kind)
        if not isinstance(by_t, dict) or "1" not in by_t or not all(
                isinstance(lv, dict) and lv and all(map(_positive, lv.values())) for lv in by_t.values()):
            return f"bad {kind} bandwidth levels"
    return None


def load(path: Path) -> tuple[dict | None, str | None]:
    """(record, None) for a usable cache file, (None, reason) otherwise.

    The record: schema, created (UTC ISO) and created_unix, fingerprint, quality, cpu {model, simd_flags,
    cpus, reported_mhz, measured_hz, frequency_source}, caches [{level, size}], compute {dtype: {isa:
    {threads: FLOP/s}}}, memory_isa (the memory probes' instruction set), bytes_counted {kind: what a
    byte is}, bandwidth {kind: {threads: {sizes, bytes_per_s}}}, levels {kind: {threads:
    {L1..DRAM: bytes/s}}}, knees {kind: {threads: [bytes]}}, notes [what looked disturbed]. Thread
    counts are string keys (JSON).
    """
    return read_cache(path, lambda record: problem(record, fingerprint(cpu_info(), caches())))


def read_cache(path: Path, problem_of) -> tuple[dict | None, str | None]:
    """A JSON cache file: (record, None) when it parses and ``problem_of(record)`` finds nothing wrong, else
    (None, why): not measured yet, unreadable, or the problem (also for the all-reduce cache, microgpt/comm.py)."""
    if not path.exists():
        return None, "not measured yet"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    reason = problem_of(record)
    return (None, reason) if reason else (record, None)


def ceilings(remeasure: bool = False, quality: str = "quick", path: Path | None = None, log=None,
             **measure_args) -> dict:
    """The cached ceilings, measured (and cached) first when missing, unusable or ``remeasure``."""
    path = path or cache_path()
    log = log or (lambda message: print(message, file=sys.stderr))
    if not remeasure:
        record, reason = load(path)
        if record:
            return record
        log(f"ceiling cache {path}: {reason}; measuring ({quality} sweep)")
    record = measure(quality, log=log, **measure_args)
    try:
        save(record, path)
    except OSError as e:
        log(f"could not write the ceiling cache {path} ({e.strerror or e}); using the measurement anyway")
    return record


# --- reading the roofs ----------------------------------------------------------------------------------

def _nearest_threads(by_threads: dict, threads: int) -> dict | float:
    """The entry measured with the most threads not above ``threads`` (1 thread at least)."""
    usable = [int(t) for t in by_threads if int(t) <= max(threads, 1)] or [min(map(int, by_threads))]
    return by_threads[str(max(usable))]


def peak(record: dict, dtype: str, threads: int = 1, isa: str | None = None) -> float:
    """Peak FLOP/s for ``dtype``: the fastest ISA, or one named ISA."""
    if dtype not in record["compute"]:
        raise UserError(f"no measured peak for dtype {dtype!r} (have {', '.join(record['compute'])})")
    by_isa = record["compute"][dtype]
    isas = [isa] if isa else list(by_isa)
    return max(_nearest_threads(by_isa[i], threads) for i in isas if i in by_isa)


def levels(record: dict, threads: int = 1, kind: str = "triad") -> dict[str, float]:
    """Bytes/s of every memory level for ``threads`` threads."""
    return _nearest_threads(record["levels"][kind], threads)


def bandwidth(record: dict, level: str, threads: int = 1, kind: str = "triad") -> float:
    return levels(record, threads, kind)[level]


def level_for(record: dict, working_set: int, threads: int = 1) -> str:
    """The closest memory level that holds ``working_set`` bytes for ``threads`` threads."""
    caps = capacities(record["caches"], threads)
    measured = levels(record, threads)
    for name in ("L1", "L2", "L3"):
        if name in caps and name in measured and working_set <= caps[name]:
            return name
    return "DRAM" if "DRAM" in measured else list(measured)[-1]

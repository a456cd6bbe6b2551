"""Communication measured, not assumed: all-reduce time against message size, the alpha-beta model fitted
to it, and a JSON cache of both beside the machine's ceilings (microgpt/machine.py).

The probe is torch.distributed's own all-reduce (gloo on CPU, NCCL on CUDA), the collective that the
data-parallel trainers run on their gradients, between ``world_size`` processes on this machine over
loopback. They are started with the launcher's environment variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, as torchrun sets them); ``python -m microgpt.comm --worker`` also runs under torchrun itself.
For each message size (a float64 tensor of zeros: the sum stays zero, so no overflow or denormal changes
the speed), every rank times ``k`` back-to-back all-reduces after a barrier, once per round, ``repeats``
rounds over all the sizes (a burst of load spoils one repeat of several sizes, not one size); a repeat's
time is the slowest rank's (the collective is done when its last rank is), and a size's time is the
median of its repeats (robust to the preemptions of a shared machine).

The model: a ring all-reduce over N ranks is a reduce-scatter then an all-gather, 2(N-1) steps each
sending n/N bytes, so

    T(n, N) = 2(N-1) alpha + 2(N-1)/N * n * beta

(alpha: the latency of one step's message, beta: seconds per byte of the link). Measured at one N the
model is a line T = a + b n; ``fit`` finds a and b by least squares on the medians, weighted by 1/T^2 so
that every size counts by its relative error (unweighted, the largest messages would decide alpha
alone), with a, b >= 0, and reports each size's relative residual: where the line does not describe the
backend (a change of protocol at some size, caches), the residuals say so. At N = 2 every all-reduce
algorithm (ring, halving-doubling, bcube) sends the same two half messages, so alpha and beta do not
depend on which one gloo picked; a projection to more ranks assumes the ring, and a link like loopback's.

Cache: ``comm-<backend>-n<N>.json`` in the cache directory of the ceilings, with the ceilings'
fingerprint of the CPU (and the GPU's name for NCCL), the torch version and a timestamp; a cache from
another machine, torch, schema, one older than ``machine.MAX_AGE_DAYS`` or one that does not parse is
reported in one line and measured again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microgpt import UserError, distributed, machine
from microgpt.data import cache_dir
from microgpt.files import write_json_atomic

SCHEMA = 1
KiB, MiB = 1 << 10, 1 << 20
#: (largest message, repeats per size, seconds each repeat's back-to-back all-reduces last at least).
#: "full" reaches past the float64 gradients of every standard config (xl: 96 MiB), "quick" past medium's.
QUALITIES = {"full": (128 * MiB, 21, 0.01), "quick": (16 * MiB, 15, 0.005)}
#: The slowest a rank may wait on another (process-group timeout): a rank that died ends the others.
GROUP_TIMEOUT_S = 60
PROGRESS = "progress: "          # rank 0's stderr lines that run_probe passes on
MODEL = "ring all-reduce: T(n, N) = 2(N-1) alpha + 2(N-1)/N n beta (n bytes, N ranks)"


# --- the model -----------------------------------------------------------------------------------------

def allreduce_seconds(fit: dict, n_bytes: float, world_size: int) -> float:
    """Seconds of one all-reduce of ``n_bytes`` over ``world_size`` ranks under the fitted ring model."""
    if world_size <= 1:
        return 0.0
    steps = 2 * (world_size - 1)
    return steps * fit["alpha_s"] + steps / world_size * n_bytes * fit["beta_s_per_byte"]


def fit_alpha_beta(sizes: list[float], seconds: list[float], world_size: int) -> dict:
    """alpha and beta of the ring model from all-reduce times at one ``world_size`` (>= 2): the line
    T = a + b n by least squares weighted by 1/T^2 (relative errors), a, b >= 0; then alpha = a / 2(N-1),
    beta = b N / 2(N-1). Returns them, the line's a and b, every point's relative residual
    (measured / model - 1), their root mean square and largest magnitude."""
    if world_size < 2:
        raise ValueError("the all-reduce model needs at least 2 ranks to fit")
    if len(sizes) != len(seconds) or len(sizes) < 2 or len(set(sizes)) < 2:
        raise ValueError("fitting a line needs times at two or more different message sizes")
    if not all(t > 0 and math.isfinite(t) for t in seconds) or not all(n >= 0 for n in sizes):
        raise ValueError("all-reduce times must be finite and > 0, sizes >= 0")
    w = [1 / t ** 2 for t in seconds]
    sw = sum(w)
    swn = sum(wi * n for wi, n in zip(w, sizes))
    swnn = sum(wi * n * n for wi, n in zip(w, sizes))
    swt = sum(wi * t for wi, t in zip(w, seconds))
    swnt = sum(wi * n * t for wi, n, t in zip(w, sizes, seconds))
    det = sw * swnn - swn * swn
    a = (swnn * swt - swn * swnt) / det
    b = (sw * swnt - swn * swt) / det
    if a < 0:                                   # the constrained optimum lies on the edge a = 0
        a, b = 0.0, swnt / swnn
    elif b < 0:                                 # or on b = 0
        a, b = swt / sw, 0.0
    steps = 2 * (world_size - 1)
    residuals = [t / (a + b * n) - 1 for n, t in zip(sizes, seconds)]
    return {"alpha_s": a / steps, "beta_s_per_byte": b * world_size / steps, "intercept_s": a,
            "slope_s_per_byte": b, "world_size": world_size, "residuals": residuals,
            "rms_residual": math.sqrt(statistics.fmean(r * r for r in residuals)),
            "max_residual": max(map(abs, residuals))}


def message_sizes(largest: int, extra: list[int] = ()) -> list[int]:
    """8 bytes (one float64) and every power of two up to ``largest``, plus ``extra`` sizes (rounded
    up to whole float64s), sorted."""
    sizes = {8 << i for i in range(max(0, int(math.log2(largest / 8))) + 1)}
    sizes |= {max(8, -(-n // 8) * 8) for n in extra}
    return sorted(sizes)


def gradient_sizes(vocab_size: int = 27) -> dict[str, int]:
    """Bytes of the gradients of every standard config in float64 and float32 ("medium f64": 6.1 MiB):
    the messages a data-parallel step all-reduces, for the default char vocabulary of names.txt."""
    from microgpt.config import STANDARD_CONFIGS, ModelConfig
    from microgpt.params import num_params

    out = {}
    for name, (c, l, h, b) in STANDARD_CONFIGS.items():
        n = num_params(ModelConfig(n_embd=c, n_layer=l, n_head=h, block_size=b, vocab_size=vocab_size))
        out[f"{name} f64"], out[f"{name} f32"] = 8 * n, 4 * n
    return out


# --- measurement ---------------------------------------------------------------------------------------

def default_backend() -> str:
    import torch
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_name(backend: str) -> str:
    """What the messages travel between: the GPU's name for NCCL, the CPU's otherwise."""
    if backend == "nccl":
        import torch
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return machine.cpu_info()["model"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(sizes: list[int], repeats: int, min_repeat_s: float, out: Path) -> None:
    """One rank of the probe, in a process started with the launcher's variables: times every size and
    writes its per-repeat seconds per all-reduce to ``out``; rank 0 logs progress on stderr."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = os.environ.get("MICROGPT_COMM_BACKEND") or default_backend()
    launch = distributed.launch_from_env()   # the launcher's variables, checked as the trainer checks them
    if launch is None:
        raise UserError("the probe's worker needs the launcher's variables (RANK, WORLD_SIZE, ...)")
    rank = launch.rank
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank)
    device = torch.device("cuda") if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend, timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    started = time.perf_counter()
    # one buffer, each message a view of its start: every size stays ready for the rounds below
    buffer = torch.zeros(max(sizes) // 8, dtype=torch.float64, device=device)
    views = [buffer[:size // 8] for size in sizes]
    try:
        steps = []
        for x in views:
            for _ in range(2):                      # connections, buffers, the first touch of the memory
                dist.all_reduce(x)
            sync()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            sync()
            # every rank must run the same number of all-reduces: the slowest rank's calibration decides
            k = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
            dist.all_reduce(k, op=dist.ReduceOp.MAX)
            steps.append(max(1, min(1000, round(min_repeat_s / max(float(k), 1e-7)))))
        # rounds over all the sizes, not all the repeats of one size in a row: a burst of load from another
        # job spoils one repeat of several sizes, not the median of one
        times = [[] for _ in sizes]
        for r in range(repeats):
            for i, (x, k) in enumerate(zip(views, steps)):
                dist.barrier()
                sync()
                t0 = time.perf_counter()
                for _ in range(k):
                    dist.all_reduce(x)
                sync()
                times[i].append((time.perf_counter() - t0) / k)
            if rank == 0:
                print(f"{PROGRESS}  round {r + 1}/{repeats}: {len(sizes)} sizes ({time.perf_counter() - started:.1f} s; "
                      f"{_bytes(sizes[-1])}: {statistics.median(times[-1]) * 1e3:.3g} ms so far)",
                      file=sys.stderr, flush=True)
    finally:
        dist.destroy_process_group()
    write_json_atomic(out, {"rank": rank, "seconds": times})


def _bytes(n: float) -> str:
    from microgpt.cli import binary_size
    return binary_size(n)


def _show_progress(path: Path, shown: int, log) -> int:
    """Log the lines of ``path`` past the first ``shown`` that the probe wrote as progress; the new count."""
    text = path.read_text(errors="replace")
    lines = text[:text.rfind("\n") + 1].splitlines()            # whole lines only: the last may be half-written
    for line in lines[shown:]:
        if line.startswith(PROGRESS):
            log(line[len(PROGRESS):])
    return len(lines)


def run_probe(world_size: int, backend: str, sizes: list[int], repeats: int, min_repeat_s: float,
              timeout_s: float, log) -> list[list[list[float]]]:
    """Start ``world_size`` worker processes on this machine (loopback) and return their seconds, indexed
    [rank][size][repeat]. A rank that fails or a probe past ``timeout_s`` is a UserError with its reason."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(world_size), "MICROGPT_COMM_BACKEND": backend,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
               str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    request = json.dumps({"sizes": sizes, "repeats": repeats, "min_repeat_s": min_repeat_s})
    with tempfile.TemporaryDirectory(prefix="microgpt-comm-") as tmp:
        procs, logs = [], []
        for rank in range(world_size):
            err = open(Path(tmp) / f"rank{rank}.err", "w+")
            logs.append(err)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "microgpt.comm", "--worker", str(Path(tmp) / f"rank{rank}.json"), request],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err))
        deadline, shown = time.monotonic() + timeout_s, 0
        try:
            while any(p.poll() is None for p in procs):        # rank 0's progress lines, as they come
                if time.monotonic() > deadline:
                    raise UserError(f"the all-reduce probe over {world_size} processes took longer than "
                                    f"{timeout_s:.0f} s; is another job holding the CPUs?")
                time.sleep(0.2)
                shown = _show_progress(Path(tmp) / "rank0.err", shown, log)
            _show_progress(Path(tmp) / "rank0.err", shown, log)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        failed = [(rank, p.returncode) for rank, p in enumerate(procs) if p.returncode != 0]
        if failed:
            rank, code = failed[-1]
            logs[rank].seek(0)
            tail = [line for line in logs[rank].read().splitlines() if line.strip()][-1:] or ["(no output)"]
            raise UserError(f"the all-reduce probe's rank {rank} failed (exit status {code}): {tail[0].strip()}")
        for err in logs:
            err.close()
        return [json.loads((Path(tmp) / f"rank{rank}.json").read_text())["seconds"] for rank in range(world_size)]


def measure(world_size: int = 2, backend: str | None = None, quality: str = "quick", sizes: list[int] | None = None,
            repeats: int | None = None, log=None) -> dict:
    """Measure all-reduce times over ``world_size`` processes, fit the model, return the record (see ``load``)."""
    if quality not in QUALITIES:
        raise UserError(f"all-reduce sweep quality must be one of {', '.join(QUALITIES)} (got {quality!r})")
    if world_size < 2:
        raise UserError("measuring an all-reduce needs at least 2 processes")
    import torch
    backend = backend or default_backend()
    largest, default_repeats, min_repeat_s = QUALITIES[quality]
    repeats = repeats or default_repeats
    sizes = sizes or message_sizes(largest, [n for n in gradient_sizes().values() if n <= largest])
    log = log or (lambda message: None)
    log(f"measuring all-reduce over {world_size} {backend} processes on loopback: {len(sizes)} sizes from "
        f"{_bytes(sizes[0])} to {_bytes(sizes[-1])}, {repeats} repeats each ({quality} sweep)")
    started = time.time()
    per_rank = run_probe(world_size, backend, sizes, repeats, min_repeat_s,
                         timeout_s=120 + 2 * world_size * sum(sizes) / MiB, log=log)
    # a repeat lasts as long as its slowest rank; a size's time is the median repeat
    slowest = [[max(rank[i][r] for rank in per_rank) for r in range(repeats)] for i in range(len(sizes))]
    medians = [statistics.median(s) for s in slowest]
    quartiles = [statistics.quantiles(s, n=4)[::2] if len(s) > 1 else [s[0], s[0]] for s in slowest]
    fit = fit_alpha_beta(sizes, medians, world_size)
    now = time.time()
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "created_unix": now,
            "fingerprint": machine.fingerprint(machine.cpu_info(), machine.caches()), "backend": backend,
            "world_size": world_size, "device": device_name(backend), "torch": torch.__version__,
            "transport": "loopback (one machine)", "quality": quality, "repeats": repeats,
            "seconds": round(now - started, 1), "message_dtype": "float64", "sizes": sizes,
            "median_s": medians, "quartiles_s": quartiles, "model": MODEL, "fit": fit}


# --- the JSON cache ------------------------------------------------------------------------------------

def cache_path(backend: str, world_size: int) -> Path:
    return cache_dir() / f"comm-{backend}-n{world_size}.json"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def problem(record, backend: str, world_size: int, current_fingerprint: str, torch_version: str,
            device: str | None = None, now: float | None = None) -> str | None:
    """Why a loaded record cannot be used (None if it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != SCHEMA:
        return f"schema {record.get('schema')!r}, this version writes {SCHEMA}"
    if record.get("fingerprint") != current_fingerprint or (device and record.get("device") != device):
        return "measured on a different machine (CPU, core count or GPU)"
    if (record.get("backend"), record.get("world_size")) != (backend, world_size):
        return f"holds {record.get('backend')!r} over {record.get('world_size')!r} processes, not {backend} over {world_size}"
    if record.get("torch") != torch_version:
        return f"measured with torch {record.get('torch')!r}, this is {torch_version}"
    created = record.get("created_unix")
    age = ((now or time.time()) - created) / 86400 if _number(created) and created > 0 else None
    if age is None or age < -1:
        return "no valid timestamp"
    if age > machine.MAX_AGE_DAYS:
        return f"stale ({age:.0f} days old, limit {machine.MAX_AGE_DAYS})"
    missing = [k for k in ("created", "device", "transport", "quality", "model") if not isinstance(record.get(k), str)]
    if missing:
        return f"missing {', '.join(missing)}"
    sizes, medians, fit = record.get("sizes"), record.get("median_s"), record.get("fit")
    if not (isinstance(sizes, list) and isinstance(medians, list) and len(sizes) == len(medians) >= 2
            and all(_number(x) and x > 0 for x in sizes + medians)):
        return "bad sizes or median_s (two or more positive numbers each, as many of one as of the other)"
    quartiles = record.get("quartiles_s")
    if not (isinstance(quartiles, list) and len(quartiles) == len(sizes)
            and all(isinstance(q, list) and len(q) == 2 and all(map(_number, q)) for q in quartiles)):
        return "bad quartiles_s (a [q1, q3] pair per size)"
    if not isinstance(fit, dict) or not all(_number(fit.get(k)) and fit[k] >= 0 for k in ("alpha_s", "beta_s_per_byte")) \
            or not fit["alpha_s"] + fit["beta_s_per_byte"] > 0:
        return "bad fit (alpha_s and beta_s_per_byte must be numbers >= 0, not both 0)"
    residuals = fit.get("residuals")
    if not (isinstance(residuals, list) and len(residuals) == len(sizes) and all(map(_number, residuals))
            and all(_number(fit.get(k)) for k in ("rms_residual", "max_residual"))):
        return "bad fit residuals (one per size, with their rms and largest)"
    return None


def load(path: Path, backend: str, world_size: int) -> tuple[dict | None, str | None]:
    """(record, None) for a usable cache file, (None, reason) otherwise.

    The record: schema, created (UTC ISO) and created_unix, fingerprint (machine.fingerprint), backend,
    world_size, device, torch, transport, quality, repeats, seconds (the measurement's), message_dtype,
    sizes [bytes], median_s and quartiles_s [[q1, q3]] per size (a repeat: the slowest rank's seconds per
    all-reduce), model (the formula), fit (``fit_alpha_beta``: alpha_s, beta_s_per_byte, intercept_s,
    slope_s_per_byte, residuals, rms_residual, max_residual).
    """
    import torch
    return machine.read_cache(path, lambda record: problem(
        record, backend, world_size, machine.fingerprint(machine.cpu_info(), machine.caches()), torch.__version__,
        device_name(backend) if backend == "nccl" else None))


def comm_model(world_size: int = 2, backend: str | None = None, remeasure: bool = False, quality: str = "quick",
               path: Path | None = None, log=None, **measure_args) -> dict:
    """The cached all-reduce record, measured (and cached) first when missing, unusable or ``remeasure``."""
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        raise UserError("measuring the all-reduce needs torch.distributed: pip install -e '.[torch]'")
    backend = backend or default_backend()
    path = path or cache_path(backend, world_size)
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if not remeasure:
        record, reason = load(path, backend, world_size)
        if record:
            return record
        log(f"all-reduce cache {path}: {reason}; measuring")
    record = measure(world_size, backend, quality, log=log, **measure_args)
    try:
        write_json_atomic(path, record, indent=1)
    except OSError as e:
        log(f"could not write the all-reduce cache {path} ({e.strerror or e}); using the measurement anyway")
    return record


def main(argv: list[str] | None = None) -> int:
    """``--worker OUT REQUEST``: one rank of the probe (started by ``run_probe``, or by torchrun with
    ``{rank}`` in OUT, which each rank replaces by its own)."""
    p = argparse.ArgumentParser(description="one rank of the all-reduce probe (roofline.py --comm starts them)")
    p.add_argument("--worker", nargs=2, metavar=("OUT", "REQUEST_JSON"), required=True)
    args = p.parse_args(argv)
    request = json.loads(args.worker[1])
    out = Path(args.worker[0].replace("{rank}", os.environ.get("RANK", "0")))
    worker(request["sizes"], request["repeats"], request["min_repeat_s"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

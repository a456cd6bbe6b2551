"""The worker: one process per engine and side, timing one sample per request (``benchmark.py worker``),
and ``measure``, which drives the workers of every side in turns."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from microgpt import UserError

from benchmarks.gate.count import EngineUnavailable, prepare
from benchmarks.gate.matrix import Case

PROTOCOL = 1                    # what a worker reads and writes; ``ab`` needs the base to speak the same


def worker() -> None:
    """Serve ``measure`` over stdin/stdout, one JSON object per line: ``setup`` a case (engine, warm-up,
    calibration), time one ``sample`` at a time, so that the samples of two processes can alternate, and
    ``drop`` it before the next case.
    An engine that cannot be imported, or a case it refuses (dtype, threads), is answered with the reason."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                   # whatever the engines print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    timers, texts = {}, {}

    def answer(obj) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "hello":
            answer({"protocol": PROTOCOL})
        elif req["cmd"] == "setup":
            case = req["case"]
            try:
                if case.get("ranks", 1) > 1:        # data parallel: torchrun's processes behind the same interface
                    from benchmarks.distributed import DistributedTimer
                    timer = DistributedTimer(case, req["data"], req["warmup"], req["min_sample_s"])
                    vocab_size, warmup_s = timer.vocab_size, timer.warmup_s
                else:
                    timer, vocab_size, warmup_s = prepare(case, req["data"], req["warmup"], texts)
                steps = timer.steps_for(req["min_sample_s"])
            except EngineUnavailable as e:
                answer({"skipped": f"engine cannot be loaded: {e}", "whole_engine": True})
                continue
            except (ValueError, TypeError, NotImplementedError, UserError) as e:     # a case the engine refuses
                answer({"skipped": f"{type(e).__name__}: {e}"})
                continue
            except Exception as e:      # an engine that crashes is reported, not allowed to stop the others
                answer({"skipped": f"FAILED with {type(e).__name__}: {e}"})
                continue
            timers[case["id"]] = timer
            answer({"vocab_size": vocab_size, "warmup_s": warmup_s, "steps": steps, "isa": timer.isa,
                    "ranks": case.get("ranks", 1)})
        elif req["cmd"] == "sample":
            timer = timers[req["id"]]
            wall_ms, cpu_ms, lengths = timer.sample(req["steps"])
            steps = Counter(tuple(sorted(x)) for x in lengths)
            answer({"wall_ms": wall_ms, "cpu_ms": cpu_ms, "step_lengths": [[list(k), n] for k, n in steps.items()],
                    **({"rank_parts_ms": timer.last_parts} if hasattr(timer, "last_parts") else {})})
        elif req["cmd"] == "drop":
            timer = timers.pop(req["id"])
            if hasattr(timer, "close"):             # a DistributedTimer's torchrun processes
                timer.close()
            gc.collect()                # the next case starts without this one's garbage
            answer({})
        elif req["cmd"] == "quit":
            for timer in timers.values():
                if hasattr(timer, "close"):
                    timer.close()
            return


@dataclass
class Side:
    """Where one version of the code lives and how to start its workers."""

    name: str
    root: Path
    argv: list[str] = field(default_factory=list)   # default: this side's own ``benchmark.py worker``

    def command(self) -> list[str]:
        return self.argv or [sys.executable, str(self.root / "benchmark.py"), "worker"]


class WorkerProcess:
    """A running worker of one side; ``call`` sends a request and waits for its one-line answer."""

    def __init__(self, side: Side, cpus: list[int] | None = None):
        self.side = side
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # a fixed hash seed: two processes of the same code lay out their dicts and sets alike
        env = {**os.environ, "PYTHONHASHSEED": "0",
               "PYTHONPATH": os.pathsep.join([str(side.root), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([*side.command()], cwd=side.root, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)      # before it starts any thread; they inherit it
        hello = self.call({"cmd": "hello"})
        if hello.get("protocol") != PROTOCOL:
            self.close()
            raise UserError(f"the {side.name} side's benchmark.py speaks worker protocol {hello.get('protocol')!r}, "
                            f"this one {PROTOCOL}: they cannot be compared")

    def call(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = "\n".join(self.stderr.read().strip().splitlines()[-15:])
            raise UserError(f"the {self.side.name} worker died (exit status {self.proc.returncode}) during "
                            f"{request['cmd']} {request.get('id') or request.get('case', {}).get('id', '')}"
                            + (f":\n{tail}" if tail else ""))
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def pinned_cpus(threads: int) -> list[int] | None:
    """The CPUs the workers of ``threads``-thread cases are pinned to: the last ``threads`` this process
    may use, the same for every side, so that no side gets the core a neighbouring job keeps busy.
    None where the OS cannot pin (macOS) or there are not that many CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-threads:] if threads < len(allowed) else None


def measure(sides: list[Side], cases: list[Case], settings: dict, data: str, log=None) -> dict[str, dict]:
    """Time ``cases`` on every side: ``settings['rounds']`` rounds, each a fresh worker process per engine,
    thread count and side, taking ``settings['samples']`` samples of every case.

    The sides' workers run side by side, pinned to the same CPUs, and strictly take turns sample by sample
    (A B A B ...), all with the same steps per sample, so the n-th samples of two sides time the same
    batches on the same core moments apart: a burst of load from another job hits both. Each side first
    takes one untimed sample of a case, and which side goes first alternates from round to round. A worker holds one case
    at a time, so a benchmark measures the same whichever matrix it is part of. The engine order and
    each engine's case order rotate every round. Returns, per side, {"samples": {id: {...accumulated...}}, "skipped": {id: reason}} and
    the ``session`` that pairs them.
    """
    log = log or (lambda message: None)
    groups = list(dict.fromkeys((c.engine, c.threads, c.ranks) for c in cases))
    out = {s.name: {"samples": {}, "skipped": {}} for s in sides}
    dead = {s.name: set() for s in sides}       # engines that could not be imported on that side
    started, loads = time.perf_counter(), []
    done, total = 0, settings["rounds"] * len(groups)
    for r in range(settings["rounds"]):
        for engine, threads, ranks in groups[r % len(groups):] + groups[:r % len(groups)]:
            if hasattr(os, "getloadavg"):
                loads.append(round(os.getloadavg()[0], 2))     # how busy other jobs kept the machine
            engine_cases = [c for c in cases if (c.engine, c.threads, c.ranks) == (engine, threads, ranks)]
            engine_cases = engine_cases[r % len(engine_cases):] + engine_cases[:r % len(engine_cases)]
            live = [s for s in sides if engine not in dead[s.name]]
            if not live:
                done += 1
                continue
            t0 = time.perf_counter()
            workers, cpus = {}, pinned_cpus(threads * ranks)
            try:
                for s in live:
                    workers[s.name] = WorkerProcess(s, cpus)
                for case in engine_cases:       # one at a time: no other engine's memory in the process
                    answers = {}
                    order = live if r % 2 == 0 else live[::-1]      # the first timed pair's order
                    for s in order:
                        if engine in dead[s.name]:
                            continue
                        answer = workers[s.name].call({
                            "cmd": "setup", "data": data, "warmup": settings["warmup"],
                            "min_sample_s": settings["min_sample_s"],
                            "case": case_request(case)})
                        if case.ranks > 1 and "skipped" not in answer and answer.get("ranks") != case.ranks:
                            workers[s.name].call({"cmd": "drop", "id": case.id})
                            answer = {"skipped": f"this side's worker (protocol {PROTOCOL}, before data-parallel "
                                                 f"cases) would time it on one process"}
                        if "skipped" in answer:
                            out[s.name]["skipped"][case.id] = answer["skipped"]
                            if answer.get("whole_engine"):
                                dead[s.name].add(engine)
                        else:
                            answers[s.name] = answer
                    steps = min((a["steps"] for a in answers.values()), default=0)
                    # One untimed turn each first: without it the first timed sample after the setups was
                    # its pair's slow one (in ab A/A runs of numpy, the head's first pairs came out 15%
                    # "faster"). Then the sides strictly alternate, so every sample follows one of the other
                    # side's: a sample that follows one of its own side runs warmer (numpy ~5%), and the
                    # earlier A B, B A turns gave one side that warm turn in every other pair, balanced only
                    # for an odd number of samples. Which side leads alternates by round, so a drift within
                    # a round cancels over rounds.
                    for s in (order if answers else []):
                        if s.name in answers:
                            workers[s.name].call({"cmd": "sample", "id": case.id, "steps": steps})
                    for j in range(settings["samples"] if answers else 0):
                        for s in order:
                            if s.name not in answers:
                                continue
                            sample = workers[s.name].call({"cmd": "sample", "id": case.id, "steps": steps})
                            rec = out[s.name]["samples"].setdefault(case.id, {
                                "vocab_size": answers[s.name]["vocab_size"], "samples_ms": [], "cpu_samples_ms": [],
                                "sample_rounds": [], "steps_per_sample": [], "warmup_s": [], "step_lengths": Counter(),
                                "isa": answers[s.name].get("isa")})
                            rec["samples_ms"].append(sample["wall_ms"])
                            if "rank_parts_ms" in sample:       # data parallel: each rank's step by part
                                rec.setdefault("rank_parts_ms", []).append(sample["rank_parts_ms"])
                            rec["cpu_samples_ms"].append(sample["cpu_ms"])
                            rec["sample_rounds"].append(r)
                            if j == 0:
                                rec["steps_per_sample"].append(steps)
                                rec["warmup_s"].append(round(answers[s.name]["warmup_s"], 4))
                            for lengths, n in sample["step_lengths"]:
                                rec["step_lengths"][tuple(lengths)] += n
                    for name in answers:
                        workers[name].call({"cmd": "drop", "id": case.id})
            finally:
                for w in workers.values():
                    w.close()
            done += 1
            elapsed = time.perf_counter() - started
            log(f"[{done}/{total}] round {r + 1}/{settings['rounds']} {engine}: {' '.join(s.name for s in live)}, "
                f"{len(engine_cases)} case(s) on CPU {','.join(map(str, cpus)) if cpus else 'any'} in "
                f"{time.perf_counter() - t0:.1f} s ({elapsed:.0f} s so far, ETA {elapsed / done * (total - done):.0f} s)")
    session = f"{os.getpid()}-{time.time_ns()}"
    for side in out.values():
        side["session"] = session
        side["load_average"] = [min(loads), max(loads)] if loads else None
    return out


# ----------------------------------------------------------------------------------------------------
# Instruction counts: each case's steps under callgrind (count.py), one process per case, side and round

# The engines whose steps callgrind counts deterministically (c, cython and numpy to the instruction, the
# pure-Python ones within 0.01%). Left out: torch, jax, mlx and the compile variants, large runtimes with
# thread pools of their own and (jax, the compile variants) code generated at run time, whose counts would
# measure the runtime more than the step.
COUNTED_ENGINES = ("python", "scalar", "c", "c-ops", "cython", "numpy")
COUNT_STEPS = 4                 # counted steps per process (the matrix's "count_steps"): counts are exact, more
                                # steps only cost time
COUNT_FILE = Path(__file__).resolve().parent / "count.py"
# single-threaded math libraries: a thread pool's spinning would be counted
COUNT_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def count_instructions(side: Side, case: Case, data: str, warmup: int, steps: int) -> dict:
    """Instructions per step of ``case`` on ``side``'s code: count.py under callgrind, which dumps its
    counters at each call of getppid(), so the dump between the two calls holds just the steps."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise UserError("--metric instructions needs Valgrind (Debian/Ubuntu: apt-get install valgrind)")
    request = {"case": case_request(case), "data": data, "warmup": warmup, "steps": steps}
    with tempfile.TemporaryDirectory(prefix="microgpt-count-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, **COUNT_ENV,
               "PYTHONPATH": os.pathsep.join([str(side.root), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([valgrind, "--tool=callgrind", "--dump-before=getppid", "--cache-sim=no",
                               "--branch-sim=no", f"--callgrind-out-file={out}", sys.executable, str(COUNT_FILE),
                               json.dumps(request)], cwd=side.root, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            return {"skipped": f"FAILED under callgrind (exit status {proc.returncode}): {tail}"}
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        if "skipped" in answer:
            return answer
        steps_dump = Path(f"{out}.2")
        if not steps_dump.exists():
            return {"skipped": "callgrind wrote no dump between the markers (is libc's getppid symbol visible?)"}
        totals = [line for line in steps_dump.read_text().splitlines() if line.startswith("totals:")]
        answer["instructions"] = int(totals[0].split()[1]) / steps
        return answer


def case_request(case: Case) -> dict:
    """A case as the worker protocol and count.py read it."""
    return {"id": case.id, "engine": case.engine, "config": case.config_dict(), "batch_size": case.batch_size,
            "dtype": case.dtype, "threads": case.threads, **({"isa": case.isa} if case.isa else {}),
            **({"ranks": case.ranks} if case.ranks > 1 else {})}


def measure_instructions(sides: list[Side], cases: list[Case], settings: dict, data: str, log=None,
                         rounds: int = 1) -> dict[str, dict]:
    """Count every case on every side, ``rounds`` processes each (identical code gives identical counts;
    a second round shows that it does). Processes run in parallel, one per allowed CPU: a count does not
    depend on what else the machine does. The same structure as ``measure`` returns."""
    from concurrent.futures import ThreadPoolExecutor

    log = log or (lambda message: None)
    out = {s.name: {"samples": {}, "skipped": {}} for s in sides}
    counted = [c for c in cases if c.engine in COUNTED_ENGINES and c.ranks == 1]
    for c in cases:
        if c.ranks > 1:
            for s in sides:
                out[s.name]["skipped"][c.id] = "not counted: a data-parallel case runs in torchrun's processes"
        elif c.engine not in COUNTED_ENGINES:
            for s in sides:
                out[s.name]["skipped"][c.id] = (f"not counted: instructions are counted for "
                                                f"{', '.join(COUNTED_ENGINES)} (see benchmarks/README.md)")
    jobs = [(r, c, s) for r in range(rounds) for c in counted for s in sides]
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        steps = settings.get("count_steps", COUNT_STEPS)
        futures = [pool.submit(count_instructions, s, c, data, settings["warmup"], steps) for _, c, s in jobs]
        for k, ((r, case, side), future) in enumerate(zip(jobs, futures), 1):
            answer = future.result()
            elapsed = time.perf_counter() - started
            log(f"[{k}/{len(jobs)}] {side.name} {case.id}: "
                + (answer["skipped"].splitlines()[0] if "skipped" in answer else f"{answer['instructions']:,.0f} instructions/step")
                + f" ({elapsed:.0f} s, ETA {elapsed / k * (len(jobs) - k):.0f} s)")
            if "skipped" in answer:
                out[side.name]["skipped"][case.id] = answer["skipped"]
                continue
            rec = out[side.name]["samples"].setdefault(case.id, {
                "vocab_size": answer["vocab_size"], "samples_ms": [], "cpu_samples_ms": [], "sample_rounds": [],
                "instruction_samples": [], "steps_per_sample": [], "warmup_s": [], "step_lengths": Counter(),
                "isa": answer.get("isa")})
            rec["instruction_samples"].append(answer["instructions"])
            rec["sample_rounds"].append(r)
            rec["steps_per_sample"].append(steps)
            for lengths in answer["step_lengths"]:
                rec["step_lengths"][tuple(sorted(lengths))] += 1
    session = f"{os.getpid()}-{time.time_ns()}"
    for side in out.values():
        side["session"], side["load_average"] = session, None
    return out

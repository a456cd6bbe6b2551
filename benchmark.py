"""benchmark.py: how fast every engine trains, measured so that a regression gate can be trusted.

    python benchmark.py run --quick                        # < 60 s: every engine that imports, the default model
    python benchmark.py run -o out/bench.json              # the default matrix, < 5 min
    python benchmark.py run --quick --isa all              # the c engine's cases once per instruction set
    python benchmark.py compare benchmarks/baseline.json out/bench.json [--md out/compare.md]
    python benchmark.py ab --base origin/main --quick      # base and head interleaved, then compared (CI's gate)
    python benchmark.py update-baseline [RESULTS]          # replace benchmarks/baseline.json, extend the history
    python benchmark.py report out/bench.json [--base B]   # markdown and charts in out/report/
    pytest benchmarks/test_kernels.py --benchmark-json=out/kernels.json   # fastops micro-benchmarks (compare reads it)

Measuring. The matrix (benchmarks/matrix.json: engines x configs x batch sizes x dtypes x threads) is
timed with microgpt/timing.py in fresh worker processes: each round starts one process per engine and
thread count, pinned to fixed CPUs, so a process's luck (memory layout, import order) is one round's,
not the result's; the order of the engines rotates from round to round. Every sample is kept, in wall
and in CPU time. Each record of the c engine names the instruction set its kernels ran ("isa"); ``run
--isa avx2`` (a comma list, or all) times the c engine's cases on the named sets instead of its best, as
benchmarks of their own ids (``c[avx2] C16L1H4 b1 f64 t1``).

Deciding. ``compare`` calls a benchmark a regression only when both hold: a one-sided rank test says the
current samples are slower (p < alpha, default 0.01) *and* the ratio exceeds the effect floor (default
5%, per benchmark overridable). The rank test keeps noise from being called a change; the floor keeps a
real but negligible change from failing a pull request. For two separate runs the ratio is that of the
medians and the test Mann-Whitney U; the 95% confidence interval comes from a bootstrap of both medians.
One-thread benchmarks are judged on CPU time, because on a shared machine wall time mostly measures the
neighbours (see ``--metric``).

``ab`` is the robust mode: it checks the base revision out into a temporary git worktree, builds its
extensions there, and runs a base and a head worker side by side that take turns sample by sample
(A B, B A, ...) on the same batches, so a burst of load from another job lands on both halves of a pair.
Its verdicts use the pairs: the ratio is the median of the pairs' ratios, the test Wilcoxon's signed rank.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from microgpt import UserError, files
from microgpt.files import write_atomic

REPO = Path(__file__).resolve().parent
MATRIX = REPO / "benchmarks" / "matrix.json"
BASELINE = REPO / "benchmarks" / "baseline.json"
HISTORY = REPO / "benchmarks" / "history.json"
SCHEMA = "microgpt-lab/benchmark/1"
HISTORY_SCHEMA = "microgpt-lab/benchmark-history/1"
PROTOCOL = 1                    # what a worker reads and writes; ``ab`` needs the base to speak the same
DTYPE_SHORT = {"float64": "f64", "float32": "f32"}
PACKAGES = ("numpy", "torch", "jax", "jaxlib", "mlx", "Cython", "scipy", "matplotlib", "pytest-benchmark")
HISTORY_LIMIT = 500
DEFAULT_ALPHA = 0.01
DEFAULT_THRESHOLD = 0.05
BOOTSTRAP_RESAMPLES = 4000


# ----------------------------------------------------------------------------------------------------
# The matrix


@dataclass(frozen=True)
class Case:
    """One benchmark: an engine training one model shape at one batch size, precision and thread count."""

    engine: str
    config: tuple            # (n_embd, n_layer, n_head, block_size, mlp_act)
    batch_size: int
    dtype: str
    threads: int
    threshold: float | None = None      # the effect floor for this benchmark, if the matrix sets one
    isa: str | None = None              # the c engine's instruction set when chosen (--isa); None: its best

    @property
    def id(self) -> str:
        engine = f"{self.engine}[{self.isa}]" if self.isa else self.engine
        return f"{engine} {config_label(self.config)} b{self.batch_size} {DTYPE_SHORT[self.dtype]} t{self.threads}"

    def config_dict(self) -> dict:
        return dict(zip(("n_embd", "n_layer", "n_head", "block_size", "mlp_act"), self.config))


def config_label(config: tuple) -> str:
    n_embd, n_layer, n_head, block_size, mlp_act = config
    return (f"C{n_embd}L{n_layer}H{n_head}" + (f"T{block_size}" if block_size != 16 else "")
            + (f"-{mlp_act}" if mlp_act != "relu2" else ""))


CONFIG_RE = re.compile(r"C(\d+)L(\d+)H(\d+)(?:T(\d+))?(?:-(relu2?))?$")


def parse_config(text: str) -> tuple:
    """'C16L1H4' -> (16, 1, 4, 16, 'relu2'); 'C32L2H4T8-relu' sets block size 8 and plain ReLU."""
    m = CONFIG_RE.match(text)
    if not m:
        raise UserError(f"bad config {text!r} in the matrix; write e.g. C16L1H4, C32L2H4T8 or C16L1H4-relu")
    n_embd, n_layer, n_head = map(int, m.group(1, 2, 3))
    return n_embd, n_layer, n_head, int(m.group(4) or 16), m.group(5) or "relu2"


GROUP_KEYS = {"engines", "exclude", "configs", "batch_sizes", "dtypes", "threads", "threshold"}


def check_group(group, where: str) -> None:
    """One-line errors for a malformed group of the matrix file."""
    if not isinstance(group, dict):
        raise UserError(f"{where}: must be an object")
    unknown = sorted(set(group) - GROUP_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(GROUP_KEYS))})")
    positive = lambda xs: isinstance(xs, list) and xs and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                              for x in xs)
    for key in ("batch_sizes", "threads"):
        if key in group and not positive(group[key]):
            raise UserError(f"{where}: {key} must be a non-empty list of integers >= 1")
    if "dtypes" in group and not (isinstance(group["dtypes"], list) and set(group["dtypes"]) <= set(DTYPE_SHORT)):
        raise UserError(f"{where}: dtypes must be a list of {', '.join(DTYPE_SHORT)}")
    if not (group.get("engines") == "*" or isinstance(group.get("engines"), list)):
        raise UserError(f"{where}: engines must be \"*\" or a list of engine names")
    threshold = group.get("threshold", 0.0)
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 10:
        raise UserError(f"{where}: threshold must be a fraction in [0, 10)")


def load_matrix(name: str, path: Path = MATRIX) -> tuple[dict, list[Case], list[dict]]:
    """The named matrix's settings, its cases for the registered engines, and what it leaves out and why."""
    from engines import ENGINES

    data = read_json(path, "matrix file")
    if name not in data or not isinstance(data[name], dict):
        raise UserError(f"{path} has no matrix {name!r} (has {', '.join(k for k in data if not k.startswith('_'))})")
    spec = data[name]
    settings = {k: spec.get(k, d) for k, d in (("rounds", 3), ("samples", 5), ("min_sample_s", 0.05), ("warmup", 2))}
    cases, seen = [], set()
    for i, group in enumerate(spec.get("groups", [])):
        check_group(group, f"{path}, matrix {name!r}, group {i}")
        names = list(ENGINES) if group.get("engines") == "*" else group.get("engines", [])
        names = [n for n in names if n not in group.get("exclude", [])]
        for engine in names:
            for config in map(parse_config, group.get("configs", ["C16L1H4"])):
                for batch in group.get("batch_sizes", [1]):
                    for dtype in group.get("dtypes", ["float64"]):
                        for threads in group.get("threads", [1]):
                            case = Case(engine, config, batch, dtype, threads, group.get("threshold"))
                            if case.id not in seen:
                                seen.add(case.id)
                                cases.append(case)
    left_out = [{"engine": e, "reason": reason} for e, reason in spec.get("left_out", {}).items() if e in ENGINES]
    return settings, cases, left_out


# ----------------------------------------------------------------------------------------------------
# The worker: one process per engine and side, timing one sample per request (``benchmark.py worker``)


def worker() -> None:
    """Serve ``measure`` over stdin/stdout, one JSON object per line: ``setup`` a case (engine, warm-up,
    calibration), time one ``sample`` at a time, so that the samples of two processes can alternate, and
    ``drop`` it before the next case.
    An engine that cannot be imported, or a case it refuses (dtype, threads), is answered with the reason."""
    from engines import load_engine
    from microgpt.config import ModelConfig
    from microgpt.data import load_documents
    from microgpt.timing import EngineTimer
    from microgpt.tokenizers import build_tokenizer, wrap

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
            if req["data"] not in texts:
                docs = load_documents([req["data"]])
                tokenizer = build_tokenizer("char", docs, docs)
                # a fixed shuffle: names.txt starts with its shortest names, and every run's window of
                # documents (which depends on its steps per sample) must cost the same on average
                random.Random(0).shuffle(docs)
                texts[req["data"]] = (docs, tokenizer)
            docs, tokenizer = texts[req["data"]]
            try:
                engine_cls = load_engine(case["engine"])
            except (UserError, ImportError) as e:
                answer({"skipped": f"engine cannot be loaded: {e}", "whole_engine": True})
                continue
            try:
                cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **case["config"]).validate()
                timer = EngineTimer(engine_cls, cfg, [wrap(tokenizer, t, cfg.block_size) for t in docs],
                                    case["batch_size"], case["dtype"], case["threads"], isa=case.get("isa"))
                warmup_s = timer.warm_up(req["warmup"])
                steps = timer.steps_for(req["min_sample_s"])
            except (ValueError, TypeError, NotImplementedError, UserError) as e:     # a case the engine refuses
                answer({"skipped": f"{type(e).__name__}: {e}"})
                continue
            except Exception as e:      # an engine that crashes is reported, not allowed to stop the others
                answer({"skipped": f"FAILED with {type(e).__name__}: {e}"})
                continue
            timers[case["id"]] = timer
            answer({"vocab_size": cfg.vocab_size, "warmup_s": warmup_s, "steps": steps, "isa": timer.isa})
        elif req["cmd"] == "sample":
            wall_ms, cpu_ms, lengths = timers[req["id"]].sample(req["steps"])
            steps = Counter(tuple(sorted(x)) for x in lengths)
            answer({"wall_ms": wall_ms, "cpu_ms": cpu_ms, "step_lengths": [[list(k), n] for k, n in steps.items()]})
        elif req["cmd"] == "drop":
            del timers[req["id"]]
            gc.collect()                # the next case starts without this one's garbage
            answer({})
        elif req["cmd"] == "quit":
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

    The sides' workers run side by side, pinned to the same CPUs, and take turns sample by sample (A B,
    then B A), all with the same steps per sample, so the n-th samples of two sides time the same batches
    on the same core moments apart: a burst of load from another job hits both. A worker holds one case
    at a time, so a benchmark measures the same whichever matrix it is part of. The engine order and
    each engine's case order rotate every round. Returns, per side, {"samples": {id: {...accumulated...}}, "skipped": {id: reason}} and
    the ``session`` that pairs them.
    """
    log = log or (lambda message: None)
    groups = list(dict.fromkeys((c.engine, c.threads) for c in cases))
    out = {s.name: {"samples": {}, "skipped": {}} for s in sides}
    dead = {s.name: set() for s in sides}       # engines that could not be imported on that side
    started, loads = time.perf_counter(), []
    for r in range(settings["rounds"]):
        for engine, threads in groups[r % len(groups):] + groups[:r % len(groups)]:
            if hasattr(os, "getloadavg"):
                loads.append(round(os.getloadavg()[0], 2))     # how busy other jobs kept the machine
            engine_cases = [c for c in cases if (c.engine, c.threads) == (engine, threads)]
            engine_cases = engine_cases[r % len(engine_cases):] + engine_cases[:r % len(engine_cases)]
            live = [s for s in sides if engine not in dead[s.name]]
            if not live:
                continue
            t0 = time.perf_counter()
            workers, cpus = {}, pinned_cpus(threads)
            try:
                for s in live:
                    workers[s.name] = WorkerProcess(s, cpus)
                for case in engine_cases:       # one at a time: no other engine's memory in the process
                    answers = {}
                    for s in live:
                        if engine in dead[s.name]:
                            continue
                        answer = workers[s.name].call({
                            "cmd": "setup", "data": data, "warmup": settings["warmup"],
                            "min_sample_s": settings["min_sample_s"],
                            "case": {"id": case.id, "engine": case.engine, "config": case.config_dict(),
                                     "batch_size": case.batch_size, "dtype": case.dtype, "threads": case.threads,
                                     **({"isa": case.isa} if case.isa else {})}})
                        if "skipped" in answer:
                            out[s.name]["skipped"][case.id] = answer["skipped"]
                            if answer.get("whole_engine"):
                                dead[s.name].add(engine)
                        else:
                            answers[s.name] = answer
                    steps = min((a["steps"] for a in answers.values()), default=0)
                    for j in range(settings["samples"] if answers else 0):
                        for s in (live if (r + j) % 2 == 0 else live[::-1]):
                            if s.name not in answers:
                                continue
                            sample = workers[s.name].call({"cmd": "sample", "id": case.id, "steps": steps})
                            rec = out[s.name]["samples"].setdefault(case.id, {
                                "vocab_size": answers[s.name]["vocab_size"], "samples_ms": [], "cpu_samples_ms": [],
                                "sample_rounds": [], "steps_per_sample": [], "warmup_s": [], "step_lengths": Counter(),
                                "isa": answers[s.name].get("isa")})
                            rec["samples_ms"].append(sample["wall_ms"])
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
            log(f"round {r + 1}/{settings['rounds']} {engine}: {' '.join(s.name for s in live)}, "
                f"{len(engine_cases)} case(s) on CPU {','.join(map(str, cpus)) if cpus else 'any'} in "
                f"{time.perf_counter() - t0:.1f} s ({time.perf_counter() - started:.0f} s so far)")
    session = f"{os.getpid()}-{time.time_ns()}"
    for side in out.values():
        side["session"] = session
        side["load_average"] = [min(loads), max(loads)] if loads else None
    return out


def summarise(case: Case, acc: dict) -> dict:
    """A result record: every sample, plus medians, tokens/s and GFLOP/s (FLOPs from microgpt/flops.py)."""
    from microgpt.config import ModelConfig
    from microgpt.flops import step_cost

    cfg = ModelConfig(vocab_size=acc["vocab_size"], **case.config_dict())
    steps = sum(acc["step_lengths"].values())
    tokens = sum(sum(lengths) * n for lengths, n in acc["step_lengths"].items()) / steps
    flops = sum(step_cost(cfg, list(lengths), 8 if case.dtype == "float64" else 4).flops * n
                for lengths, n in acc["step_lengths"].items()) / steps
    ms = statistics.median(acc["samples_ms"])
    record = {"id": case.id, "engine": case.engine, "config": {**case.config_dict(), "vocab_size": cfg.vocab_size},
              "batch_size": case.batch_size, "dtype": case.dtype, "threads": case.threads,
              "samples_ms": acc["samples_ms"], "cpu_samples_ms": acc["cpu_samples_ms"],
              "sample_rounds": acc["sample_rounds"], "steps_per_sample": acc["steps_per_sample"],
              "warmup_s": acc["warmup_s"], "ms_per_step": ms, "cpu_ms_per_step": statistics.median(acc["cpu_samples_ms"]),
              "tokens_per_step": tokens, "tokens_per_s": tokens / (ms / 1e3), "flops_per_step": flops,
              "gflops": flops / (ms / 1e3) / 1e9}
    if acc.get("isa"):
        record["isa"] = acc["isa"]              # the instruction set the c engine's kernels ran
    if case.threshold is not None:
        record["threshold"] = case.threshold
    return record


def results_document(side: dict, cases: list[Case], settings: dict, data_info: dict, matrix: str,
                     left_out: list[dict], root: Path = REPO) -> dict:
    """The results file of one side (schema ``SCHEMA``; see ``check_results`` for what a reader relies on)."""
    by_id = {c.id: c for c in cases}
    skipped = [{"id": i, "reason": reason} for i, reason in side["skipped"].items()]
    skipped += [{"id": f"{x['engine']} *", "reason": x["reason"]} for x in left_out]
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "matrix": matrix, "settings": {**settings, "data": data_info, "session": side["session"],
                                           "load_average": side["load_average"]},
            "environment": environment(root),
            "results": [summarise(by_id[i], acc) for i, acc in side["samples"].items()],
            "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# The environment a result was measured in


def _command_output(args: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: Path) -> dict:
    commit = _command_output(["git", "rev-parse", "HEAD"], root)
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": _command_output(["git", "rev-parse", "--abbrev-ref", "HEAD"], root)}


def environment(root: Path = REPO) -> dict:
    from microgpt import machine

    cpu, caches = machine.cpu_info(), machine.caches()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cc = sysconfig.get_config_var("CC") or "cc"
    return {
        "machine": {"model": cpu["model"], "simd_flags": cpu["simd_flags"], "cpus": cpu["cpus"],
                    "logical_cpus": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
                    "host": platform.node(), "fingerprint": machine.fingerprint(cpu, caches)},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "packages": versions,
        "compiler": {"cc": cc, "version": (_command_output([cc.split()[0], "--version"]) or "").split("\n")[0] or None,
                     "cflags": sysconfig.get_config_var("CFLAGS"),
                     "sanitize": bool(os.environ.get("MICROGPT_SANITIZE"))},
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                       if k in os.environ},
        "git": git_info(root),
    }


def machine_differences(a: dict, b: dict) -> list[str]:
    """What differs between two environments' machines (CPU model, core count, architecture)."""
    ma, mb = a.get("machine", {}), b.get("machine", {})
    return [f"{key}: {ma.get(key)!r} vs {mb.get(key)!r}" for key in ("model", "cpus", "arch")
            if ma.get(key) != mb.get(key)]


# ----------------------------------------------------------------------------------------------------
# Results files: ours, and pytest-benchmark's JSON


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a JSON file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    files.write_json_atomic(path, obj, indent=1)


def _number_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


def check_results(doc: dict, path: str) -> dict:
    """Validate a results document: the schema, and per record an id and a list of numeric samples."""
    if not isinstance(doc, dict) or "schema" not in doc:
        raise UserError(f"{path} is not a benchmark results file (no 'schema' key)")
    if doc["schema"] != SCHEMA:
        raise UserError(f"{path} has schema {doc['schema']!r}; this benchmark.py reads {SCHEMA!r} "
                        f"(re-run it, or compare with the benchmark.py that wrote it)")
    records = doc.get("results")
    if not isinstance(records, list):
        raise UserError(f"{path}: 'results' must be a list")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not _number_list(r.get("samples_ms")):
            raise UserError(f"{path}: result {i} needs an 'id' and a list of numbers 'samples_ms'")
        if "cpu_samples_ms" in r and not _number_list(r["cpu_samples_ms"]):
            raise UserError(f"{path}: result {i} ({r['id']}): 'cpu_samples_ms' must be a list of numbers")
    return doc


def from_pytest_benchmark(doc: dict, path: str) -> dict:
    """pytest-benchmark's --benchmark-json, as a results document (its per-round times are the samples)."""
    records = []
    for b in doc["benchmarks"]:
        stats = b.get("stats") or {}
        data = stats.get("data")
        if not _number_list(data):
            raise UserError(f"{path}: benchmark {b.get('fullname')!r} has no per-round data; write the file with "
                            f"--benchmark-json (or --benchmark-save-data) so the samples are kept")
        records.append({"id": b.get("fullname") or b.get("name"), "engine": b.get("group") or "kernel",
                        "samples_ms": [x * 1e3 for x in data], "threads": 1,
                        "ms_per_step": statistics.median(data) * 1e3, "timer": (b.get("options") or {}).get("timer")})
    info, commit = doc.get("machine_info") or {}, doc.get("commit_info") or {}
    cpu = info.get("cpu") or {}
    return {"schema": SCHEMA, "created": doc.get("datetime"), "matrix": "pytest-benchmark", "results": records,
            "skipped": [], "environment": {
                "machine": {"model": cpu.get("brand_raw"), "cpus": cpu.get("count"), "arch": info.get("machine")},
                "python": {"version": info.get("python_version")},
                "git": {"commit": commit.get("id"), "dirty": commit.get("dirty")}}}


def load_results(path: str | Path) -> dict:
    """A results file of ours or of pytest-benchmark, validated; one-line errors for anything else."""
    doc = read_json(path, "results file")
    if isinstance(doc, dict) and "benchmarks" in doc and "machine_info" in doc:
        return from_pytest_benchmark(doc, str(path))
    return check_results(doc, str(path))


# ----------------------------------------------------------------------------------------------------
# Statistics (standard library only, so ``compare`` runs on a bare install)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _u_distribution(m: int, n: int) -> list[int]:
    """Number of arrangements of m x's and n y's for each value of U (no ties): the coefficients of the
    Gaussian binomial [m + n choose m] in q, built as prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i)."""
    size = m * n + 1
    poly = [1] + [0] * (size - 1)
    for i in range(1, m + 1):
        for k in range(size - 1, n + i - 1, -1):       # times (1 - q^(n+i))
            poly[k] -= poly[k - n - i]
        for k in range(i, size):                        # divided by (1 - q^i)
            poly[k] += poly[k - i]
    return poly


def mann_whitney_u(x: list[float], y: list[float]) -> tuple[float, float]:
    """U statistic of ``x`` and the one-sided p-value for "x tends to be larger than y".

    Exact when there are no ties and the samples are small (m * n <= 10,000); otherwise the normal
    approximation with the tie correction and a continuity correction (as scipy.stats.mannwhitneyu).
    All values equal gives p = 1: identical samples are no evidence of anything.
    """
    m, n = len(x), len(y)
    if not m or not n:
        raise ValueError("Mann-Whitney U needs at least one value on each side")
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks, tie_term, i = [0.0] * (m + n), 0, 0
    while i < m + n:                                    # average ranks over runs of ties
        j = i
        while j + 1 < m + n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        tie_term += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    r_x = sum(r for r, (_, side) in zip(ranks, pooled) if side == 0)
    u = r_x - m * (m + 1) / 2
    if tie_term == 0 and m * n <= 10_000:
        counts = _u_distribution(m, n)
        return u, sum(counts[math.ceil(u):]) / sum(counts)
    variance = m * n / 12 * ((m + n + 1) - tie_term / ((m + n) * (m + n - 1)))
    if variance <= 0:
        return u, 1.0
    return u, _normal_sf((u - m * n / 2 - 0.5) / math.sqrt(variance))


def _signed_rank_distribution(n: int) -> list[int]:
    """Number of sign patterns of ranks 1..n for each value of W+ (the sum of the positive ranks)."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):
        for w in range(len(counts) - 1, rank - 1, -1):
            counts[w] += counts[w - rank]
    return counts


def wilcoxon_signed_rank(d: list[float]) -> tuple[float, float]:
    """W+ of the differences ``d`` and the one-sided p-value for "d tends to be positive".

    Zero differences are dropped (Wilcoxon's convention); exact without ties for n <= 50, otherwise the
    normal approximation with the tie correction and a continuity correction (as scipy.stats.wilcoxon).
    """
    d = [x for x in d if x != 0]
    n = len(d)
    if not n:
        return 0.0, 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks, tie_term, i = [0.0] * n, 0, 0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        tie_term += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    w = sum(r for r, x in zip(ranks, d) if x > 0)
    if tie_term == 0 and n <= 50:
        counts = _signed_rank_distribution(n)
        return w, sum(counts[math.ceil(w):]) / 2 ** n
    mean = n * (n + 1) / 4
    variance = n * (n + 1) * (2 * n + 1) / 24 - tie_term / 48
    if variance <= 0:
        return w, 1.0
    return w, 0.5 * math.erfc((w - mean - 0.5) / math.sqrt(variance) / math.sqrt(2))


def bootstrap_median(sorted_x: list[float], rng: random.Random) -> float:
    """The median of one bootstrap resample of ``sorted_x``, drawn in O(1) however long the sample.

    Resampling n values with replacement picks order statistic ceil(n u) for n uniforms u, so the
    resample's k-th smallest value is the one at the k-th smallest of n uniforms, which is Beta(k, n-k+1)
    distributed; the (k+1)-th is the smallest of the n-k uniforms above it.
    """
    n = len(sorted_x)
    k = (n + 1) // 2
    u = rng.betavariate(k, n - k + 1)
    low = sorted_x[min(n - 1, int(u * n))]
    if n % 2:
        return low
    u_next = u + (1 - u) * rng.betavariate(1, n - k)
    return (low + sorted_x[min(n - 1, int(u_next * n))]) / 2


def ratio_ci(base: list[float], cur: list[float], seed: str, level: float = 0.95,
             resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of median(cur) / median(base)."""
    rng = random.Random(seed)
    b, c = sorted(base), sorted(cur)
    ratios = []
    for _ in range(resamples):
        denominator = bootstrap_median(b, rng)
        ratios.append(bootstrap_median(c, rng) / denominator if denominator > 0 else math.inf)
    ratios.sort()
    tail = (1 - level) / 2
    return ratios[int(tail * (resamples - 1))], ratios[int((1 - tail) * (resamples - 1))]


def paired_ci(log_ratios: list[float], seed: str, level: float = 0.95,
              resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of exp(median(log_ratios)), the paired ratio."""
    rng = random.Random(seed)
    d = sorted(log_ratios)
    ratios = sorted(math.exp(bootstrap_median(d, rng)) for _ in range(resamples))
    tail = (1 - level) / 2
    return ratios[int(tail * (resamples - 1))], ratios[int((1 - tail) * (resamples - 1))]


@dataclass
class Verdict:
    id: str
    metric: str
    verdict: str                  # "regression", "faster", "no change", "untestable", "only in base", "only in current"
    threshold: float
    base_ms: float | None = None
    cur_ms: float | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None        # one-sided, in the direction of the observed change
    n: tuple[int, int] = (0, 0)
    paired: bool = False          # samples taken in interleaved pairs (ab): Wilcoxon on the pairs' ratios
    note: str = ""
    base_samples: list[float] = field(default_factory=list, repr=False)
    cur_samples: list[float] = field(default_factory=list, repr=False)


def judge(bench_id: str, base: list[float], cur: list[float], threshold: float = DEFAULT_THRESHOLD,
          alpha: float = DEFAULT_ALPHA, metric: str = "wall", paired: bool = False) -> Verdict:
    """Is ``cur`` slower than ``base``? A regression needs the rank test *and* the effect floor.

    Unpaired (two separate runs): the ratio of the medians, Mann-Whitney U on all samples. Paired (``ab``:
    ``base[i]`` and ``cur[i]`` timed the same batches moments apart): the ratio is the median of the pairs'
    ratios and the test is Wilcoxon's signed-rank test on their logarithms, so load that comes and goes
    cancels within each pair instead of adding to the spread.
    """
    if paired:
        if len(base) != len(cur):
            raise ValueError(f"{bench_id}: paired samples need equal lengths ({len(base)} and {len(cur)})")
        kept = [(b, c) for b, c in zip(base, cur) if math.isfinite(b) and math.isfinite(c)]
        clean_b, clean_c = [b for b, _ in kept], [c for _, c in kept]
    else:
        clean_b = [x for x in base if math.isfinite(x)]
        clean_c = [x for x in cur if math.isfinite(x)]
    dropped = len(base) + len(cur) - len(clean_b) - len(clean_c)
    v = Verdict(bench_id, metric, "untestable", threshold, n=(len(clean_b), len(clean_c)), paired=paired,
                note=f"{dropped} non-finite sample(s) dropped" if dropped else "", base_samples=clean_b, cur_samples=clean_c)
    if min(v.n) < 2:
        v.note = "; ".join(filter(None, [v.note, f"needs >= 2 finite samples per side (has {v.n[0]} and {v.n[1]})"]))
        return v
    v.base_ms, v.cur_ms = statistics.median(clean_b), statistics.median(clean_c)
    if min(clean_b + clean_c if paired else [v.base_ms, v.cur_ms]) <= 0:
        v.note = "; ".join(filter(None, [v.note, "a time of zero cannot be compared" if paired
                                         else "a median of zero time cannot be compared"]))
        return v
    if paired:
        d = [math.log(c / b) for b, c in zip(clean_b, clean_c)]
        v.ratio = math.exp(statistics.median(d))
        v.ci = paired_ci(d, seed=bench_id)
        p_slower = wilcoxon_signed_rank(d)[1]
        p_faster = wilcoxon_signed_rank([-x for x in d])[1]
    else:
        v.ratio = v.cur_ms / v.base_ms
        v.ci = ratio_ci(clean_b, clean_c, seed=bench_id)
        p_slower = mann_whitney_u(clean_c, clean_b)[1]
        p_faster = mann_whitney_u(clean_b, clean_c)[1]
    v.p = p_slower if v.ratio >= 1 else p_faster
    if p_slower < alpha and v.ratio > 1 + threshold:
        v.verdict = "regression"
    elif p_faster < alpha and v.ratio < 1 / (1 + threshold):
        v.verdict = "faster"
    else:
        v.verdict = "no change"
    return v


def paired_samples(b: dict, c: dict, key: str) -> tuple[list[float], list[float]]:
    """The samples two sides took in turns (same round, same position in it), as two aligned lists."""
    def by_round(rec):
        rounds = {}
        for x, r in zip(rec[key], rec.get("sample_rounds") or [0] * len(rec[key])):
            rounds.setdefault(r, []).append(x)
        return rounds
    rb, rc = by_round(b), by_round(c)
    base, cur = [], []
    for r in sorted(set(rb) & set(rc)):
        n = min(len(rb[r]), len(rc[r]))
        base += rb[r][:n]
        cur += rc[r][:n]
    return base, cur


def pick_metric(metric: str, b: dict, c: dict) -> str:
    """``auto``: CPU time for one-thread benchmarks that recorded it on both sides, wall time otherwise
    (several threads waiting on each other, or a device, only show in wall time)."""
    if metric != "auto":
        return metric
    has_cpu = bool(b.get("cpu_samples_ms")) and bool(c.get("cpu_samples_ms"))
    return "cpu" if has_cpu and c.get("threads", 1) == 1 and b.get("threads", 1) == 1 else "wall"


def thresholds_from(specs: list[str]) -> tuple[float, list[tuple[str, float]]]:
    """``--threshold 0.05`` sets the default floor, ``--threshold 'python *=0.1'`` one for matching ids."""
    default, patterns = DEFAULT_THRESHOLD, []
    for spec in specs:
        pattern, _, value = spec.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--threshold must be a fraction like 0.05 or PATTERN=0.05 (got {spec!r})") from None
        if not 0 <= number < 10:
            raise UserError(f"--threshold must be a fraction in [0, 10) (got {number})")
        if pattern:
            patterns.append((pattern, number))
        else:
            default = number
    return default, patterns


def compare_results(base: dict, cur: dict, metric: str = "auto", alpha: float = DEFAULT_ALPHA,
                    thresholds: list[str] | None = None) -> list[Verdict]:
    """One verdict per benchmark id found in either file (sorted as in the current file)."""
    if metric not in ("auto", "cpu", "wall"):
        raise UserError(f"--metric must be auto, cpu or wall (got {metric!r})")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1) (got {alpha})")
    default, patterns = thresholds_from(thresholds or [])
    session = (base.get("settings") or {}).get("session")
    paired = session is not None and session == (cur.get("settings") or {}).get("session")
    b_by_id = {r["id"]: r for r in base["results"]}
    c_by_id = {r["id"]: r for r in cur["results"]}
    if not set(b_by_id) & set(c_by_id):
        raise UserError("the two files have no benchmark in common (different matrices or engines?)")
    verdicts = []
    for bench_id in list(c_by_id) + [i for i in b_by_id if i not in c_by_id]:
        b, c = b_by_id.get(bench_id), c_by_id.get(bench_id)
        threshold = (c or b).get("threshold", default)
        for pattern, value in patterns:
            if fnmatch.fnmatchcase(bench_id, pattern):
                threshold = value
        if b is None or c is None:
            verdicts.append(Verdict(bench_id, "-", "only in current" if b is None else "only in base", threshold))
            continue
        m = pick_metric(metric, b, c)
        key = "cpu_samples_ms" if m == "cpu" else "samples_ms"
        if not b.get(key) or not c.get(key):
            raise UserError(f"--metric {m}: {bench_id} has no {key} in both files (use --metric wall)")
        label = (c.get("timer") or m).rsplit(".", 1)[-1]       # pytest-benchmark names its timer
        if paired:
            verdicts.append(judge(bench_id, *paired_samples(b, c, key), threshold, alpha, label, paired=True))
        else:
            verdicts.append(judge(bench_id, b[key], c[key], threshold, alpha, label))
    return verdicts


# ----------------------------------------------------------------------------------------------------
# Printing a comparison


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.4g}"


def _fmt_pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%" if math.isfinite(ratio) else "inf"


def verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    """Table rows of the benchmarks both files measured (the others are listed by ``unmatched``)."""
    rows = []
    for v in verdicts:
        if v.verdict.startswith("only in"):
            continue
        ci = f"[{_fmt_pct(v.ci[0])}, {_fmt_pct(v.ci[1])}]" if v.ci else "-"
        p = "-" if v.p is None else ("<0.001" if v.p < 0.001 else f"{v.p:.3f}")
        label = v.verdict.upper() if v.verdict == "regression" else v.verdict
        n = f"{v.n[0]} pairs" if v.paired else f"{v.n[0]}+{v.n[1]}"
        rows.append([v.id, v.metric, n, _fmt_ms(v.base_ms), _fmt_ms(v.cur_ms),
                     _fmt_pct(v.ratio) if v.ratio else "-", ci, p, f"{v.threshold:.0%}",
                     label + (f" ({v.note})" if v.note else "")])
    return rows


HEADER = ["benchmark", "metric", "samples", "base ms", "current ms", "change", "95% CI", "p", "floor", "verdict"]


def unmatched(verdicts: list[Verdict]) -> list[str]:
    """One line per file for the benchmarks only it has (other matrices, engines missing on one side)."""
    lines = []
    for kind in ("only in base", "only in current"):
        ids = [v.id for v in verdicts if v.verdict == kind]
        if ids:
            lines.append(f"{kind} ({len(ids)}): {', '.join(ids)}")
    return lines


def summary_line(verdicts: list[Verdict]) -> str:
    counts = Counter(v.verdict for v in verdicts)
    parts = [f"{counts[k]} {k}" for k in ("regression", "faster", "no change", "untestable", "only in base",
                                          "only in current") if counts[k]]
    return f"{len(verdicts)} benchmarks: " + ", ".join(parts)


def text_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown(verdicts: list[Verdict], warnings: list[str], title: str, alpha: float, extra: str = "") -> str:
    regressions = [v for v in verdicts if v.verdict == "regression"]
    head = (f"**{len(regressions)} regression{'s' * (len(regressions) != 1)}**" if regressions
            else "**No regression**")
    test = ("Wilcoxon signed-rank test on the interleaved pairs (change: the median of the pairs' ratios)"
            if any(v.paired for v in verdicts) else "Mann-Whitney U test (change: the ratio of the medians)")
    lines = [f"### {title}", "", f"{head} — {summary_line(verdicts)}. A regression needs a one-sided {test} "
             f"with p < {alpha:g} *and* a slowdown above the floor; `cpu` = process CPU time "
             f"(one-thread benchmarks), `wall` = elapsed time.", ""]
    lines += [f"> :warning: {w}" for w in warnings] + ([""] if warnings else [])
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 2) + ["---"]) + "|")
    for row in verdict_rows(verdicts):
        row[0] = f"`{row[0]}`"
        if row[-1].startswith("REGRESSION"):
            row[-1] = f"**{row[-1]}**"
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"_{line}_" for line in unmatched(verdicts)]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def comparison_warnings(base: dict, cur: dict) -> list[str]:
    warnings = []
    diffs = machine_differences(base.get("environment", {}), cur.get("environment", {}))
    if diffs:
        warnings.append("DIFFERENT MACHINES: the two files were measured on different hardware ("
                        + "; ".join(diffs) + "), so every ratio mixes code changes with machine changes")
    isa_base = {r["id"]: r.get("isa") for r in base.get("results", [])}
    for r in cur.get("results", []):
        if r["id"] in isa_base and isa_base[r["id"]] and r.get("isa") and isa_base[r["id"]] != r["isa"]:
            warnings.append(f"{r['id']} ran the {isa_base[r['id']]} kernels in the base and {r['isa']} in the current "
                            f"results: its ratio mixes instruction sets")
    pb = base.get("environment", {}).get("python", {}).get("version")
    pc = cur.get("environment", {}).get("python", {}).get("version")
    if pb and pc and pb != pc:
        warnings.append(f"different Python versions: {pb} vs {pc}")
    for side, doc in (("base", base), ("current", cur)):
        if doc.get("environment", {}).get("git", {}).get("dirty"):
            warnings.append(f"the {side} results were measured with uncommitted changes")
        load = (doc.get("settings") or {}).get("load_average")
        cpus = doc.get("environment", {}).get("machine", {}).get("cpus")
        paired = (base.get("settings") or {}).get("session") == (cur.get("settings") or {}).get("session")
        if load and cpus and load[1] > cpus and not paired:
            warnings.append(f"the {side} run shared a busy machine (1-minute load average up to {load[1]:g} on "
                            f"{cpus} CPUs): other jobs' load is in its times; `benchmark.py ab` cancels it")
    return warnings


def report_comparison(base: dict, cur: dict, args, title: str) -> int:
    """Print (and optionally write as markdown) the comparison; the exit status of ``compare``."""
    verdicts = compare_results(base, cur, args.metric, args.alpha, args.threshold)
    warnings = comparison_warnings(base, cur)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if not any(v.paired for v in verdicts):
        print("note: two separate runs, each as steady as the machine (and in a VM, its host) was while it ran; "
              "`benchmark.py ab` pairs the samples so that load cancels", file=sys.stderr)
    print(text_table(verdict_rows(verdicts), HEADER))
    for line in unmatched(verdicts):
        print(line)
    print(summary_line(verdicts))
    if args.md:
        write_text_atomic(Path(args.md), markdown(verdicts, warnings, title, args.alpha, getattr(args, "md_extra", "")))
    regressions = [v for v in verdicts if v.verdict == "regression"]
    if args.charts:
        import report_charts
        written = report_charts.distribution_chart(verdicts, args.charts)
        print(f"chart: {', '.join(map(str, written))}")
    return 1 if regressions and not args.no_fail else 0


# ----------------------------------------------------------------------------------------------------
# Commands


def resolve_data(path: str | None) -> tuple[str, dict]:
    """The documents every worker trains on (default: names.txt) and their digest for the record."""
    if path is None:
        from microgpt.data import default_dataset
        path = str(default_dataset())
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data {path} is not a file")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return str(p.resolve()), {"path": str(p.resolve()), "sha256": digest}


def matrix_for(args) -> tuple[str, dict, list[Case], list[dict]]:
    name = args.matrix or ("quick" if args.quick else "default")
    settings, cases, left_out = load_matrix(name, Path(args.matrix_file))
    if args.engines:
        wanted = args.engines.split(",")
        unknown = sorted(set(wanted) - {c.engine for c in cases})
        if unknown:
            raise UserError(f"--engines: {', '.join(unknown)} not in matrix {name!r}")
        cases = [c for c in cases if c.engine in wanted]
    isa = getattr(args, "isa", None)
    if isa and isa.strip().lower() != "auto":
        if not any(c.engine == "c" for c in cases):
            raise UserError(f"--isa picks the kernels of the c engine, and matrix {name!r} has no c case here")
        from train_fast import parse_isas
        isas = parse_isas(isa)
        cases = [replace(c, isa=i) for c in cases for i in (isas if c.engine == "c" else [None])]
    for key in ("rounds", "samples"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise UserError(f"--{key} must be an integer >= 1 (got {value})")
            settings[key] = value
    if not cases:
        raise UserError(f"matrix {name!r} has no cases")
    return name, settings, cases, left_out


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    name, settings, cases, left_out = matrix_for(args)
    data, data_info = resolve_data(args.data)
    started = time.perf_counter()
    side = measure([Side("head", REPO)], cases, settings, data, log=None if args.quiet else log_stderr)["head"]
    doc = results_document(side, cases, settings, data_info, name, left_out)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.output or f"out/bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json_atomic(out, doc)
    print_results(doc)
    load = doc["settings"]["load_average"]
    print(f"results: {out} ({doc['seconds']:.0f} s" + (f"; load average {load[0]:g}-{load[1]:g})" if load else ")"))
    return 0


def print_results(doc: dict) -> None:
    rows = [[r["id"], r.get("isa") or "-", f"{r['ms_per_step']:.4g}", f"{r['cpu_ms_per_step']:.4g}",
             f"{r['tokens_per_s']:,.0f}", f"{r['gflops']:.3g}", str(len(r["samples_ms"]))] for r in doc["results"]]
    print(text_table(rows, ["benchmark", "isa", "ms/step", "cpu ms/step", "tokens/s", "GFLOP/s", "samples"]))
    for s in doc["skipped"]:
        print(f"skipped {s['id']}: {s['reason']}")


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


def interleaved(sides: list[Side], args, log) -> tuple[dict, dict, str]:
    """Measure every side interleaved; the results documents of the first two sides and the matrix name."""
    name, settings, cases, left_out = matrix_for(args)
    data, data_info = resolve_data(args.data)
    measured = measure(sides, cases, settings, data, log=log)
    docs = [results_document(measured[s.name], cases, settings, data_info, name, left_out, s.root) for s in sides]
    return docs[0], docs[1], name


def cmd_ab(args) -> int:
    log = None if args.quiet else log_stderr
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    rev = found.stdout.strip() if found.returncode == 0 else ""
    if not rev:
        raise UserError(f"--base {args.base!r} is not a commit in this repository")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="microgpt-ab-") as tmp:
        worktree = Path(tmp) / "base"
        git(["worktree", "add", "--detach", str(worktree), rev])
        try:
            if not (worktree / "benchmark.py").exists():
                raise UserError(f"the base revision {args.base} ({rev[:12]}) has no benchmark.py to run")
            quiet = log or (lambda m: None)
            if args.build_head:
                build_extensions(REPO, quiet)
            if args.rebuild or not reuse_extensions(worktree, rev):
                build_extensions(worktree, quiet)
            else:
                quiet("extension sources are unchanged: the base reuses this checkout's builds")
            base, head, _ = interleaved([Side("base", worktree), Side("head", REPO)], args, log)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
    write_json_atomic(out / "base.json", base)
    write_json_atomic(out / "head.json", head)
    print(f"results: {out / 'base.json'}, {out / 'head.json'}")
    args.md = args.md or str(out / "comparison.md")
    args.charts = args.charts or str(out / "distributions")
    args.md_extra = f"Base `{rev[:12]}` ({args.base}), head `{(head['environment']['git']['commit'] or '?')[:12]}`" \
                    f"{' (dirty)' if head['environment']['git']['dirty'] else ''}; measured interleaved on one machine."
    return report_comparison(base, head, args, f"Benchmark: head vs {args.base}")


def history_entry(doc: dict) -> dict:
    env = doc.get("environment", {})
    return {"created": doc.get("created"), "commit": env.get("git", {}).get("commit"),
            "dirty": env.get("git", {}).get("dirty"), "machine": env.get("machine", {}).get("model"),
            "matrix": doc.get("matrix"),
            "benchmarks": {r["id"]: {k: r.get(k) for k in ("engine", "ms_per_step", "cpu_ms_per_step", "tokens_per_s",
                                                          "gflops")} for r in doc["results"]}}


def load_history(path: Path) -> dict:
    if not path.exists():
        return {"schema": HISTORY_SCHEMA, "entries": []}
    history = read_json(path, "history file")
    if not isinstance(history, dict) or history.get("schema") != HISTORY_SCHEMA or not isinstance(
            history.get("entries"), list):
        raise UserError(f"{path} is not a benchmark history file (schema {HISTORY_SCHEMA})")
    return history


def cmd_update_baseline(args) -> int:
    if args.results:
        doc = load_results(args.results)
        if doc.get("matrix") == "pytest-benchmark":
            raise UserError("the baseline holds benchmark.py results, not pytest-benchmark's")
    else:
        cmd_run(args)           # writes args.output (a temporary file, see parse_args), then we read it back
        doc = load_results(args.output)
        os.unlink(args.output)
    if not doc["results"]:
        raise UserError("refusing to write a baseline without results")
    baseline, history_path = Path(args.baseline), Path(args.history)
    history = load_history(history_path)
    history["entries"] = (history["entries"] + [history_entry(doc)])[-HISTORY_LIMIT:]
    write_json_atomic(baseline, doc)
    write_json_atomic(history_path, history)
    print(f"baseline: {baseline} ({len(doc['results'])} benchmarks); history: {history_path} "
          f"({len(history['entries'])} entries)")
    return 0


def cmd_report(args) -> int:
    import report_charts

    cur = load_results(args.results)
    out = Path(args.out)
    sections = [f"# Benchmark report\n\n{len(cur['results'])} benchmarks from `{args.results}` "
                f"({cur.get('created')}, matrix {cur.get('matrix')}, "
                f"{cur.get('environment', {}).get('machine', {}).get('model')}).\n"]

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
            for threads in sorted({r["threads"] for r in records}):     # each against its own roofs
                rows = [roofline.analyse(dict(r), ceilings) for r in records if r["threads"] == threads]
                stem = out / ("roofline" if threads == 1 else f"roofline-{threads}-threads")
                chart(f"Roofline, {threads} thread{'s' * (threads > 1)}",
                      report_charts.roofline_chart(ceilings, rows, stem))
    if args.base:
        base = load_results(args.base)
        verdicts = compare_results(base, cur, args.metric, args.alpha, args.threshold)
        chart("Base vs current, every sample", report_charts.distribution_chart(verdicts, out / "distributions"))
        sections.append(markdown(verdicts, comparison_warnings(base, cur), "Comparison", args.alpha))
    history_path = Path(args.history)
    if history_path.exists():
        entries = load_history(history_path)["entries"]
        if len(entries) >= 2:
            chart("Trend over baselines", report_charts.trend_chart(entries, out / "trend"))
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
    logs = []
    for engine in engines:
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
    return logs


# ----------------------------------------------------------------------------------------------------
# main


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    def matrix_flags(q):
        q.add_argument("--quick", action="store_true", help="the quick matrix (< 60 s)")
        q.add_argument("--matrix", help="a named matrix of --matrix-file (default: default, or quick)")
        q.add_argument("--matrix-file", default=str(MATRIX), help=f"matrix definitions (default: {MATRIX.relative_to(REPO)})")
        q.add_argument("--engines", help="only these engines (comma-separated)")
        q.add_argument("--rounds", type=int, help="worker processes per engine and side (default: the matrix's)")
        q.add_argument("--samples", type=int, help="samples per process and benchmark (default: the matrix's)")
        q.add_argument("--data", help="documents to train on (default: names.txt)")
        q.add_argument("--quiet", action="store_true", help="no progress lines")

    def stats_flags(q):
        q.add_argument("--metric", default="auto", help="auto (CPU time for one-thread benchmarks, else wall), cpu or wall")
        q.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help=f"rank-test significance (default {DEFAULT_ALPHA})")
        q.add_argument("--threshold", action="append", default=[], metavar="[PATTERN=]FRACTION",
                       help=f"effect floor, default {DEFAULT_THRESHOLD}; with PATTERN (fnmatch on the id) for some benchmarks")

    def gate_flags(q):
        stats_flags(q)
        q.add_argument("--md", help="also write the comparison as markdown here (for a PR comment)")
        q.add_argument("--charts", help="also draw the sample distributions to this path stem (.svg and .png)")
        q.add_argument("--no-fail", action="store_true", help="exit 0 even when there is a regression")

    q = sub.add_parser("run", help="measure the benchmark matrix")
    matrix_flags(q)
    q.add_argument("--isa", default="auto",
                   help="the c engine's instruction sets, comma-separated: auto (the best; ids unchanged), all, or "
                        "names such as avx512,avx2,sse,neon,generic (ids c[NAME] ...)")
    q.add_argument("-o", "--output", help="results JSON (default: out/bench-<time>.json)")
    q = sub.add_parser("compare", help="compare two results files (ours or pytest-benchmark's)")
    q.add_argument("base")
    q.add_argument("current")
    gate_flags(q)
    q = sub.add_parser("ab", help="build --base in a worktree, measure it and the head interleaved, compare")
    q.add_argument("--base", required=True, help="base revision (branch, tag or commit)")
    q.add_argument("--out", default="out/ab", help="directory for base.json, head.json, comparison.md, charts")
    q.add_argument("--build-head", action="store_true", help="also rebuild this checkout's extensions first")
    q.add_argument("--rebuild", action="store_true",
                   help="build the base's extensions even when their sources equal the head's")
    matrix_flags(q)
    gate_flags(q)
    q = sub.add_parser("update-baseline", help="replace the checked-in baseline and append it to the history")
    q.add_argument("results", nargs="?", help="a results file (default: run the matrix now)")
    q.add_argument("--baseline", default=str(BASELINE), help=f"default {BASELINE.relative_to(REPO)}")
    q.add_argument("--history", default=str(HISTORY), help=f"default {HISTORY.relative_to(REPO)}")
    matrix_flags(q)
    q = sub.add_parser("report", help="markdown report with charts")
    q.add_argument("results")
    q.add_argument("--base", help="a base results file: add the comparison and its sample distributions")
    q.add_argument("--out", default="out/report", help="output directory (default out/report)")
    q.add_argument("--history", default=str(HISTORY), help="baseline history for the trend chart")
    q.add_argument("--loss-log", action="append", metavar="JSON", help="a --loss-log of a trainer (repeatable)")
    q.add_argument("--loss-steps", type=int, default=0, help="train each engine this many steps for the loss chart")
    q.add_argument("--data", help="documents for --loss-steps (default: names.txt)")
    q.add_argument("--no-roofline", action="store_true", help="skip the roofline (it may measure the machine first)")
    stats_flags(q)
    sub.add_parser("worker")            # internal: one process of ``measure``
    args = p.parse_args(argv)
    if args.command == "update-baseline" and not args.results:
        args.output = str(Path(tempfile.gettempdir()) / f"microgpt-baseline-{os.getpid()}.json")
    if getattr(args, "loss_steps", 0) < 0:
        raise UserError(f"--loss-steps must be >= 0 (got {args.loss_steps})")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.command == "worker":
            worker()
            return 0
        return {"run": cmd_run, "compare": cmd_compare, "ab": cmd_ab, "update-baseline": cmd_update_baseline,
                "report": cmd_report}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

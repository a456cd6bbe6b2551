"""The one timing harness every measurement in the lab goes through (benchmark.py, roofline.py, notes).

Fair timing means: every engine trains on the same batches (real names, one fixed order); the first
steps, which include compilation, tracing and cache warm-up, are timed apart as ``warmup_s``; then
several independent samples of ``k`` consecutive steps each are timed with ``perf_counter_ns`` and all
samples are kept, so statistics downstream can use the spread, not just a mean. Each sample also records
the process's CPU time: on a machine shared with other jobs, wall time includes the time the OS gave
the cores to someone else, CPU time does not, so a one-thread benchmark's CPU time is the steadier
measure of the code's own speed (benchmark.py gates on it). Engines return the loss
as a Python float, which forces asynchronous frameworks (JAX, CUDA, MLX) to finish before the clock stops.
An engine that offers ``train_steps(batches, lrs)`` (several steps per call, e.g. the fused C rung) is
timed through it, which is how it is meant to be driven.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from microgpt.config import ModelConfig, TrainConfig
from microgpt.params import init_params

LR = 1e-3  # a fixed small rate: timing must not depend on the schedule


@dataclass
class Timing:
    engine: str
    config: dict
    batch_size: int
    dtype: str
    threads: int
    steps_per_sample: int
    samples_ms: list[float]                 # milliseconds per step, one value per sample
    warmup_s: float                         # the first ``warmup`` steps, compile/jit time included
    doc_lengths: list[list[int]] = field(default_factory=list)   # predictions per document, per timed step
    cpu_samples_ms: list[float] = field(default_factory=list)   # process CPU milliseconds per step, per sample
    isa: str | None = None                  # the instruction set of an engine that picks one (the c engine)

    @property
    def ms_per_step(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def cpu_ms_per_step(self) -> float:
        return statistics.median(self.cpu_samples_ms)

    @property
    def tokens_per_step(self) -> float:
        return sum(map(sum, self.doc_lengths)) / len(self.doc_lengths)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / (self.ms_per_step / 1e3)

    @property
    def label(self) -> str:
        """The engine's name in tables: ``c[avx2]`` for an engine that ran a chosen instruction set."""
        return engine_label(self.engine, self.isa)

    def to_dict(self) -> dict:
        """Every field (``isa`` only for engines that have one) and the medians."""
        d = asdict(self)
        if d["isa"] is None:
            del d["isa"]
        return {**d, "ms_per_step": self.ms_per_step, "cpu_ms_per_step": self.cpu_ms_per_step,
                "tokens_per_step": self.tokens_per_step, "tokens_per_s": self.tokens_per_s}


def engine_label(engine: str, isa: str | None = None) -> str:
    """'c', 'avx2' -> 'c[avx2]'; an engine without an instruction set keeps its name."""
    return f"{engine}[{isa}]" if isa else engine


def model_dict(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("n_embd", "n_layer", "n_head", "block_size", "vocab_size", "mlp_act")}


class EngineTimer:
    """One engine, warmed up and ready to be timed sample by sample.

    ``time_engine`` takes all its samples in a row; benchmark.py's A/B mode instead alternates samples of
    two processes (base and head), so it drives this object one sample at a time. Every sample continues
    the same fixed batch order, so two timers given the same ``steps`` per sample time the same batches.
    """

    def __init__(self, engine_cls, cfg: ModelConfig, docs: list[list[int]], batch_size: int = 1,
                 dtype: str = "float64", threads: int = 1, seed: int = 0, isa: str | None = None):
        # ``isa`` goes only to an engine asked for one (the c engine); None lets it pick its best
        self.engine = engine_cls(cfg, TrainConfig(batch_size=batch_size, num_steps=10**9), init_params(cfg, seed),
                                 dtype=dtype, threads=threads, **({"isa": isa} if isa else {}))
        self.isa = getattr(self.engine, "isa", None)    # what runs, whether chosen or picked
        self.cfg, self.docs, self.batch_size, self.dtype, self.threads = cfg, docs, batch_size, dtype, threads
        self.cursor = 0
        engine = self.engine
        self.run = getattr(engine, "train_steps", None) or (lambda batches, lrs: [engine.train_step(b, lr)
                                                                                  for b, lr in zip(batches, lrs)])

    def next_batches(self, k: int) -> list[list[list[int]]]:
        out = []
        for _ in range(k):
            out.append([self.docs[(self.cursor + j) % len(self.docs)] for j in range(self.batch_size)])
            self.cursor += self.batch_size
        return out

    def warm_up(self, steps: int) -> float:
        """Run the first ``steps`` steps (compilation, tracing, caches); their seconds."""
        t0 = time.perf_counter_ns()
        self.run(self.next_batches(steps), [LR] * steps)
        return (time.perf_counter_ns() - t0) / 1e9

    def steps_for(self, min_sample_s: float, max_steps: int = 1000) -> int:
        """Steps per sample so that a sample lasts about ``min_sample_s``, from one timed calibration step."""
        t0 = time.perf_counter_ns()
        self.run(self.next_batches(1), [LR])
        per_step_s = max((time.perf_counter_ns() - t0) / 1e9, 1e-7)
        return max(1, min(max_steps, round(min_sample_s / per_step_s)))

    def sample(self, k: int) -> tuple[float, float, list[list[int]]]:
        """Time ``k`` steps: wall and CPU milliseconds per step, and the predictions of each step's documents."""
        batches = self.next_batches(k)
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        self.run(batches, [LR] * k)
        t1, c1 = time.perf_counter_ns(), time.process_time_ns()
        return (t1 - t0) / 1e6 / k, (c1 - c0) / 1e6 / k, [[len(d) - 1 for d in b] for b in batches]


def time_engine(engine_cls, cfg: ModelConfig, docs: list[list[int]], batch_size: int = 1, dtype: str = "float64",
                threads: int = 1, warmup: int = 2, samples: int = 5, min_sample_s: float = 0.05,
                max_steps_per_sample: int = 1000, seed: int = 0, isa: str | None = None) -> Timing:
    """Time ``engine_cls`` training ``cfg`` on ``docs`` (wrapped token lists), ``batch_size`` per step.

    Steps per sample are chosen after the warm-up so each sample lasts about ``min_sample_s`` (at least one
    step): fast engines get many steps per sample, and timer resolution never dominates. ``isa`` picks the
    instruction set of an engine that has a choice (None: its best); the Timing records the one that ran.
    """
    timer = EngineTimer(engine_cls, cfg, docs, batch_size, dtype, threads, seed, isa)
    warmup_s = timer.warm_up(warmup)
    k = timer.steps_for(min_sample_s, max_steps_per_sample)
    samples_ms, cpu_ms, lengths = [], [], []
    for _ in range(samples):
        wall, cpu, step_lengths = timer.sample(k)
        samples_ms.append(wall)
        cpu_ms.append(cpu)
        lengths += step_lengths
    return Timing(timer.engine.name, model_dict(cfg), batch_size, dtype, threads, k, samples_ms, warmup_s, lengths,
                  cpu_ms, timer.isa)

"""Data-parallel training on torch.distributed, launched by torchrun: one batch, N processes, one update.

    torchrun --nproc-per-node 2 train.py --engine c --batch-size 32
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node 8 train.py --engine torch ...

The launcher's environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are the
interface: ``launch_from_env`` reads them, and a run started without any of them is an ordinary
one-process run. Each step, every rank computes the same batch of B documents (the data order is a pure
function of (seed, step)), takes its contiguous share of them (``share``: the first B mod N ranks get
one more; a rank may get none), computes the gradient of its share's mean loss into the engine's flat
gradient buffer, scales it by its share of the batch (n_r / B), and the buffers are summed by one
all-reduce -- on the engine's own memory, a tensor over it, not a copy. The sum is the gradient of the
batch's mean loss, so clipping (on the whole, summed gradient) and Adam then run as in one process, on
every rank: parameters and Adam moments stay identical everywhere without ever being sent. Rank 0 alone
prints, validates, saves and samples; a checkpoint holds no trace of N, so any N resumes it.

Backends: gloo when the engine computes on the CPU, NCCL on CUDA (each rank on GPU LOCAL_RANK). The
process group has a timeout (--dist-timeout): a rank that dies or stops answering makes the others end
with one line naming what failed, not hang. An engine takes part by providing, besides the contract of
engines/__init__.py: ``grads`` (its flat gradient buffer: a torch tensor, or an object with the buffer
protocol, which is wrapped without a copy), ``compute_grads(docs) -> float`` (the docs' mean loss, its
gradient left in ``grads``, no update) and ``apply_adam(lr)`` (step + 1: clip, then Adam from ``grads``).

torch is imported only when a data-parallel run starts: this module is imported by every trainer.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from microgpt import UserError

#: the variables torchrun sets for every worker; a run with any of them set must have all of them right
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: seconds a rank waits for the others (joining, or in a collective) before it gives up: rank 0's
#: validation runs while the others wait at the next step's all-reduce, so this bounds a validation too
DEFAULT_TIMEOUT_S = 300.0


class PeerLost(UserError):
    """Another rank died or stopped answering: one line, exit status 1 (the input was not at fault)."""

    status = 1


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_env(environ=None) -> Launch | None:
    """The launcher's variables, or None when none is set (a plain run); a UserError naming every
    variable that is missing or wrong when some are set."""
    env = os.environ if environ is None else environ
    given = {name: env[name] for name in LAUNCHER_VARS if env.get(name, "") != ""}
    if not given:
        return None
    problems = [f"{name} is not set" for name in LAUNCHER_VARS if name not in given]
    numbers = {}
    for name, low in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("MASTER_PORT", 1)):
        if name in given:
            try:
                numbers[name] = int(given[name])
            except ValueError:
                numbers[name] = None
            if numbers[name] is None or numbers[name] < low or (name == "MASTER_PORT" and numbers[name] > 65535):
                problems.append(f"{name}={given[name]!r} is not an integer "
                                + ("in [1, 65535]" if name == "MASTER_PORT" else f">= {low}"))
                numbers[name] = None
    if numbers.get("RANK") is not None and numbers.get("WORLD_SIZE") and numbers["RANK"] >= numbers["WORLD_SIZE"]:
        problems.append(f"RANK={numbers['RANK']} is not below WORLD_SIZE={numbers['WORLD_SIZE']}")
    if problems:
        raise UserError(f"launcher variables ({', '.join(LAUNCHER_VARS)}, as torchrun sets them) are wrong: "
                        f"{'; '.join(problems)}; start data-parallel runs with torchrun --nproc-per-node N "
                        f"train.py ..., or unset them for one process")
    return Launch(numbers["RANK"], numbers["WORLD_SIZE"], numbers["LOCAL_RANK"], given["MASTER_ADDR"],
                  numbers["MASTER_PORT"])


def share(n_docs: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of a batch of ``n_docs``: the first n_docs mod N ranks get one more."""
    base, extra = divmod(n_docs, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def share_sizes(n_docs: int, world_size: int) -> str:
    """How many documents the ranks get, for the startup line: "16", or "1-2" when they differ."""
    low, high = n_docs // world_size, -(-n_docs // world_size)
    return f"{low}" if low == high else f"{low}-{high}"


def supports(engine_cls) -> bool:
    """Whether an engine can train data-parallel (it computes gradients and applies Adam as two calls)."""
    return all(callable(getattr(engine_cls, name, None)) for name in ("compute_grads", "apply_adam"))


@dataclass
class StepTimes:
    """Seconds of one data-parallel step, or summed over steps, by part, on this rank."""
    compute: float = 0.0      # forward and backward of this rank's share, and scaling it
    allreduce: float = 0.0    # the gradient's (and the loss's) all-reduce: waiting for the slowest rank included
    update: float = 0.0       # clipping and Adam

    @property
    def total(self) -> float:
        return self.compute + self.allreduce + self.update

    def add(self, other: StepTimes) -> None:
        self.compute += other.compute
        self.allreduce += other.allreduce
        self.update += other.update


def prepare_device(launch: Launch, device: str) -> str:
    """``device`` for this rank: a bare "cuda" becomes the GPU of LOCAL_RANK, made current (NCCL's need)."""
    if device == "cuda":
        import torch
        if torch.cuda.is_available():
            torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
            return f"cuda:{torch.cuda.current_device()}"
    return device


class DataParallel:
    """An engine trained by ``launch.world_size`` processes: ``train_step`` computes this rank's share and
    returns the whole batch's loss; everything else is the engine's (``__getattr__``).

    ``last`` holds the StepTimes of the latest step and ``totals`` their sum over ``steps`` steps (for
    benchmarks: wall seconds measured on this rank; a CUDA engine is synchronised before each reading).
    """

    def __init__(self, engine, launch: Launch, timeout_s: float = DEFAULT_TIMEOUT_S):
        try:
            import torch
            import torch.distributed as dist
        except ImportError as e:
            raise UserError(f"data-parallel training needs torch.distributed ({e}): pip install -e '.[torch]'") from None
        if not supports(type(engine)):
            raise UserError(f"--engine {engine.name} cannot train data-parallel: it has no compute_grads / apply_adam "
                            f"(the torch and c engines have)")
        self.engine, self.launch, self.timeout_s = engine, launch, timeout_s
        self._torch, self._dist = torch, dist
        grads = engine.grads
        if not torch.is_tensor(grads):   # an array shared with C: a tensor over the same memory
            view = memoryview(grads)
            grads = torch.frombuffer(grads, dtype={"d": torch.float64, "f": torch.float32}[view.format])
        self.grads = grads
        self.cuda = grads.is_cuda
        self.backend = "nccl" if self.cuda else "gloo"
        self.steps, self.last, self.totals = 0, StepTimes(), StepTimes()
        # a rank's own request to stop (the trainer's Ctrl-C flag), and whether any rank had made one by the last
        # step's all-reduce: every rank then stops after the same step (a rank stopping alone would leave the
        # others waiting for it in the next all-reduce)
        self.stop_requested, self.stop_agreed = (lambda: False), False
        if not dist.is_initialized():
            from datetime import timedelta
            try:
                dist.init_process_group(self.backend, init_method="env://", rank=launch.rank,
                                        world_size=launch.world_size, timeout=timedelta(seconds=timeout_s))
            except (RuntimeError, ValueError) as e:
                raise PeerLost(f"rank {launch.rank} of {launch.world_size}: could not form the process group "
                               f"with the other ranks at {launch.master_addr}:{launch.master_port} within "
                               f"--dist-timeout {timeout_s:g} s ({_first_line(e)})") from None

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _failed(self, what: str, e: Exception) -> PeerLost:
        return PeerLost(f"rank {self.launch.rank} of {self.launch.world_size}: {what} failed after {self.steps} "
                        f"step{'s' * (self.steps != 1)} of this run: another rank died or did not answer within "
                        f"--dist-timeout {self.timeout_s:g} s ({_first_line(e)})")

    def _sync(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()

    def train_step(self, docs: list[list[int]], lr: float) -> float:
        torch, dist = self._torch, self._dist
        part = docs[share(len(docs), self.launch.rank, self.launch.world_size)]
        t0 = time.perf_counter()
        if part:
            loss = self.engine.compute_grads(part)
            if len(part) != len(docs):
                weight = len(part) / len(docs)   # each document weighs 1/B in the batch's mean loss
                self.grads.mul_(weight)
                loss *= weight
        else:
            self.grads.zero_()
            loss = 0.0
        self._sync()
        t1 = time.perf_counter()
        # the loss travels beside the gradient, and with it whether any rank has been asked to stop (Ctrl-C)
        total = torch.tensor([loss, float(bool(self.stop_requested()))], dtype=torch.float64, device=self.grads.device)
        try:
            pending = dist.all_reduce(total, async_op=True)
            dist.all_reduce(self.grads)
            pending.wait()
        except RuntimeError as e:
            raise self._failed("the all-reduce", e) from None
        loss, stops = total.tolist()
        self.stop_agreed = stops > 0
        self._sync()
        t2 = time.perf_counter()
        self.engine.apply_adam(lr)
        self._sync()
        t3 = time.perf_counter()
        self.last = StepTimes(t1 - t0, t2 - t1, t3 - t2)
        self.totals.add(self.last)
        self.steps += 1
        return loss

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. its decision to stop early after a validation)."""
        value = self._torch.tensor([int(bool(flag))], device=self.grads.device)
        try:
            self._dist.broadcast(value, src=0)
        except RuntimeError as e:
            raise self._failed("the broadcast of rank 0's decision", e) from None
        return bool(value.item())

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def _first_line(e: Exception) -> str:
    """The backend's own reason, without the C++ source location gloo puts first."""
    text = str(e).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text[0]) if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."

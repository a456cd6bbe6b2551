"""Data-parallel benchmarks: one case timed as N processes started by torchrun, driven like any other case.

``DistributedTimer`` stands where the gate's worker (benchmarks/gate/worker.py) keeps an EngineTimer for
a case with ``ranks`` > 1: it starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m benchmarks.distributed

and speaks to rank 0 over the pipe of torchrun's stdin and stdout in the gate's worker protocol
(WorkerProcess: hello, setup, then sample after sample, then quit); rank 0 hands every request to the other ranks (a broadcast over the
process group), so all ranks run the same steps. Each rank builds the case's engine on the gate's
documents in the gate's order (count.prepare's timer), wraps it in microgpt.distributed.DataParallel and
trains the same batches, each rank its share. A sample answers what EngineTimer.sample does -- rank 0's
wall milliseconds per step (every step ends in an all-reduce, so rank 0's clock is the step's), the CPU
milliseconds per step of all ranks together (like a multi-threaded process's CPU time) and the documents'
lengths -- and, per rank, the milliseconds per step of compute, all-reduce (waiting for the slowest rank
included) and update (DataParallel.last). So ``run``, ``ab`` and ``compare`` treat a distributed case
like any other.

``python -m benchmarks.distributed --engine c --config C128L4H4 --batch-size 32 --ranks 1,2`` times a
case directly: every rank count in turn, its step time, scaling efficiency against the first, and the
all-reduce's share of each step (the speed table of issue 14's note).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from microgpt import UserError

#: seconds any rank waits for another (forming the group, a collective): a dead rank ends the case, no hang
TIMEOUT_S = 120


# --- the ranks (run by torchrun) ---------------------------------------------------------------------------

def serve() -> None:
    """Every rank: build the case on setup, time samples, quit. Rank 0 reads the requests from stdin and
    answers on stdout; the others receive them by broadcast and send their timings to rank 0."""
    import torch
    import torch.distributed as dist

    from benchmarks.gate.count import prepare
    from microgpt.distributed import DataParallel, launch_from_env

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                   # what the engines print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    launch = launch_from_env()
    if launch is None:
        raise UserError("python -m benchmarks.distributed is a torchrun worker; to time a case run it with --engine")
    # the group exists before the first request travels over it; DataParallel then uses it as it is (gloo carries
    # the requests, NCCL a CUDA engine's gradients)
    from datetime import timedelta
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            timeout=timedelta(seconds=TIMEOUT_S))
    dp = timer = None
    requests = sys.stdin if launch.is_main else None
    while True:
        if launch.is_main:
            line = requests.readline()
            req = json.loads(line) if line.strip() else {"cmd": "quit"}
        else:
            req = None
        box = [req]
        dist.broadcast_object_list(box, src=0)
        req = box[0]
        answer = None
        if req["cmd"] == "hello":
            from benchmarks.gate.worker import PROTOCOL
            answer = {"protocol": PROTOCOL}
        elif req["cmd"] == "setup":
            case = req["case"]
            try:
                timer, vocab_size, _ = prepare({**case, "ranks": 1}, req["data"], 0)
                dp = DataParallel(timer.engine, launch, timeout_s=TIMEOUT_S)
                timer.run = lambda batches, lrs: [dp.train_step(b, lr) for b, lr in zip(batches, lrs)]
                warmup_s = timer.warm_up(req["warmup"])
                steps = [timer.steps_for(req["min_sample_s"])]
                dist.broadcast_object_list(steps, src=0)        # rank 0's calibration: all ranks take as many
                answer = {"vocab_size": vocab_size, "warmup_s": warmup_s, "steps": steps[0], "isa": timer.isa,
                          "ranks": launch.world_size, "backend": dp.backend}
            except (ValueError, TypeError, NotImplementedError, UserError) as e:
                answer = {"skipped": f"{type(e).__name__}: {e}"}
        elif req["cmd"] == "sample":
            before = (dp.totals.compute, dp.totals.allreduce, dp.totals.update)
            wall_ms, cpu_ms, lengths = timer.sample(req["steps"])
            parts = [(now - then) * 1e3 / req["steps"] for now, then in
                     zip((dp.totals.compute, dp.totals.allreduce, dp.totals.update), before)]
            gathered = [None] * launch.world_size if launch.is_main else None
            dist.gather_object({"cpu_ms": cpu_ms, "parts_ms": parts}, gathered, dst=0)
            if launch.is_main:
                answer = {"wall_ms": wall_ms, "cpu_ms": sum(g["cpu_ms"] for g in gathered), "step_lengths": lengths,
                          "rank_parts_ms": [g["parts_ms"] for g in gathered]}
        elif req["cmd"] == "quit":
            if dp is not None:
                dp.close()
            return
        if launch.is_main and answer is not None:
            replies.write(json.dumps(answer) + "\n")
            replies.flush()
        if "skipped" in (answer or {}):
            return


# --- the gate's side of the pipe ----------------------------------------------------------------------------

class DistributedTimer:
    """A case trained by ``case['ranks']`` torchrun processes, with EngineTimer's interface for the gate's worker:
    ``isa``, ``steps_for``, ``sample`` (whose extra ``last_parts`` holds each rank's compute, all-reduce and
    update milliseconds per step) and ``close``. Rank 0 speaks the gate's worker protocol (WorkerProcess)."""

    def __init__(self, case: dict, data: str, warmup: int, min_sample_s: float):
        from benchmarks.gate import REPO
        from benchmarks.gate.worker import Side, WorkerProcess

        self.ranks = case["ranks"]
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.ranks}",
                "-m", "benchmarks.distributed"]
        self.process = WorkerProcess(Side(f"{self.ranks} torchrun ranks'", REPO, argv))
        answer = self.process.call({"cmd": "setup", "case": case, "data": data, "warmup": warmup,
                                    "min_sample_s": min_sample_s})
        if "skipped" in answer:
            self.close()
            raise UserError(answer["skipped"])
        self.isa, self.steps = answer.get("isa"), answer["steps"]
        self.warmup_s, self.vocab_size = answer["warmup_s"], answer["vocab_size"]
        self.last_parts: list[list[float]] = []

    def steps_for(self, min_sample_s: float, max_steps: int = 1000) -> int:
        return self.steps                  # calibrated by rank 0 during setup

    def sample(self, k: int) -> tuple[float, float, list[list[int]]]:
        answer = self.process.call({"cmd": "sample", "steps": k})
        self.last_parts = answer["rank_parts_ms"]
        return answer["wall_ms"], answer["cpu_ms"], answer["step_lengths"]

    def close(self) -> None:
        self.process.close()


# --- timing a case directly -------------------------------------------------------------------------------------

def time_case(case: dict, data: str, warmup: int, samples: int, min_sample_s: float) -> dict:
    """``samples`` samples of ``case`` on ``case['ranks']`` processes: medians of the step's wall and CPU time and
    of each rank's compute, all-reduce and update per step."""
    timer = DistributedTimer(case, data, warmup, min_sample_s)
    try:
        walls, cpus, parts = [], [], []
        for _ in range(samples):
            wall, cpu, _ = timer.sample(timer.steps)
            walls.append(wall)
            cpus.append(cpu)
            parts.append(timer.last_parts)
    finally:
        timer.close()
    per_rank = [[statistics.median(p[r][i] for p in parts) for i in range(3)] for r in range(case["ranks"])]
    return {"ms_per_step": statistics.median(walls), "cpu_ms_per_step": statistics.median(cpus),
            "samples_ms": walls, "steps_per_sample": timer.steps, "rank_parts_ms": per_rank}


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("RANK") is not None and argv is None and len(sys.argv) == 1:
        serve()                                     # started by torchrun (DistributedTimer)
        return 0
    from benchmarks.gate.matrix import parse_config, resolve_data
    from microgpt import cli

    p = cli.OneLineErrorParser(description="time one data-parallel case on 1, 2, ... torchrun processes")
    p.add_argument("--engine", required=True, help="torch or c (engines with compute_grads / apply_adam)")
    p.add_argument("--config", default="C128L4H4", help="C<n_embd>L<n_layer>H<n_head>[T<block>] (default: medium)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--threads", type=int, default=1, help="threads per rank")
    p.add_argument("--ranks", default="1,2", help="comma-separated process counts, timed in turn (default 1,2)")
    p.add_argument("--samples", type=int, default=7)
    p.add_argument("--min-sample-s", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data", help="documents (default: names.txt)")
    args = p.parse_args(argv)
    data, _ = resolve_data(args.data)
    config = dict(zip(("n_embd", "n_layer", "n_head", "block_size", "mlp_act"), parse_config(args.config)))
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        print(f"timing {args.engine} {args.config} b{args.batch_size} on {ranks} rank(s) x {args.threads} thread(s)",
              file=sys.stderr, flush=True)
        case = {"id": "direct", "engine": args.engine, "config": config, "batch_size": args.batch_size,
                "dtype": args.dtype, "threads": args.threads, "ranks": ranks}
        rows.append((ranks, time_case(case, data, args.warmup, args.samples, args.min_sample_s)))
    base = rows[0][1]["ms_per_step"] * rows[0][0]
    for ranks, r in rows:
        parts = " | ".join(f"rank {i}: compute {c:.3g} all-reduce {a:.3g} update {u:.3g} ms ({100 * a / (c + a + u):.0f}% "
                           "all-reduce)" for i, (c, a, u) in enumerate(r["rank_parts_ms"]))
        print(f"{ranks} rank(s): {r['ms_per_step']:.3g} ms/step wall (rank 0; samples {min(r['samples_ms']):.3g}.."
              f"{max(r['samples_ms']):.3g}), CPU {r['cpu_ms_per_step']:.3g} ms/step all ranks; efficiency vs "
              f"{rows[0][0]} rank(s) {100 * base / (ranks * r['ms_per_step']):.0f}%; {parts}")
    return 0


if __name__ == "__main__":
    from microgpt import cli
    sys.exit(cli.run_main(main))

"""Data-parallel training (microgpt/distributed.py): N ranks x B/N documents against one process x B.

Ranks run as real processes over loopback (gloo, 127.0.0.1, a free port), started with the launcher's
environment variables as torchrun sets them; one test goes through torchrun itself (python -m
torch.distributed.run), the command users type. Tiny model, few steps: every multi-process run here is a
few seconds, and each has a timeout, so a hang fails the test instead of stalling CI.
"""

import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
import engines
from microgpt import UserError, checkpoint, trainer
from microgpt.distributed import Launch, launch_from_env, share, share_sizes

torch = pytest.importorskip("torch", reason="data-parallel training runs on torch.distributed: pip install -e '.[torch]'")

TINY = ("--n-embd", 16, "--n-layer", 1, "--n-head", 4, "--block-size", 8, "--eval-every", 0, "--eval-docs", 20,
        "--num-samples", 0, "--dtype", "float64")
TIMEOUT = 120   # seconds for any one run of the ranks: far above the few they take, far below a stuck CI job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict:
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def start_ranks(tmp_path, world_size: int, args, name: str, ranks=None) -> list[subprocess.Popen]:
    """train.py processes as torchrun would start them (all ``world_size`` ranks, or those in ``ranks``);
    output in tmp_path/name.<rank>.{out,err}."""
    port, procs = free_port(), []
    for rank in range(world_size) if ranks is None else ranks:
        out, err = (open(tmp_path / f"{name}.{rank}.{kind}", "w") for kind in ("out", "err"))
        procs.append(subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=REPO, stdout=out, stderr=err,
                                      stdin=subprocess.DEVNULL, env=rank_env(rank, world_size, port)))
        out.close()
        err.close()
    return procs


def wait_all(procs, timeout=TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    finally:
        kill_all(procs)


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()   # SIGKILL ends a stopped process too
            p.wait()


def train(tmp_path, world_size: int, args, name: str) -> list[str]:
    """Runs the ranks to the end (world_size 0: one process, this one: torch is imported once for all)
    with a --loss-log tmp_path/name.json; rank 0's stdout, line by line."""
    args = [*args, "--loss-log", tmp_path / f"{name}.json"]
    if world_size == 0:
        out = io.StringIO()
        trainer.run(list(map(str, args)), engines, "c", "", out=out)
        return out.getvalue().splitlines()
    codes = wait_all(start_ranks(tmp_path, world_size, args, name))
    errs = [(tmp_path / f"{name}.{rank}.err").read_text() for rank in range(world_size)]
    assert codes == [0] * world_size, errs
    outs = [(tmp_path / f"{name}.{rank}.out").read_text() for rank in range(world_size)]
    assert all(out == "" for out in outs[1:]), "only rank 0 prints"
    return outs[0].splitlines()


def relative(a, b) -> float:
    """|a - b| / |b| in the Euclidean norm: how far a vector of numbers is from another, as a whole."""
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / sum(y * y for y in b))


def assert_same_run(tmp_path, got: str, want: str, rel=1e-12):
    """Two runs (checkpoint and loss log tmp_path/<name>.ckpt/.json) with every training loss equal to
    ``rel`` and the parameters and both Adam moments at the end equal to ``rel`` as vectors."""
    got_losses, want_losses = (json.loads((tmp_path / f"{name}.json").read_text())["train"] for name in (got, want))
    assert got_losses == pytest.approx(want_losses, rel=rel)
    got, want = (checkpoint.load(tmp_path / f"{name}.ckpt") for name in (got, want))
    assert got.step == want.step and got.adam.t == want.adam.t
    for what, a, b in (("params", got.params.data, want.params.data), ("adam m", got.adam.m, want.adam.m),
                       ("adam v", got.adam.v, want.adam.v)):
        assert relative(a, b) <= rel, f"{what}: relative difference {relative(a, b):.2e} > {rel:g}"


# ---- the split, the launcher's variables ----

@pytest.mark.parametrize("n_docs, world_size", [(32, 2), (3, 2), (1, 2), (7, 3), (2, 5)])
def test_shares_are_contiguous_cover_the_batch_and_differ_by_at_most_one(n_docs, world_size):
    parts = [share(n_docs, rank, world_size) for rank in range(world_size)]
    assert [i for p in parts for i in range(n_docs)[p]] == list(range(n_docs))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert share_sizes(n_docs, world_size) == "-".join(sorted({str(min(sizes)), str(max(sizes))}, key=int))


def test_launcher_variables():
    good = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_from_env({}) is None
    assert launch_from_env({"PATH": "/bin", "RANK": ""}) is None
    assert launch_from_env(good) == Launch(1, 2, 1, "127.0.0.1", 29500)
    for bad, message in [({"MASTER_PORT": None}, "MASTER_PORT is not set"), ({"RANK": "2"}, "RANK=2 is not below"),
                         ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
                         ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' is not an integer in \\[1, 65535\\]"),
                         ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'")]:
        env = {k: v for k, v in {**good, **bad}.items() if v is not None}
        with pytest.raises(UserError, match=message):
            launch_from_env(env)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK is not set; MASTER_ADDR is not set; MASTER_PORT is not set"),
    ({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=3 is not below WORLD_SIZE=2"),
])
def test_wrong_launcher_variables_are_one_line_and_exit_2(names_file, env, message):
    r = subprocess.run([sys.executable, "train.py", "--engine", "c", "--data", names_file, *map(str, TINY)], cwd=REPO,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stderr.startswith("error: launcher variables")


def test_an_engine_without_the_two_halves_is_refused_under_torchrun(names_file):
    env = rank_env(0, 2, free_port())
    r = subprocess.run([sys.executable, "train.py", "--engine", "numpy", "--data", names_file, *map(str, TINY)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot train data-parallel" in r.stderr, r.stderr


# ---- one rank in this process: the buffer is shared, the step is the engine's own ----

@pytest.mark.parametrize("engine_name", ["c", "torch"])
def test_one_rank_all_reduces_the_engines_own_buffer_and_steps_as_the_engine(engine_name, monkeypatch):
    import engines
    from conftest import encode_names, make_setup, read_names
    from microgpt.config import TrainConfig
    from microgpt.distributed import DataParallel

    cfg, params = make_setup()
    tcfg = TrainConfig(grad_clip=0.5)
    docs = encode_names(read_names(12), cfg.block_size)
    cls = engines.load_engine(engine_name)
    plain, parallel_engine = cls(cfg, tcfg, params.copy()), cls(cfg, tcfg, params.copy())
    for name, value in rank_env(0, 1, free_port()).items():
        monkeypatch.setenv(name, value)   # init_process_group reads them (env://: torchrun's own store if any)
    dp = DataParallel(parallel_engine, launch_from_env(), timeout_s=30)
    try:
        grads = parallel_engine.grads
        address = grads.data_ptr() if torch.is_tensor(grads) else grads.buffer_info()[0]
        assert dp.grads.data_ptr() == address, "the all-reduce must run on the engine's buffer, not a copy"
        for i in range(0, 12, 4):
            assert dp.train_step(docs[i:i + 4], 0.01) == plain.train_step(docs[i:i + 4], 0.01)
            assert dp.last.total > 0 and dp.last.allreduce >= 0
        assert dp.steps == 3 and dp.export_params().data == plain.export_params().data
        assert not dp.stop_agreed
        dp.stop_requested = lambda: True     # a Ctrl-C on some rank travels with the next step's loss
        dp.train_step(docs[:4], 0.01)
        assert dp.stop_agreed
    finally:
        dp.close()


# ---- N ranks against one process ----

RANK_SCRIPT = """
import hashlib, json, sys
sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
import engines
from conftest import encode_names, make_setup, read_names
from microgpt import distributed
from microgpt.config import TrainConfig

cfg, params = make_setup()
docs = encode_names(read_names(40), cfg.block_size)
cls, tcfg = engines.load_engine({engine!r}), TrainConfig(grad_clip=0.5)
engine, alone = cls(cfg, tcfg, params.copy()), cls(cfg, tcfg, params.copy())
dp = distributed.DataParallel(engine, distributed.launch_from_env(), timeout_s=60)
losses = [dp.train_step(docs[i:i + 5], 0.01) for i in range(0, 40, 5)]
alone_losses = [alone.train_step(docs[i:i + 5], 0.01) for i in range(0, 40, 5)]   # one process, whole batches
state = {{name: [list(e.export_params().data), list(e.export_adam().m), list(e.export_adam().v)]
         for name, e in (("ranks", engine), ("alone", alone))}}
print(json.dumps({{"losses": losses, "alone_losses": alone_losses, "state": state, "t": engine.export_adam().t,
                  "parts": [dp.totals.compute, dp.totals.allreduce, dp.totals.update]}}))
dp.close()
"""


def test_every_rank_ends_with_the_same_parameters_and_adam_state(tmp_path):
    """Nothing but gradients is sent: after 8 steps of 5 documents, split unevenly (3 + 2: weights 3/5 and
    2/5), the ranks' parameters and both moments are the same bytes, they saw the same losses, and those
    equal one process's on the whole batches to 1e-12."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=str(REPO), engine="c"))
    port, procs = free_port(), []
    for rank in range(2):
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL, env=rank_env(rank, 2, port)))
    try:
        outs = [json.loads(p.communicate(timeout=TIMEOUT)[0]) for p in procs]
    finally:
        kill_all(procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0]["state"]["ranks"] == outs[1]["state"]["ranks"] and outs[0]["losses"] == outs[1]["losses"]
    assert outs[0]["t"] == outs[1]["t"] == 8
    assert outs[0]["losses"] == pytest.approx(outs[0]["alone_losses"], rel=1e-12)
    for what, got, want in zip(("params", "adam m", "adam v"), outs[0]["state"]["ranks"], outs[0]["state"]["alone"]):
        assert relative(got, want) <= 1e-12, f"{what}: relative difference {relative(got, want):.2e}"
    assert all(part >= 0 for out in outs for part in out["parts"]) and all(out["parts"][0] > 0 for out in outs)


@pytest.mark.parametrize("engine_name", ["c", "torch"])
def test_two_ranks_equal_one_process_over_50_steps(tmp_path, names_file, engine_name):
    """float64, gradient clipping on (it must see the summed gradient's norm): the same losses, parameters
    and Adam moments to 1e-12."""
    args = ["--engine", engine_name, "--data", names_file, *TINY, "--num-steps", 50, "--batch-size", 4,
            "--grad-clip", 0.5]
    train(tmp_path, 0, [*args, "--save", tmp_path / "one.ckpt"], "one")
    two = train(tmp_path, 2, [*args, "--save", tmp_path / "two.ckpt"], "two")
    assert sum("data-parallel: 2 ranks (gloo), 2 documents each" in line for line in two) == 1
    assert_same_run(tmp_path, "two", "one")


def test_a_rank_with_no_documents_adds_zeros(tmp_path, names_file):
    """B = 1 over 2 ranks: rank 1's share is empty, and the run is one process's (the uneven split: above)."""
    args = ["--engine", "torch", "--data", names_file, *TINY, "--num-steps", 6, "--batch-size", 1]
    train(tmp_path, 0, [*args, "--save", tmp_path / "one.ckpt"], "one")
    train(tmp_path, 2, [*args, "--save", tmp_path / "two.ckpt"], "two")
    assert_same_run(tmp_path, "two", "one")


def test_a_checkpoint_resumes_with_any_number_of_ranks(tmp_path, names_file):
    """2 ranks (through torchrun itself) pause at step 3, one process resumes; one process pauses, 2 ranks
    resume: both end where one uninterrupted process does."""
    args = ["--engine", "c", "--data", names_file, *TINY, "--num-steps", 6, "--batch-size", 4, "--grad-clip", 0.5]
    train(tmp_path, 0, [*args, "--save", tmp_path / "whole.ckpt"], "whole")

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "train.py", *map(str, [*args, "--stop-at", 3, "--save", tmp_path / "a.ckpt", "--loss-log",
                                       tmp_path / "a0.json"])]
    r = subprocess.run(torchrun, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                       env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("engine c (") == 1 and r.stdout.count("step 3/6") == 1, "rank 0 alone prints"
    assert checkpoint.load(tmp_path / "a.ckpt").step == 3
    train(tmp_path, 0, [*args, "--resume", tmp_path / "a.ckpt", "--save", tmp_path / "a.ckpt"], "a")
    assert_resumed(tmp_path, "a0", "a", "whole")

    train(tmp_path, 0, [*args, "--stop-at", 3, "--save", tmp_path / "b.ckpt"], "b0")
    train(tmp_path, 2, [*args, "--resume", tmp_path / "b.ckpt", "--save", tmp_path / "b.ckpt"], "b")
    assert_resumed(tmp_path, "b0", "b", "whole")


def assert_resumed(tmp_path, first: str, second: str, whole: str) -> None:
    """The losses of a paused run and of its resumption, end to end, are those of the whole run."""
    first_losses = json.loads((tmp_path / f"{first}.json").read_text())["train"]
    log = json.loads((tmp_path / f"{second}.json").read_text())
    assert log["start_step"] == len(first_losses) == 3
    log["train"] = first_losses + log["train"]
    (tmp_path / f"{second}.json").write_text(json.dumps(log))
    assert_same_run(tmp_path, second, whole)


# ---- failures end in one line, not a hang ----

def wait_for_step_2(out, rank0) -> None:
    """Until rank 0 (--log-every 1) has printed its second step: the ranks are training."""
    deadline = time.monotonic() + TIMEOUT
    while not re.search(r"step +2/", out.read_text()) and rank0.poll() is None:
        assert time.monotonic() < deadline, "rank 0 never got to its second step"
        time.sleep(0.1)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_rank_that_dies_or_hangs_ends_the_others_with_one_line(tmp_path, names_file, how):
    """Killed, its sockets close and rank 0 fails at once; stopped, rank 0 gives up after --dist-timeout."""
    args = ["--engine", "c", "--data", names_file, *TINY, "--num-steps", 10 ** 6, "--batch-size", 2,
            "--log-every", 1, "--dist-timeout", 10]
    procs = start_ranks(tmp_path, 2, args, "dies")
    try:
        wait_for_step_2(tmp_path / "dies.0.out", procs[0])
        procs[1].send_signal(how)
        t = time.monotonic()
        code = procs[0].wait(timeout=60)
        waited = time.monotonic() - t
    finally:
        kill_all(procs)
    err = (tmp_path / "dies.0.err").read_text()
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: the all-reduce failed after "), err
    assert "another rank died or did not answer within --dist-timeout 10 s" in lines[0]
    assert waited < 60


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, names_file):
    """SIGINT reaches rank 1 only: rank 0 hears of it in the next all-reduce, both stop after that step,
    rank 0 saves a checkpoint of that step, and both exit 130."""
    ckpt = tmp_path / "run.ckpt"
    args = ["--engine", "c", "--data", names_file, *TINY, "--num-steps", 10 ** 6, "--batch-size", 2,
            "--log-every", 1, "--save", ckpt, "--dist-timeout", 30]
    procs = start_ranks(tmp_path, 2, args, "int")
    try:
        out = tmp_path / "int.0.out"
        wait_for_step_2(out, procs[0])
        procs[1].send_signal(signal.SIGINT)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        kill_all(procs)
    assert codes == [130, 130], [(tmp_path / f"int.{r}.err").read_text() for r in (0, 1)]
    stopped = re.search(r"interrupted after step (\d+); checkpoint saved", out.read_text())
    assert stopped and checkpoint.load(ckpt).step == int(stopped.group(1)) >= 2
    assert (tmp_path / "int.1.out").read_text() == ""


def test_a_rank_that_never_joins_times_out_with_one_line(tmp_path, names_file):
    args = ["--engine", "c", "--data", names_file, *TINY, "--num-steps", 5, "--dist-timeout", 3]
    codes = wait_all(start_ranks(tmp_path, 2, args, "alone", ranks=[0]))
    err = (tmp_path / "alone.0.err").read_text()
    assert codes == [1], err
    assert err.count("\nerror: ") + err.startswith("error: ") == 1 and "Traceback" not in err
    assert "could not form the process group" in err and "--dist-timeout 3 s" in err

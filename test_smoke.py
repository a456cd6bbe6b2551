"""Fast end-to-end smoke test: train a few steps from the command line, save, resume, sample.

Run it alone after installing to check the lab works at all: ``python test_smoke.py`` (the reference
trainer end to end, then two steps of every engine this install can load), ``python test_smoke.py
--quick`` (the reference trainer only), or ``python -m pytest test_smoke.py`` (the quick one under pytest).
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
NAMES = "emma\nolivia\nava\nisabella\nsophia\ncharlotte\nmia\namelia\nharper\nevelyn\n"
TINY = ["--num-steps", "6", "--n-embd", "8", "--n-head", "2"]


def train_py(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], capture_output=True, text=True)


def check(ok: bool, what: str, r: subprocess.CompletedProcess) -> None:
    if not ok:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AssertionError(f"{what} failed (exit status {r.returncode}): {last[0]}")


def smoke(tmp: Path, all_engines: bool = False, log=lambda line: None) -> None:
    """Train, save, resume and sample with train.py; with ``all_engines``, two steps of every engine this
    install can load too. An AssertionError says, in one line, what failed."""
    data, ckpt = tmp / "names.txt", tmp / "smoke.ckpt"
    data.write_text(NAMES)
    common = ["--data", data, *TINY, "--num-samples", "2"]
    r = train_py(*common, "--stop-at", "3", "--save", ckpt)
    check(r.returncode == 0 and "step 3/6" in r.stdout, "train 3 of 6 steps and save", r)
    r = train_py("--resume", ckpt, "--save", ckpt, "--num-samples", "2")
    check(r.returncode == 0 and "step 6/6" in r.stdout and "samples:" in r.stdout, "resume to step 6 and sample", r)
    r = train_py("--sample-from", ckpt, "--num-samples", "3")
    check(r.returncode == 0 and len(r.stdout.split()) == 3, "sample from the checkpoint", r)
    log("ok   python: train, save, resume, sample")
    if not all_engines:
        return
    import engines
    from microgpt import UserError
    for name in engines.ENGINES:
        if name == "python":
            continue
        try:
            engines.load_engine(name)
        except UserError as e:
            log(f"skip {name}: {e}")
            continue
        r = train_py("--data", data, *TINY, "--num-steps", "2", "--engine", name, "--num-samples", "1")
        check(r.returncode == 0 and "step 2/2" in r.stdout, f"two steps of --engine {name}", r)
        log(f"ok   {name}: two steps and a sample")


def test_train_save_resume_sample(tmp_path):
    smoke(tmp_path)


def main(argv: list[str] | None = None) -> int:
    from microgpt import cli
    p = cli.OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the reference trainer only, not every engine")
    args = p.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="microgpt-smoke-") as tmp:
        try:
            smoke(Path(tmp), all_engines=not args.quick, log=print)
        except AssertionError as e:
            print(f"smoke test FAILED: {e}", file=sys.stderr)
            return 1
    print(f"smoke test passed in {time.perf_counter() - started:.1f} s" + (" (--quick: python only)" * args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())

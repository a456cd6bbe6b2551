"""The C extensions on CPUs this machine is not: the whole Python process under qemu-x86_64 (user mode),
whose CPUID is another CPU model's, so that a machine with AVX-512 shows what a user without it gets.

- AMD Zen 3 (qemu's EPYC-Milan): AVX2 and FMA, no AVX-512 -- the CPU of the hosted CI runners. fastops,
  its int8 inference and the roofline's probes must pick AVX2 on their own, run without an instruction
  the CPU lacks (SIGILL), and compute the very numbers that ``isa="avx2"`` computes on this machine.
- Intel Nehalem: SSE4.2 without FMA (as on Sandy Bridge, or the Atom-class cores of cheap laptops): the
  portable C kernels only, the same numbers as ``isa="generic"`` here.

qemu's TCG emulates each instruction with IEEE arithmetic (fused multiply-adds included), so the losses
and weights agree to the bit. It does not emulate AVX-512, so this works on any x86 machine with qemu-user
(``.ci/run`` installs it). Speed under emulation means nothing and is not looked at.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, encode_names, make_setup, read_names

QEMU = "qemu-x86_64"
fastops = pytest.importorskip("fastops", reason="build the C extension first: pip install -e .")
pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which(QEMU) is None,
                                reason=f"needs an x86-64 machine with {QEMU} (Debian: apt-get install qemu-user)")

# Trains a small model a few steps with one fastops.GPT per (dtype, threads, batch), samples through
# InferenceGPT, and prints what ran and what came out. argv[1]: the isa to ask for ("auto" under qemu).
WORKER = r"""
import hashlib, json, sys
from array import array
import fastops
import microgpt._ceilings as ceilings
from microgpt.machine import ISAS

job = json.load(sys.stdin)
isa = None if sys.argv[1] == "auto" else sys.argv[1]
cfg, params, docs = job["cfg"], job["params"], job["docs"]
shape = (cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["block_size"])
out = {"isas": fastops.available_isas(), "int8_isas": fastops.InferenceGPT.available_isas(True),
       "probes": sorted(name for name in ISAS if ceilings.isa_supported(name)),
       "memory_isa": ceilings.memory_isa(), "runs": []}
for dtype, threads, batch, clip in (("d", 1, 1, 0.0), ("d", 1, 16, 0.0), ("d", 2, 16, 1.0), ("f", 1, 16, 0.0)):
    bufs = [array(dtype, params)] + [array(dtype, bytes(array(dtype).itemsize * len(params))) for _ in range(3)]
    model = fastops.GPT(*bufs, *shape, grad_clip=clip, threads=threads, isa=isa)
    batches = [docs[i * batch:(i + 1) * batch] for i in range(3)]
    losses = model.train_steps(batches, [1e-2, 8e-3, 6e-3])
    out["runs"].append({"dtype": dtype, "threads": threads, "batch": batch, "isa": model.isa,
                        "losses": [float.hex(x) for x in losses],
                        "params": hashlib.sha256(bytes(bufs[0])).hexdigest()})
for int8 in (True, False):
    inference = fastops.InferenceGPT(array("d", params), *shape, int8=int8, isa=isa)
    out["runs"].append({"int8": int8, "isa": inference.isa,
                        "logits": [float.hex(x) for x in inference.logits(docs[0][:5])]})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def job():
    cfg, params = make_setup(32, 2, 4, 16)
    return json.dumps({"cfg": {"vocab_size": cfg.vocab_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
                               "n_head": cfg.n_head, "block_size": cfg.block_size},
                       "params": list(params.data), "docs": encode_names(read_names(48), cfg.block_size)})


def run_worker(job: str, isa: str, cpu: str | None = None) -> dict:
    command = [sys.executable, "-c", WORKER, isa]
    if cpu:
        command = [QEMU, "-cpu", cpu] + command
    r = subprocess.run(command, input=job, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(command[:3])}: rc {r.returncode}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


@pytest.mark.parametrize("cpu, isas, probes, memory_isa, same_as", [
    ("EPYC-Milan-v1", ["avx2", "sse", "generic"], ["avx2", "scalar", "sse"], "avx2", "avx2"),
    ("Nehalem", ["generic"], [], "scalar", "generic"),   # every FMA probe refused; memory in plain C
])
def test_an_emulated_cpu_picks_its_own_kernels_and_computes_the_forced_ones_numbers(job, cpu, isas, probes,
                                                                                     memory_isa, same_as):
    emulated = run_worker(job, "auto", cpu)
    assert emulated["isas"] == isas
    assert emulated["int8_isas"] == isas          # no VNNI: the int8 kernels of the same instruction sets
    assert emulated["probes"] == probes
    assert emulated["memory_isa"] == memory_isa
    assert {run["isa"] for run in emulated["runs"]} == {same_as}, emulated["runs"]

    if same_as not in fastops.available_isas():
        pytest.skip(f"this machine cannot run {same_as} natively to compare with")
    native = run_worker(job, same_as)
    assert native["runs"] == emulated["runs"]
    # the runs differ from one another (a worker that trained nothing would agree with itself too)
    assert len({run["losses"][-1] for run in native["runs"] if "losses" in run}) == 4


def test_the_roofline_on_a_cpu_without_fma_says_why_in_one_line(tmp_path):
    """Its compute roofs are FMA probes: on Nehalem there is none to measure, and the user is told so."""
    r = subprocess.run([QEMU, "-cpu", "Nehalem", sys.executable, "roofline.py", "--engines", "c"], cwd=REPO,
                       env={**os.environ, "MICROGPT_CACHE": str(tmp_path)}, capture_output=True, text=True,
                       timeout=600)
    lines = [line for line in r.stderr.splitlines() if not line.startswith(f"{QEMU}: warning")]
    assert r.returncode == 2 and [line for line in lines if line.startswith("error: ")] == lines[-1:], r.stderr
    assert "FMA" in lines[-1] and "Traceback" not in r.stderr
    assert not (tmp_path / "ceilings.json").exists()   # nothing half-measured is cached

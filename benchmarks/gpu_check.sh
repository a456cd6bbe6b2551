#!/usr/bin/env bash
# The lab's one prepared GPU check, for a session lent a GPU machine (device tool: a bare NVIDIA H200 with CUDA
# PyTorch, JAX with CUDA, pytest, numpy and Cython, no network). In one run of at most ~8 minutes it
#   1. installs the project without dependencies (its C extensions built there; the frameworks are the image's),
#   2. checks torch, torch-compile and jax on the GPU against train.py's reference engine: float64 to 1e-9,
#      float32 to 1e-4 (losses of every step, then every weight),
#   3. measures the GPU's roofs the lab's way (a large matrix product per dtype: peak FLOP/s; a large copy:
#      memory bandwidth),
#   4. times every GPU engine x standard config x batch 1/32/256 x float32/float64, and the larger shape xl,
#      through microgpt/timing.py (first step with compilation apart from the steady state),
# and writes everything to $OUT/gpu_check.json (the device tool brings $OUT back). A time budget
# (GPU_CHECK_BUDGET_S, default 360 s from the checks' start) skips the remaining timings, marked as skipped, rather
# than overrun. Exit 1 if any equivalence check fails.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (device run: cd repo root first)
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: the same code on the CPU with tiny sizes (CI runs this)
#
# --dry-run skips the install (CI has installed the project; an in-place rebuild would replace extensions that
# other processes load), computes on the CPU, and keeps to tiny sizes so it runs in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: gpu_check.sh takes only --dry-run (got $arg)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

if [ "$dry_run" = 0 ]; then
    start=$(date +%s)
    # --no-build-isolation: the image's setuptools and Cython, no network to fetch others
    pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 ||
        echo "warning: pip install failed (see install.log); running from the source tree" >&2
    echo "install: $(( $(date +%s) - start )) s" >&2
fi

DRY_RUN=$dry_run OUT="$OUT" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python - <<'PY'
import json, os, platform, random, sys, time, traceback
from pathlib import Path

from microgpt.config import STANDARD_CONFIGS, ModelConfig, TrainConfig, lr_at
from microgpt.params import init_params
from microgpt.timing import time_engine
from engines import load_engine
from train import PythonEngine

dry = os.environ["DRY_RUN"] == "1"
out = Path(os.environ["OUT"]) / "gpu_check.json"
budget_s = float(os.environ.get("GPU_CHECK_BUDGET_S", 180 if dry else 360))
t_start = time.monotonic()
device = "cpu" if dry else "cuda"
engines = ["torch", "jax"] if dry else ["torch", "torch-compile", "jax"]
configs = ["tiny"] if dry else ["tiny", "small", "medium", "xl"]
batches = [1, 4] if dry else [1, 32, 256]
dtypes = ["float32"] if dry else ["float32", "float64"]   # dry: equivalence covers float64
import torch

result = {"dry_run": dry, "device": device, "python": sys.version.split()[0], "platform": platform.platform(),
          "torch": torch.__version__, "equivalence": [], "roofline": {}, "timings": [], "skipped": []}
if torch.cuda.is_available():
    result["gpu"] = torch.cuda.get_device_name(0)


def save():
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def names(n):
    """Real names when MICROGPT_DATA (or the cache) has them, else deterministic name-like strings."""
    try:
        from microgpt.data import default_dataset, load_documents
        return load_documents([str(default_dataset(timeout=1))])[:n]
    except Exception:   # noqa: BLE001  (no network there: any failure falls back)
        rng = random.Random(0)
        return ["".join(rng.choice("bcdfghjklmnprstvz" if i % 2 == 0 else "aeiouy") for i in range(rng.randint(3, 9)))
                for _ in range(n)]


def encode(docs, block):
    return [([26] + [ord(c) - 97 for c in d.lower() if "a" <= c <= "z"] + [26])[:block + 1] for d in docs]


# --- 2. equivalence with train.py ---------------------------------------------------------------------------
cfg = ModelConfig(vocab_size=27, n_embd=16, n_layer=2, n_head=4, block_size=8).validate()
tcfg = TrainConfig(num_steps=8, batch_size=4, grad_clip=1.0).validate()
docs = encode(names(64), cfg.block_size)
batches_eq = [docs[4 * s:4 * s + 4] for s in range(tcfg.num_steps)]
ref = PythonEngine(cfg, tcfg, init_params(cfg, 1))
want = [ref.train_step(b, lr_at(s, tcfg)) for s, b in enumerate(batches_eq)]
want_params = ref.export_params().data
scale = max(map(abs, want_params))
ok = True
for name in engines:
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-4)):
        row = {"engine": name, "dtype": dtype, "tolerance": tol}
        try:
            eng = load_engine(name)(cfg, tcfg, init_params(cfg, 1), dtype=dtype, device=device)
            got = [eng.train_step(b, lr_at(s, tcfg)) for s, b in enumerate(batches_eq)]
            row["loss_rel_err"] = max(abs(g - w) / abs(w) for g, w in zip(got, want))
            row["param_rel_err"] = max(abs(a - b) for a, b in zip(eng.export_params().data, want_params)) / scale
            row["ok"] = row["loss_rel_err"] <= tol and row["param_rel_err"] <= tol
        except Exception as e:   # noqa: BLE001  (record and go on: the other engines' results still matter)
            row.update(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=3))
        ok &= row["ok"]
        result["equivalence"].append(row)
        print(f"equivalence {name} {dtype}: {'ok' if row['ok'] else 'FAILED'} {row.get('loss_rel_err', row.get('error'))}",
              flush=True)
try:   # only now: the jax engine must be the first to start JAX (it sets XLA's thread count)
    import jax
    result["jax"], result["jax_devices"] = jax.__version__, [str(d) for d in jax.devices()]
except Exception as e:   # noqa: BLE001  (JAX failing to start is a finding, not a crash)
    result["jax"] = f"unavailable: {e}"
save()

# --- 3. roofline: peak matrix FLOP/s and memory bandwidth, measured -------------------------------------------
def timed(fn, reps):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


n, words = (256, 1 << 20) if dry else (8192, 1 << 28)
for dtype in ("float32", "float64"):
    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    for tf32 in ((False, True) if dtype == "float32" and device == "cuda" else (False,)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        s = timed(lambda: a @ a, 3 if dry else 20)
        result["roofline"][f"matmul_{dtype}{'_tf32' if tf32 else ''}_tflops"] = 2 * n ** 3 / s / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
src = torch.empty(words, dtype=torch.float32, device=device)
dst = torch.empty_like(src)
s = timed(lambda: dst.copy_(src), 5 if dry else 50)
result["roofline"]["copy_gb_per_s"] = 2 * 4 * words / s / 1e9   # read + write
print("roofline:", result["roofline"], flush=True)
save()

# --- 4. timings ---------------------------------------------------------------------------------------------
texts = names(20000)
for dtype in dtypes:   # float32 first: if the budget runs out, float64 (slower on most GPUs) is what is left
    for cname in configs:
        n_embd, n_layer, n_head, block = STANDARD_CONFIGS[cname]
        mcfg = ModelConfig(vocab_size=27, n_embd=n_embd, n_layer=n_layer, n_head=n_head, block_size=block).validate()
        enc = encode(texts, block)
        for batch in batches:
            for name in engines:
                what = {"engine": name, "config_name": cname, "batch_size": batch, "dtype": dtype}
                if time.monotonic() - t_start > budget_s:
                    result["skipped"].append({**what, "why": f"time budget {budget_s:g} s spent"})
                    continue
                try:
                    cls = load_engine(name)
                    cls_on = lambda *a, **k: cls(*a, device=device, **k)   # noqa: E731
                    cls_on.__name__ = name
                    probe = time_engine(cls_on, mcfg, enc, batch, dtype, warmup=1, samples=1, min_sample_s=0.0,
                                        max_steps_per_sample=1)
                    t = time_engine(cls_on, mcfg, enc, batch, dtype, warmup=2, samples=3,
                                    min_sample_s=0.01 if dry else 0.2)
                    row = {**t.to_dict(), **what, "device": device, "first_step_ms": probe.warmup_s * 1e3}
                    result["timings"].append(row)
                    print(f"{name} {cname} b{batch} {dtype}: first {row['first_step_ms']:.0f} ms, "
                          f"steady {t.ms_per_step:.3f} ms/step, {t.tokens_per_s:,.0f} tokens/s", flush=True)
                except Exception as e:   # noqa: BLE001
                    result["skipped"].append({**what, "why": f"{type(e).__name__}: {e}"})
                save()
result["ok"], result["seconds"] = ok, time.monotonic() - t_start
save()
print(f"wrote {out} ({len(result['timings'])} timings, {len(result['skipped'])} skipped, "
      f"equivalence {'ok' if ok else 'FAILED'})")
sys.exit(0 if ok else 1)
PY

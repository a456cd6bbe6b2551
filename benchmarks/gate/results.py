"""Results files: ours (written by ``run`` and ``ab``), pytest-benchmark's JSON, and the baseline history."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from microgpt import UserError, files
from microgpt.cli import read_json  # noqa: F401  (the gate's modules read JSON through results)
from microgpt.files import write_atomic

from benchmarks.gate import REPO
from benchmarks.gate.environment import environment

if TYPE_CHECKING:
    from benchmarks.gate.matrix import Case

SCHEMA = "microgpt-lab/benchmark/1"
HISTORY_SCHEMA = "microgpt-lab/benchmark-history/1"
HISTORY_LIMIT = 500


def summarise(case: Case, acc: dict) -> dict:
    """A result record: every sample, plus medians, tokens/s and GFLOP/s (FLOPs from microgpt/flops.py)."""
    from microgpt.config import ModelConfig
    from microgpt.flops import step_cost

    cfg = ModelConfig(vocab_size=acc["vocab_size"], **case.config_dict())
    steps = sum(acc["step_lengths"].values())
    tokens = sum(sum(lengths) * n for lengths, n in acc["step_lengths"].items()) / steps
    flops = sum(step_cost(cfg, list(lengths), 8 if case.dtype == "float64" else 4).flops * n
                for lengths, n in acc["step_lengths"].items()) / steps
    record = {"id": case.id, "engine": case.engine, "config": {**case.config_dict(), "vocab_size": cfg.vocab_size},
              "batch_size": case.batch_size, "dtype": case.dtype, "threads": case.threads,
              "samples_ms": acc["samples_ms"], "cpu_samples_ms": acc["cpu_samples_ms"],
              "sample_rounds": acc["sample_rounds"], "steps_per_sample": acc["steps_per_sample"],
              "warmup_s": acc["warmup_s"], "tokens_per_step": tokens, "flops_per_step": flops}
    if acc.get("instruction_samples"):          # counted, not timed (--metric instructions)
        record["instruction_samples"] = acc["instruction_samples"]
        record["instructions_per_step"] = statistics.median(acc["instruction_samples"])
    else:
        ms = statistics.median(acc["samples_ms"])
        record.update(ms_per_step=ms, cpu_ms_per_step=statistics.median(acc["cpu_samples_ms"]),
                      tokens_per_s=tokens / (ms / 1e3), gflops=flops / (ms / 1e3) / 1e9)
    if acc.get("isa"):
        record["isa"] = acc["isa"]              # the instruction set the c engine's kernels ran
    if case.threshold is not None:
        record["threshold"] = case.threshold
    if case.ranks > 1:
        record["ranks"] = case.ranks            # data parallel: this many torchrun processes of ``threads`` each
        if acc.get("rank_parts_ms"):            # per rank, the median ms per step of compute, all-reduce, update
            parts = acc["rank_parts_ms"]
            record["rank_parts_ms"] = [[statistics.median(s[r][i] for s in parts) for i in range(3)]
                                       for r in range(len(parts[0]))]
            record["allreduce_share"] = statistics.median(a / (c + a + u) for c, a, u in record["rank_parts_ms"])
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
        for key in ("cpu_samples_ms", "instruction_samples", "sample_runs"):
            if key in r and not _number_list(r[key]):
                raise UserError(f"{path}: result {i} ({r['id']}): '{key}' must be a list of numbers")
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


SAMPLE_LISTS = ("samples_ms", "cpu_samples_ms", "instruction_samples", "sample_rounds")
MEDIANS = {"ms_per_step": "samples_ms", "cpu_ms_per_step": "cpu_samples_ms", "instructions_per_step": "instruction_samples"}


def primary_samples(rec: dict) -> list[float]:
    """The samples a record's other per-sample lists (rounds, runs) are aligned with: times, or counts."""
    return rec.get("samples_ms") or rec.get("instruction_samples") or []


def merge_runs(docs: list[dict]) -> dict:
    """Several separate runs of one matrix as one results document: every record's samples concatenated,
    each labelled with its run ("sample_runs"), the medians over all of them; ``compare`` reads the runs
    apart again to measure the noise between them (compare.runs_of)."""
    if len(docs) == 1:
        return docs[0]
    merged = json.loads(json.dumps(docs[0]))
    by_id = [{r["id"]: r for r in d["results"]} for d in docs]
    kept = [r for r in merged["results"] if all(r["id"] in ids for ids in by_id)]
    for rec in kept:
        runs = [ids[rec["id"]] for ids in by_id]
        for key in SAMPLE_LISTS + ("steps_per_sample", "warmup_s"):
            if key in rec:
                rec[key] = [x for r in runs for x in r.get(key, [])]
        rec["sample_runs"] = [i for i, r in enumerate(runs) for _ in primary_samples(r)]
        for median_key, key in MEDIANS.items():
            if rec.get(key):
                rec[median_key] = statistics.median(rec[key])
    merged["results"] = kept
    merged["settings"]["sessions"] = [d["settings"].get("session") for d in docs]
    merged["settings"]["session"] = "+".join(map(str, merged["settings"]["sessions"]))
    merged["runs"] = [{"created": d.get("created"), "session": d["settings"].get("session"),
                       "load_average": d["settings"].get("load_average"), "commit": d["environment"]["git"]["commit"]}
                      for d in docs]
    return merged


def history_entries(doc: dict) -> list[dict]:
    """One compact history entry per run of a results document (medians per benchmark), keyed by the
    environment's fingerprint, so that ``compare`` can learn a machine's run-to-run noise from them."""
    env = doc.get("environment", {})
    runs = doc.get("runs") or [{"created": doc.get("created"), "session": (doc.get("settings") or {}).get("session")}]
    entries = []
    for i, run in enumerate(runs):
        benchmarks = {}
        for r in doc["results"]:
            labels = r.get("sample_runs") or [0] * len(primary_samples(r))
            b = {k: r.get(k) for k in ("engine", "tokens_per_s", "gflops")}
            for median_key, key in MEDIANS.items():
                own = [x for x, run_index in zip(r.get(key) or [], labels) if run_index == i]
                if own:
                    b[median_key] = statistics.median(own)
            benchmarks[r["id"]] = b
        entries.append({"created": run.get("created"), "session": run.get("session"),
                        "commit": env.get("git", {}).get("commit"), "dirty": env.get("git", {}).get("dirty"),
                        "machine": env.get("machine", {}).get("model"), "fingerprint": env.get("fingerprint"),
                        "matrix": doc.get("matrix"), "benchmarks": benchmarks})
    return entries


def load_history(path: Path) -> dict:
    if not path.exists():
        return {"schema": HISTORY_SCHEMA, "entries": []}
    history = read_json(path, "history file")
    if not isinstance(history, dict) or history.get("schema") != HISTORY_SCHEMA or not isinstance(
            history.get("entries"), list):
        raise UserError(f"{path} is not a benchmark history file (schema {HISTORY_SCHEMA})")
    return history


def print_results(doc: dict) -> None:
    counted = [r for r in doc["results"] if "instructions_per_step" in r]
    if counted:
        rows = [[r["id"], r.get("isa") or "-", f"{r['instructions_per_step']:,.0f}",
                 f"{r['instructions_per_step'] / r['tokens_per_step']:,.0f}", str(len(r["instruction_samples"]))]
                for r in counted]
        print(text_table(rows, ["benchmark", "isa (under valgrind)", "instructions/step", "per token", "processes"]))
    rows = [[r["id"], r.get("isa") or "-", f"{r['ms_per_step']:.4g}", f"{r['cpu_ms_per_step']:.4g}",
             f"{r['tokens_per_s']:,.0f}", f"{r['gflops']:.3g}", str(len(r["samples_ms"]))]
            for r in doc["results"] if "ms_per_step" in r]
    if rows:
        print(text_table(rows, ["benchmark", "isa", "ms/step", "cpu ms/step", "tokens/s", "GFLOP/s", "samples"]))
    for s in doc["skipped"]:
        print(f"skipped {s['id']}: {s['reason']}")


def text_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])

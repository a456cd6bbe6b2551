"""The benchmark matrix: benchmarks/matrix.json's groups expanded into cases, and the documents they train on."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from microgpt import UserError
from microgpt.cli import config_label

from benchmarks.gate import REPO
from benchmarks.gate.results import read_json

MATRIX = REPO / "benchmarks" / "matrix.json"
DTYPE_SHORT = {"float64": "f64", "float32": "f32"}


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
    ranks: int = 1                      # data-parallel processes (torchrun, benchmarks/distributed.py); 1: plain

    @property
    def id(self) -> str:
        engine = f"{self.engine}[{self.isa}]" if self.isa else self.engine
        ranks = f" r{self.ranks}" if self.ranks > 1 else ""
        return (f"{engine} {config_label(self.config)} b{self.batch_size} {DTYPE_SHORT[self.dtype]} "
                f"t{self.threads}{ranks}")

    def config_dict(self) -> dict:
        return dict(zip(("n_embd", "n_layer", "n_head", "block_size", "mlp_act"), self.config))


CONFIG_RE = re.compile(r"C(\d+)L(\d+)H(\d+)(?:T(\d+))?(?:-(relu2?))?$")


def parse_config(text: str) -> tuple:
    """'C16L1H4' -> (16, 1, 4, 16, 'relu2'); 'C32L2H4T8-relu' sets block size 8 and plain ReLU."""
    m = CONFIG_RE.match(text)
    if not m:
        raise UserError(f"bad config {text!r} in the matrix; write e.g. C16L1H4, C32L2H4T8 or C16L1H4-relu")
    n_embd, n_layer, n_head = map(int, m.group(1, 2, 3))
    return n_embd, n_layer, n_head, int(m.group(4) or 16), m.group(5) or "relu2"


GROUP_KEYS = {"engines", "exclude", "configs", "batch_sizes", "dtypes", "threads", "ranks", "threshold"}


def check_group(group, where: str) -> None:
    """One-line errors for a malformed group of the matrix file."""
    if not isinstance(group, dict):
        raise UserError(f"{where}: must be an object")
    unknown = sorted(set(group) - GROUP_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(GROUP_KEYS))})")
    positive = lambda xs: isinstance(xs, list) and xs and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                              for x in xs)
    for key in ("batch_sizes", "threads", "ranks"):
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
    settings = {k: spec.get(k, d) for k, d in (("rounds", 3), ("samples", 5), ("min_sample_s", 0.05), ("warmup", 2),
                                               ("count_steps", 4))}
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
                            for ranks in group.get("ranks", [1]):
                                case = Case(engine, config, batch, dtype, threads, group.get("threshold"),
                                            ranks=ranks)
                                if case.id not in seen:
                                    seen.add(case.id)
                                    cases.append(case)
    left_out = [{"engine": e, "reason": reason} for e, reason in spec.get("left_out", {}).items() if e in ENGINES]
    return settings, cases, left_out


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

"""Model, training and sampling configuration, with one-line validation errors.

Every engine reads the same three dataclasses. ``validate()`` rejects bad values with a message that
names the command-line flag and the allowed range, e.g. ``--n-head must divide --n-embd (64 % 3 != 0)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from microgpt import UserError

MLP_ACTIVATIONS = ("relu2", "relu")
#: RMSNorm's epsilon, x / sqrt(mean(x^2) + RMS_EPS): every engine normalises with this one (the C kernels
#: have it as a constant in fastops/common.h).
RMS_EPS = 1e-5
#: The lab's standard model sizes, (n_embd, n_layer, n_head, block_size), used by every benchmark,
#: the roofline and the notes: tiny is Karpathy's microgpt, medium the largest a pure-Python step survives;
#: large and xl are "as the model grows" (a pure-Python step takes many seconds to minutes on them).
STANDARD_CONFIGS = {"tiny": (16, 1, 4, 8), "small": (64, 2, 4, 16), "medium": (128, 4, 4, 32),
                    "large": (256, 4, 4, 32), "xl": (512, 4, 4, 32)}
#: The configs the benchmarks and the roofline run unless asked for others (large and xl are opt-in:
#: ``--configs large,xl``), so the default runs keep their length and meaning.
DEFAULT_CONFIGS = ("tiny", "small", "medium")
LR_SCHEDULES = ("linear", "cosine", "constant")

#: Each field's --help text; every CLI that takes a config field as a flag shows this one.
FLAG_HELP = {
    "vocab_size": "vocabulary size (set by the tokenizer)",
    "n_embd": "embedding width", "n_layer": "number of transformer blocks",
    "n_head": "attention heads; must divide --n-embd", "block_size": "maximum context length in tokens",
    "mlp_act": "MLP activation: relu2 (squared ReLU) or relu", "init_std": "std of the Gaussian initial weights",
    "num_steps": "optimizer steps", "batch_size": "documents per step (their losses are averaged)",
    "learning_rate": "peak learning rate", "lr_schedule": "linear, cosine (both decay to 0) or constant",
    "warmup_steps": "linear warmup steps before the schedule", "beta1": "Adam beta1", "beta2": "Adam beta2",
    "eps": "Adam epsilon", "grad_clip": "clip gradients to this global L2 norm; 0 disables",
    "seed": "seed of the initial weights, the data split and the data order",
    "val_fraction": "fraction of documents held out for validation",
    "eval_every": "validate every N steps; 0 only at the end",
    "eval_docs": "validation documents per evaluation; 0 means all",
    "patience": "stop after N evaluations without improvement; 0 never stops early",
    "num_samples": "names to sample at the end", "temperature": "sampling temperature (> 0)",
    "top_k": "sample among the k most likely tokens; 0 disables", "top_p": "nucleus sampling mass; 1 disables",
    "max_len": "longest sample in tokens; 0 means the block size", "prompt": "every sample starts with this text",
}


def flag_of(name: str) -> str:
    """A config field as its command-line flag: n_embd -> --n-embd."""
    return "--" + name.replace("_", "-")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _positive_int(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{flag_of(name)} must be an integer >= 1 (got {value!r})")


def _finite(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(isinstance(value, (int, float)) and math.isfinite(value),
                 f"{flag_of(name)} must be a finite number (got {value!r})")


class _Config:
    """Shared helpers: dict round-trip for checkpoints (unknown keys are an error, not ignored)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        _require(not unknown, f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg


@dataclass
class ModelConfig(_Config):
    """The transformer's shape. ``vocab_size`` comes from the tokenizer, the rest from flags."""

    vocab_size: int = 27
    n_embd: int = 16
    n_layer: int = 1
    n_head: int = 4
    block_size: int = 16
    mlp_act: str = "relu2"          # squared ReLU (default) or plain ReLU
    init_std: float = 0.02
    zero_init_proj: bool = True     # attn_wo and mlp_fc2 start at zero (residual branches start as identity)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> "ModelConfig":
        _positive_int(self, "n_embd", "n_layer", "n_head", "block_size")
        _require(isinstance(self.vocab_size, int) and self.vocab_size >= 2,
                 f"vocab size must be >= 2 (got {self.vocab_size!r}); is the dataset empty?")
        _require(self.n_embd % self.n_head == 0,
                 f"--n-head must divide --n-embd ({self.n_embd} % {self.n_head} != 0)")
        _require(self.mlp_act in MLP_ACTIVATIONS,
                 f"--mlp-act must be one of {', '.join(MLP_ACTIVATIONS)} (got {self.mlp_act!r})")
        _finite(self, "init_std")
        _require(self.init_std > 0, f"--init-std must be > 0 (got {self.init_std!r})")
        return self


@dataclass
class TrainConfig(_Config):
    """Optimiser, schedule, data order and evaluation settings."""

    num_steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 0.01
    lr_schedule: str = "linear"     # linear decay to 0, cosine to 0, or constant; all after warmup
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 0.0          # global-norm clipping threshold; 0 disables
    seed: int = 42
    val_fraction: float = 0.1
    eval_every: int = 100           # 0 disables validation during training
    eval_docs: int = 500            # validation documents per evaluation (0 = the whole split)
    patience: int = 0               # early stopping after this many evaluations without improvement; 0 disables

    def validate(self) -> "TrainConfig":
        _positive_int(self, "num_steps", "batch_size")
        _finite(self, "learning_rate", "beta1", "beta2", "eps", "grad_clip", "val_fraction")
        _require(self.learning_rate > 0, f"--learning-rate must be > 0 (got {self.learning_rate!r})")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})")
        for name in ("warmup_steps", "eval_every", "eval_docs", "patience", "seed"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                     f"{flag_of(name)} must be an integer >= 0 (got {value!r})")
        _require(self.warmup_steps < self.num_steps,
                 f"--warmup-steps must be < --num-steps ({self.warmup_steps} >= {self.num_steps})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"{flag_of(name)} must be in [0, 1) (got {value!r})")
        _require(self.eps > 0, f"--eps must be > 0 (got {self.eps!r})")
        _require(self.grad_clip >= 0, f"--grad-clip must be >= 0, 0 disables it (got {self.grad_clip!r})")
        _require(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1) (got {self.val_fraction!r})")
        return self


@dataclass
class SampleConfig(_Config):
    """How to draw names from a trained model."""

    num_samples: int = 20
    temperature: float = 0.5
    top_k: int = 0                  # 0 disables
    top_p: float = 1.0              # 1 disables
    max_len: int = 0                # 0 means up to the model's block size
    seed: int = 42
    prompt: str = ""

    def validate(self) -> "SampleConfig":
        _finite(self, "temperature", "top_p")
        _require(isinstance(self.num_samples, int) and self.num_samples >= 0,
                 f"--num-samples must be an integer >= 0 (got {self.num_samples!r})")
        _require(self.temperature > 0, f"--temperature must be > 0 (got {self.temperature!r})")
        _require(isinstance(self.top_k, int) and self.top_k >= 0,
                 f"--top-k must be an integer >= 0, 0 disables it (got {self.top_k!r})")
        _require(0 < self.top_p <= 1, f"--top-p must be in (0, 1] (got {self.top_p!r})")
        _require(isinstance(self.max_len, int) and self.max_len >= 0,
                 f"--max-len must be an integer >= 0, 0 means the block size (got {self.max_len!r})")
        return self


def check_docs(docs: list[list[int]], cfg: ModelConfig) -> list[int]:
    """Predictions per document (``len(doc) - 1``), after checking lengths and token ids: the engine
    contract's one-line ValueError for a batch an engine cannot compute, before any of it is computed."""
    if not docs:
        raise ValueError("a batch needs at least one document")
    lengths = [len(d) - 1 for d in docs]
    if min(lengths) < 1 or max(lengths) > cfg.block_size:
        raise ValueError(f"documents must hold 2..{cfg.block_size + 1} tokens (got lengths {min(lengths) + 1}.."
                         f"{max(lengths) + 1})")
    if not all(0 <= tok < cfg.vocab_size for doc in docs for tok in doc):
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
    return lengths


def check_context(tokens: list[int], cfg: ModelConfig) -> None:
    """The contract's ValueError for ``logits(tokens)``: 1..block_size ids, each in the vocabulary."""
    if not 1 <= len(tokens) <= cfg.block_size:
        raise ValueError(f"logits need 1..{cfg.block_size} tokens (got {len(tokens)})")
    if not all(0 <= tok < cfg.vocab_size for tok in tokens):
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then the chosen decay towards zero.

    A pure function of the step and the total, so a resumed run continues the exact schedule it left.
    Extending a run (``--resume CKPT --num-steps N`` beyond its total) swaps the total: each later step
    takes the rate an N-step run would have at that step, so a linear or cosine schedule that had decayed
    to ~0 rises to ``lr_at(step, N)`` and decays again to 0 at N (warmup is not repeated); a constant
    schedule continues unchanged. A run paused with --stop-at and resumed with its own total is exact.
    """
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / (cfg.num_steps - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return cfg.learning_rate * (1.0 - progress)
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate

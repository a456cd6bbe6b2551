"""INT8 inference of a trained model with PyTorch: size, sampling speed and validation loss, fp32 vs int8.

Any engine's checkpoint loads into a small ``nn.Module`` (fp32), and a copy has its linear layers
quantized to INT8 with torchao's ``quantize_`` -- int8 weights with per-row scales, and by default int8
activations quantized on the fly (``--scheme dynamic``), or int8 weights only (``--scheme weight-only``).
The token and position tables are lookups, not matrix products, and stay fp32. Without torchao it falls
back to the deprecated ``torch.ao.quantization.quantize_dynamic``; the output says which path ran.

    python -m engines.int8 --checkpoint model.ckpt [--data names.txt] [--scheme weight-only] [--threads 1]

A model this small is a poor fit for INT8 on a CPU: its matrices are tiny, so quantizing the
activations, calling the int8 kernels and rescaling cost more than the fp32 products they replace. The
numbers say how much.
"""

from __future__ import annotations

import copy
import logging
import statistics
import sys
import time
import warnings

from microgpt import cli

torch = cli.import_or_exit("torch", "pip install -e '.[torch]'",
                           "python -m engines.int8" if __name__ == "__main__" else None)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engines.batching import pack_batch  # noqa: E402
from engines.torch_eager import rmsnorm
from microgpt import UserError, checkpoint  # noqa: E402
from microgpt.config import SampleConfig  # noqa: E402
from microgpt.params import FlatParams
from microgpt.sampling import sample
from microgpt.trainer import evaluate, load_dataset
from microgpt.tokenizers import tokenizer_from_dict

SCHEMES = ("dynamic", "weight-only")
QUANTIZERS = ("auto", "torchao", "quantize_dynamic")


class GPT(nn.Module):
    """The lab's model (the same maths as engines/torch_eager.py) as an nn.Module whose matrices are
    nn.Linear layers, so a quantizer can find and replace them."""

    def __init__(self, params: FlatParams):
        super().__init__()
        self.cfg = params.cfg
        flat = torch.frombuffer(params.data, dtype=torch.float64)
        matrix = lambda t: flat[t.offset:t.offset + t.size].view(t.rows, t.cols).float()   # noqa: E731
        self.wte = nn.Parameter(matrix(params.tensors["wte"]), requires_grad=False)
        self.wpe = nn.Parameter(matrix(params.tensors["wpe"]), requires_grad=False)
        self.linears = nn.ModuleDict()   # "layer0_attn_wq" -> nn.Linear (ModuleDict keys cannot hold dots)
        for t in params.tensors.values():
            if t.name not in ("wte", "wpe"):
                layer = self.linears[t.name.replace(".", "_")] = nn.Linear(t.cols, t.rows, bias=False)
                layer.weight = nn.Parameter(matrix(t), requires_grad=False)

    def linear(self, name: str, x):
        return self.linears[name.replace(".", "_")](x)

    def forward(self, tokens, positions, slots, B: int, T: int):
        """Logits (N, vocab) for the N rows of a packed batch (see engines/torch_eager.py ``Batch``)."""
        C, H, D = self.cfg.n_embd, self.cfg.n_head, self.cfg.head_dim

        def heads(rows):   # (N, C) rows -> (B, H, T, D), zero padding hidden by the causal mask
            return rows.new_zeros(B * T, C).index_copy(0, slots, rows).view(B, T, H, D).transpose(1, 2)

        x = rmsnorm(self.wte[tokens] + self.wpe[positions])
        for layer in range(self.cfg.n_layer):
            p = f"layer{layer}."
            h = rmsnorm(x)
            q, k, v = (heads(self.linear(p + name, h)) for name in ("attn_wq", "attn_wk", "attn_wv"))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.linear(p + "attn_wo", o.transpose(1, 2).reshape(B * T, C)[slots])
            u = F.relu(self.linear(p + "mlp_fc1", rmsnorm(x)))
            x = x + self.linear(p + "mlp_fc2", u * u if self.cfg.mlp_act == "relu2" else u)
        return self.linear("lm_head", x)

    @torch.inference_mode()
    def eval_loss(self, docs: list[list[int]]) -> float:
        """Mean over documents of each document's mean token loss (the engines' batch loss)."""
        b = pack_batch(docs, self.cfg)
        logits = self(torch.tensor(b.tokens), torch.tensor(b.positions), torch.tensor(b.slots), b.B, b.T)
        token_loss = F.cross_entropy(logits, torch.tensor(b.targets), reduction="none")
        return float((token_loss * torch.tensor(b.weights)).sum())

    @torch.inference_mode()
    def logits(self, tokens: list[int]) -> list[float]:
        positions = torch.arange(len(tokens))
        return self(torch.tensor(tokens), positions, positions, 1, len(tokens))[-1].tolist()


# ----------------------------------------------------------------------------------------------------
# quantization


def _import_torchao():
    """torchao, imported without its harmless start-up noise (CUDA-only kernels that a CPU cannot load)."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.quantization
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return torchao


def quantize(model: GPT, scheme: str = "dynamic", quantizer: str = "auto") -> tuple[nn.Module, str]:
    """An INT8 copy of ``model`` and a line saying which quantizer produced it."""
    if scheme not in SCHEMES:
        raise UserError(f"--scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    if quantizer not in QUANTIZERS:
        raise UserError(f"--quantizer must be one of {', '.join(QUANTIZERS)} (got {quantizer!r})")
    torchao = None
    if quantizer != "quantize_dynamic":
        try:
            torchao = _import_torchao()
        except ImportError as e:
            if quantizer == "torchao":
                raise UserError(f"--quantizer torchao: torchao cannot be imported ({e}); pip install torchao") from None
    qmodel = copy.deepcopy(model)   # quantizers replace layers in place; the fp32 model stays as it was
    if torchao is not None:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        config = Int8DynamicActivationInt8WeightConfig() if scheme == "dynamic" else Int8WeightOnlyConfig()
        quantize_(qmodel, config)
        return qmodel, f"torchao {torchao.__version__} quantize_({type(config).__name__}())"
    if scheme != "dynamic":
        raise UserError("--scheme weight-only needs torchao (pip install torchao); quantize_dynamic only does dynamic")
    with warnings.catch_warnings():   # its deprecation notice: the path is named in our own output instead
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(qmodel, {nn.Linear}, dtype=torch.qint8, inplace=True)
    why = "torchao was not requested" if quantizer == "quantize_dynamic" else "torchao is not installed"
    return qmodel, f"torch.ao.quantization.quantize_dynamic (deprecated; used because {why})"


def stored_bytes(value) -> int:
    """Bytes of the weights as stored: int8 values plus their scales (and zero points), fp32 as 4 bytes."""
    if isinstance(value, dict):
        return sum(stored_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(stored_bytes(v) for v in value)
    if not isinstance(value, torch.Tensor):
        return 0
    if hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()   # a torchao tensor subclass: int8 data, scales, zero points
        return sum(stored_bytes(getattr(value, name)) for name in names)
    if value.is_quantized:   # a torch.ao quantized tensor: int8 values plus per-tensor or per-channel params
        if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return value.numel() + 16
        return value.numel() + stored_bytes(value.q_per_channel_scales()) + stored_bytes(
            value.q_per_channel_zero_points())
    return value.numel() * value.element_size()


# ----------------------------------------------------------------------------------------------------
# measurements


def sampling_speed(models: dict, tokenizer, block_size: int, num_names: int, repeats: int) -> dict:
    """Tokens per second while sampling ``num_names`` names, for each model, side by side.

    The models take turns within each repeat (in alternating order, so neither always runs second on a
    warm cache) and the median over repeats is kept; tokens are the logits calls made.
    """
    cfg = SampleConfig(num_samples=num_names, seed=0)
    rates = {name: [] for name in models}
    for repeat in range(repeats + 1):
        order = list(models) if repeat % 2 == 0 else list(models)[::-1]
        for name in order:
            calls = 0

            def logits(tokens, model=models[name]):
                nonlocal calls
                calls += 1
                return model.logits(tokens)
            t0 = time.perf_counter()
            sample(logits, tokenizer, block_size, cfg)
            elapsed = time.perf_counter() - t0
            if repeat:   # repeat 0 is warm-up (lazy kernel selection, allocator)
                rates[name].append(calls / elapsed)
    return {name: statistics.median(r) for name, r in rates.items()}


def parse_args(argv):
    p = cli.OneLineErrorParser(prog="python -m engines.int8", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by any engine")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="documents for the validation split (default: the checkpoint's own sources)")
    p.add_argument("--scheme", choices=SCHEMES, default="dynamic",
                   help="dynamic: int8 weights and int8 activations (default); weight-only: int8 weights")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="auto",
                   help="auto: torchao when installed, else torch.ao quantize_dynamic")
    p.add_argument("--eval-docs", type=int, default=0, help="validation documents to score; 0 means all")
    p.add_argument("--speed-names", type=int, default=20, help="names sampled per timing repeat")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (the median is reported)")
    p.add_argument("--num-samples", type=int, default=5, help="names to show from each model")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    for flag in ("eval_docs", "num_samples"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be an integer >= 0 (got {getattr(args, flag)})")
    for flag in ("speed_names", "repeats", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be an integer >= 1 (got {getattr(args, flag)})")
    return args


def run(argv: list[str], out=sys.stdout) -> dict:
    """Quantize, measure, print; returns the numbers (for tests)."""
    args = parse_args(argv)
    ckpt = checkpoint.load(args.checkpoint)
    tokenizer = tokenizer_from_dict(ckpt.tokenizer)
    data = load_dataset(args.data or ckpt.data.get("sources"), ckpt.train, ckpt.model.block_size, "char", 0,
                        ckpt.tokenizer)
    if not data.val:
        raise UserError("the validation split is empty: the checkpoint was trained with --val-fraction 0")
    torch.set_num_threads(args.threads)
    fp32 = GPT(ckpt.params).eval()
    int8, path = quantize(fp32, args.scheme, args.quantizer)
    models = {"fp32": fp32, "int8": int8}
    c = ckpt.model
    print(f"model: {len(ckpt.params):,} params (n_embd {c.n_embd}, n_layer {c.n_layer}, n_head {c.n_head}, "
          f"block {c.block_size}, vocab {c.vocab_size}) from {args.checkpoint}, trained by "
          f"{ckpt.meta.get('engine', '?')} for {ckpt.step} steps", file=out)
    print(f"int8 path: {path} on the {len(fp32.linears)} linear layers (embeddings stay fp32); "
          f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)}", file=out)
    sizes = {name: stored_bytes(m.state_dict()) for name, m in models.items()}
    print(f"weights as stored:  fp32 {sizes['fp32']:,} B | int8 {sizes['int8']:,} B "
          f"({sizes['int8'] / sizes['fp32']:.2f}x)", file=out)
    speed = sampling_speed(models, tokenizer, c.block_size, args.speed_names, args.repeats)
    print(f"sampling speed:     fp32 {speed['fp32']:,.0f} tok/s | int8 {speed['int8']:,.0f} tok/s "
          f"({speed['int8'] / speed['fp32']:.2f}x; median of {args.repeats} side-by-side repeats, "
          f"{args.speed_names} names each)", file=out)
    val = {name: evaluate(m, data.val, args.eval_docs) for name, m in models.items()}
    n_docs = min(args.eval_docs or len(data.val), len(data.val))
    print(f"validation loss:    fp32 {val['fp32']:.4f} | int8 {val['int8']:.4f} | "
          f"delta {val['int8'] - val['fp32']:+.4f} ({n_docs:,} documents)", file=out)
    if args.num_samples:
        scfg = SampleConfig(num_samples=args.num_samples)
        for name, m in models.items():
            print(f"samples ({name}): {', '.join(sample(m.logits, tokenizer, c.block_size, scfg))}", file=out)
    return {"path": path, "bytes": sizes, "tokens_per_s": speed, "val_loss": val}


def main(argv: list[str] | None = None) -> None:
    cli.exit_on_error(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

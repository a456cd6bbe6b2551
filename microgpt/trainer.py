"""The command line and training loop every trainer shares (train.py, train_fast.py, engines).

An engine computes; this module decides what it computes on: which documents in which order, the
learning rate of each step, when to validate and stop early, what to print, what to save, and how to
sample at the end. Keeping it in one place is what makes "same data order, same schedule, same
checkpoints" true across engines, and a resumed run exact: the data order and the learning rate are
pure functions of (seed, step), so a checkpoint only needs the step to continue bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from microgpt import UserError, checkpoint, cli, distributed
from microgpt.config import ModelConfig, SampleConfig, TrainConfig, flag_of, lr_at
from microgpt.data import default_dataset, load_documents, split_documents
from microgpt.files import write_json_atomic
from microgpt.flops import working_set_bytes
from microgpt.interrupts import StepInterrupt
from microgpt.params import FlatParams, init_params, num_params
from microgpt.sampling import check_prompt, sample
from microgpt.tokenizers import build_tokenizer, tokenizer_from_dict, wrap_all

# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser(description: str, default_engine: str, engine_names: list[str],
                 int8: bool = False) -> argparse.ArgumentParser:
    """The shared flags; ``--int8`` is listed only for an entry point with an int8 sampler (train_fast.py)."""
    p = cli.OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    cli.add_config_flags(g, ModelConfig, skip=("vocab_size",))
    g.add_argument("--no-zero-init-proj", action="store_true",
                   help="initialise attn_wo and mlp_fc2 like the other weights instead of at zero")
    g = p.add_argument_group("training")
    cli.add_config_flags(g, TrainConfig)
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", metavar="PATH",
                   help="UTF-8 text file, one document per line, or a directory of *.txt; repeatable "
                        "(default: makemore's names.txt from $MICROGPT_DATA, the cache, or a download)")
    g.add_argument("--tokenizer", choices=("char", "word", "bpe"), default=None, help="tokenizer (default: char)")
    g.add_argument("--bpe-merges", type=int, default=None, help="BPE merges learned from the training split (default: 64)")
    g = p.add_argument_group("sampling")
    cli.add_config_flags(g, SampleConfig, skip=("seed",))
    g.add_argument("--sample-seed", type=int, default=None, help="seed of the sampler (default: 42)")
    # parsed everywhere so that train.py can say where the flag lives instead of "unrecognized arguments"
    g.add_argument("--int8", action="store_true",
                   help="sample with the weights quantised per row to int8 (fastops.InferenceGPT, VNNI where the CPU "
                        "has it)" if int8 else argparse.SUPPRESS)
    g = p.add_argument_group("engine, checkpoints and output")
    g.add_argument("--engine", choices=engine_names, default=default_engine, help=f"engine (default: {default_engine})")
    g.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="compute precision")
    g.add_argument("--threads", type=int, default=1, help="threads the engine may use (recorded in results)")
    g.add_argument("--isa", default="auto", metavar="NAME",
                   help="instruction set of the c engine's kernels: auto (default: the best this CPU and build run), "
                        "avx512, avx2, sse, neon or generic (recorded in checkpoints and the startup line)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or mps, for engines that support them")
    g.add_argument("--save", metavar="CKPT", help="write a checkpoint here at the end (and every --save-every steps)")
    g.add_argument("--save-every", type=int, default=0, metavar="N", help="also checkpoint every N steps")
    g.add_argument("--resume", metavar="CKPT",
                   help="continue a saved run exactly where it stopped; with --num-steps N beyond its total, train on "
                        "to step N (the learning rate of each later step is then that of an N-step schedule)")
    g.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="pause after this step (saving to --save); --resume continues the same schedule")
    g.add_argument("--sample-from", metavar="CKPT", help="only sample from a saved checkpoint; no training")
    g.add_argument("--log-every", type=int, default=0, metavar="N",
                   help="progress line every N steps (default: about once a second)")
    g.add_argument("--loss-log", metavar="JSON", help="write per-step training and validation losses here")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="data-parallel runs (under torchrun): how long a rank waits for the others before it "
                        f"ends with an error (default: {distributed.DEFAULT_TIMEOUT_S:g})")
    return p


def _overrides(args, cls, rename=None) -> dict:
    rename = rename or {}
    out = {}
    for f in fields(cls):
        value = getattr(args, rename.get(f.name, f.name), None)
        if value is not None:
            out[f.name] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class Dataset:
    tokenizer: object
    train: list[list[int]]          # wrapped token ids, in the seed's shuffled order
    val: list[list[int]]
    info: dict = field(default_factory=dict)   # sources and a digest of the documents, kept in checkpoints
    notes: list[str] = field(default_factory=list)   # what the encoding did that the user should hear once


def load_dataset(paths: list[str] | None, tcfg: TrainConfig, block_size: int, tokenizer_kind: str,
                 bpe_merges: int, tokenizer_dict: dict | None = None) -> Dataset:
    """Read, split and encode the documents; reuse ``tokenizer_dict`` (from a checkpoint) when given."""
    sources = [str(Path(p).resolve()) for p in paths] if paths else [str(default_dataset())]
    docs = load_documents(sources)
    train_docs, val_docs = split_documents(docs, tcfg.val_fraction, tcfg.seed)
    notes = []
    if tokenizer_dict is None:
        tokenizer = build_tokenizer(tokenizer_kind, train_docs, docs, bpe_merges=bpe_merges)
        learned = len(getattr(tokenizer, "merges", ()))
        if tokenizer_kind == "bpe" and learned < bpe_merges:
            notes.append(f"BPE learned {learned} of the {bpe_merges} merges asked for (--bpe-merges): after "
                         f"{learned} no pair of tokens occurs twice in the training split (vocab {tokenizer.vocab_size})")
    else:
        tokenizer = tokenizer_from_dict(tokenizer_dict)
    train, train_cut, train_longest = wrap_all(tokenizer, train_docs, block_size)
    val, val_cut, val_longest = wrap_all(tokenizer, val_docs, block_size)
    if train_cut + val_cut:
        notes.append(f"{train_cut + val_cut:,} of {len(docs):,} documents are longer than --block-size {block_size} "
                     f"allows (the longest: {max(train_longest, val_longest) - 2} tokens); each is cut to its first "
                     f"{block_size} predictions")
    digest = hashlib.sha256("\n".join(docs).encode("utf-8")).hexdigest()
    return Dataset(tokenizer, train, val, {"sources": sources, "sha256": digest, "num_docs": len(docs)}, notes)


class DataOrder:
    """Which training documents step ``s`` sees: a pure function of (seed, step).

    Documents are consumed in order of the seed's shuffle, ``batch_size`` per step; each later epoch
    reshuffles with a seed derived from (seed, epoch), so any step's batch can be recomputed on resume.
    """

    def __init__(self, docs: list[list[int]], batch_size: int, seed: int):
        self.docs, self.batch_size, self.seed = docs, batch_size, seed
        self._epoch, self._perm = 0, list(range(len(docs)))

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            perm = list(range(len(self.docs)))
            if epoch > 0:
                random.Random(f"microgpt-epoch-{self.seed}-{epoch}").shuffle(perm)
            self._epoch, self._perm = epoch, perm
        return self._perm

    def batch(self, step: int) -> list[list[int]]:
        n, out = len(self.docs), []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self.docs[self._permutation(i // n)[i % n]])
        return out


# ----------------------------------------------------------------------------------------------------
# Training


def evaluate(engine, docs: list[list[int]], max_docs: int, chunk: int = 64) -> float:
    """Mean validation loss over the first ``max_docs`` documents (all when 0), without a graph."""
    docs = docs[:max_docs] if max_docs else docs
    total = 0.0
    for i in range(0, len(docs), chunk):
        part = docs[i:i + chunk]
        total += engine.eval_loss(part) * len(part)
    return total / len(docs)


@dataclass
class History:
    losses: list[float] = field(default_factory=list)     # training loss of each step run
    val: list[tuple[int, float]] = field(default_factory=list)   # (step, validation loss)
    stopped_early: bool = False


#: A step whose loss exceeds this many times the loss of a uniform guess (ln vocab_size) has diverged:
#: the model puts less than vocab^-10 on the right token, and no learning rate schedule brings it back.
DIVERGED_FACTOR = 10.0


def evaluations_left(done: int, tcfg: TrainConfig) -> int:
    """How many validations the run makes after step ``done``: every --eval-every steps, and at the last
    step when that is not one of them."""
    on_grid = (tcfg.num_steps // tcfg.eval_every - done // tcfg.eval_every) if tcfg.eval_every else 0
    last = 0 if tcfg.eval_every and tcfg.num_steps % tcfg.eval_every == 0 else 1
    return on_grid + (last if done < tcfg.num_steps else 0)


def train(engine, data: Dataset, mcfg: ModelConfig, tcfg: TrainConfig, start_step: int = 0,
          stop_step: int = 0, save_path: str | None = None, save_every: int = 0, log_every: int = 0, quiet: bool = False,
          meta: dict | None = None, out=sys.stdout, main_rank: bool = True, peers=None) -> History:
    """Run steps ``start_step .. (stop_step or num_steps) - 1``; validate, stop early, checkpoint, report.

    Data-parallel ranks other than 0 run with ``main_rank`` False (and quiet, no ``save_path``): they neither
    validate nor say why they stop; ``peers`` (microgpt.distributed.DataParallel) carries rank 0's decision to
    stop early, and any rank's Ctrl-C, to every rank, so that all stop after the same step.

    A loss that is not finite, or that has blown up past DIVERGED_FACTOR x ln(vocab), stops the run with a
    UserError before anything is saved, so the last checkpoint written (--save-every) stays the last good one.
    """
    order = DataOrder(data.train, tcfg.batch_size, tcfg.seed)
    hist, best, bad_evals = History(), math.inf, 0
    meta = dict(meta or {})
    diverged = DIVERGED_FACTOR * math.log(mcfg.vocab_size)
    saved = [None]    # the step of the last checkpoint written by this run

    def save(step: int) -> None:
        if save_path:
            checkpoint.save(save_path, checkpoint.Checkpoint(
                model=mcfg, train=tcfg, tokenizer=data.tokenizer.to_dict(), params=engine.export_params(),
                adam=engine.export_adam(), step=step, data=data.info,
                meta={**meta, "engine": engine.name, "best_val_loss": best if best < math.inf else None}))
            saved[0] = step

    last_print = time.perf_counter()
    tokens, train_seconds = 0, 0.0  # throughput counts training steps only, not validation
    n_eval = min(tcfg.eval_docs or len(data.val), len(data.val))
    eval_seconds = None       # the last validation's time; the ETA includes the validations still to come
    step = start_step
    # Ctrl-C ends the run after the step in progress (an engine stopped halfway through its Adam update
    # would save half-updated weights); a second Ctrl-C stops at once, without saving
    ctrl_c = StepInterrupt()
    if peers is not None:
        peers.stop_requested = lambda: ctrl_c.requested   # heard by every rank in the next step's all-reduce
    try:
        end = stop_step or tcfg.num_steps
        for step in range(start_step, end):
            if peers.stop_agreed if peers is not None else ctrl_c.requested:
                save(step)
                if main_rank:
                    print(f"\ninterrupted after step {step}" + (f"; checkpoint saved to {save_path} (continue with "
                                                                f"--resume {save_path})" if save_path else ""),
                          file=out, flush=True)
                raise SystemExit(130)
            docs = order.batch(step)
            lr = lr_at(step, tcfg)
            t = time.perf_counter()
            loss = engine.train_step(docs, lr)
            train_seconds += time.perf_counter() - t
            if not math.isfinite(loss) or loss > diverged:
                kept = (f"the checkpoint of step {saved[0]} in {save_path} is kept" if saved[0] is not None else
                        "nothing was saved" + (" (--save-every N keeps good checkpoints on the way)" if save_path else ""))
                raise UserError(f"training diverged at step {step + 1}: loss {loss:.4g} (a uniform guess is "
                                f"{math.log(mcfg.vocab_size):.2f}); lower --learning-rate (now {tcfg.learning_rate:g}) "
                                f"or set --grad-clip 1; {kept}")
            hist.losses.append(loss)
            tokens += sum(len(d) - 1 for d in docs)
            done = step + 1
            now = time.perf_counter()
            evaluate_now = data.val and (done == tcfg.num_steps or (tcfg.eval_every and done % tcfg.eval_every == 0))
            stop = False
            should_print = (log_every and done % log_every == 0) or (not log_every and now - last_print >= 1.0)
            if not quiet and (should_print or evaluate_now or done in (start_step + 1, end)):
                per_step = train_seconds / (done - start_step)
                # before the first validation, guess it from the training speed: a forward pass is about a
                # third of a training step's work, per document
                per_eval = eval_seconds if eval_seconds is not None else per_step / tcfg.batch_size * n_eval / 3
                eta = per_step * (tcfg.num_steps - done) + per_eval * evaluations_left(done, tcfg) * bool(data.val)
                print(f"step {done:>{len(str(tcfg.num_steps))}}/{tcfg.num_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                      f"{tokens / train_seconds:,.0f} tok/s | {cli.per_step(per_step)} | "
                      f"ETA {cli.hms(eta)}", file=out, flush=True)
                last_print = now
            if evaluate_now and main_rank:
                t = time.perf_counter()
                val = evaluate(engine, data.val, tcfg.eval_docs)
                eval_seconds = time.perf_counter() - t
                hist.val.append((done, val))
                if not quiet:
                    print(f"step {done}: validation loss {val:.4f}", file=out, flush=True)
                if val < best - 1e-12:
                    best, bad_evals = val, 0
                else:
                    bad_evals += 1
                    stop = bool(tcfg.patience and bad_evals >= tcfg.patience)
                    if stop and not quiet:
                        print(f"early stop: no improvement in {bad_evals} evaluations (best {best:.4f})",
                              file=out, flush=True)
            if evaluate_now and tcfg.patience and peers is not None:
                stop = peers.agree(stop)
            if stop:
                hist.stopped_early = True
                save(done)
                return hist
            if save_every and done % save_every == 0:
                save(done)
    except KeyboardInterrupt:
        if main_rank:
            print(f"\ninterrupted twice during step {step + 1}; nothing saved", file=out, flush=True)
        raise SystemExit(130) from None
    finally:
        ctrl_c.restore()
    save(end)
    return hist


# ----------------------------------------------------------------------------------------------------
# main


def engine_options(engine_cls, args) -> dict:
    """Constructor options from the flags; only engines that can run elsewhere accept a device, and only
    engines with a choice of kernels (the c engine) an instruction set, checked by its ``check_isa``."""
    options = {"dtype": args.dtype, "threads": args.threads}
    isa = (args.isa or "auto").strip().lower()
    if isa != "auto":
        if "isa" not in inspect.signature(engine_cls).parameters:
            raise UserError(f"--isa picks the kernels of --engine c; --engine {args.engine} has no such choice "
                            f"(got --isa {args.isa})")
        if "," in isa:
            raise UserError(f"--isa takes one instruction set here (got {args.isa!r})")
        check = getattr(engine_cls, "check_isa", None)
        options["isa"] = check(isa) if check else isa   # an unavailable one fails now, before any data is read
    if args.device != "cpu":
        if "device" not in inspect.signature(engine_cls).parameters:
            raise UserError(f"--engine {args.engine} runs on the CPU only (got --device {args.device})")
        options["device"] = args.device
    return options


def make_engine(engine_cls, options: dict, mcfg, tcfg, params, engine_name: str):
    try:
        return engine_cls(mcfg, tcfg, params, **options)
    except ValueError as e:
        raise UserError(f"--engine {engine_name}: {e}") from None


def int8_logits(int8_sampler, mcfg: ModelConfig, params: FlatParams, out,
                isa: str | None = None) -> Callable[[list[int]], list[float]]:
    """``--int8``: the entry point's int8 model of ``params``; says what runs before the samples do."""
    logits, line = int8_sampler(mcfg, params, isa=isa)
    print(line, file=out)
    return logits


#: Flags a resumed run may change: how long it trains and how it validates. Every other training and
#: model flag is the checkpoint's; given with a different value, it is refused (never silently ignored).
RESUME_MAY_CHANGE = ("num_steps", "eval_every", "eval_docs", "patience")


def resumed_configs(args, ckpt) -> tuple[ModelConfig, TrainConfig]:
    """The checkpoint's configs with the flags a resume may change; a UserError naming every flag given
    with a value the checkpoint does not have."""
    given = {**_overrides(args, ModelConfig), **_overrides(args, TrainConfig)}
    if args.no_zero_init_proj:
        given["zero_init_proj"] = False
    kept = {**ckpt.model.to_dict(), **ckpt.train.to_dict()}
    differ = [f"{flag_of(name)} {value} (checkpoint: {kept[name]})" for name, value in given.items()
              if name not in RESUME_MAY_CHANGE and value != kept[name]]
    if args.tokenizer and args.tokenizer != ckpt.tokenizer["kind"]:
        differ.append(f"--tokenizer {args.tokenizer} (checkpoint: {ckpt.tokenizer['kind']})")
    merges = len(ckpt.tokenizer.get("merges", ()))
    if args.bpe_merges is not None and args.bpe_merges != merges:
        differ.append(f"--bpe-merges {args.bpe_merges} (checkpoint: {merges} learned)")
    if differ:
        raise UserError(f"--resume {args.resume} continues the run as it was set up; these cannot change: "
                        f"{', '.join(differ)} (only {', '.join(map(flag_of, RESUME_MAY_CHANGE))} can)")
    tcfg = TrainConfig(**{**ckpt.train.to_dict(), **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}})
    tcfg.validate()
    if tcfg.num_steps <= ckpt.step:
        raise UserError(f"--resume {args.resume}: the run is at step {ckpt.step} of {ckpt.train.num_steps}; "
                        f"give --num-steps above {ckpt.step} to train further (or --sample-from {args.resume} "
                        f"to sample)")
    return ckpt.model, tcfg


def memory_needed(engine_cls, mcfg: ModelConfig, tcfg: TrainConfig, dtype: str, predictions: int) -> int:
    """Bytes a training step holds: weights, gradients, both Adam moments and the saved activations of a
    batch of the longest documents, ``predictions`` tokens each (microgpt.flops.working_set_bytes), times
    the bytes the engine spends per number (``bytes_per_number``: a Python float in a list takes 32)."""
    per_number = getattr(engine_cls, "bytes_per_number", 4 if dtype == "float32" else 8)
    return working_set_bytes(mcfg, [predictions] * tcfg.batch_size, 1) * per_number


def check_memory(engine_cls, mcfg: ModelConfig, tcfg: TrainConfig, dtype: str, engine_name: str,
                 predictions: int) -> None:
    need, free = memory_needed(engine_cls, mcfg, tcfg, dtype, predictions), cli.available_memory()
    if free is not None and need > free:
        raise UserError(f"--engine {engine_name} needs about {cli.binary_size(need)} for this model "
                        f"({num_params(mcfg):,} parameters with gradients and Adam moments, and the activations of "
                        f"--batch-size {tcfg.batch_size} documents of {predictions} tokens); "
                        f"{cli.binary_size(free)} of memory is available: make the model or the batch smaller")


def run(argv: list[str], registry, default_engine: str, description: str, out=sys.stdout,
        int8_sampler=None) -> History | None:
    """Parse ``argv`` and train (or only sample); raises UserError on bad input.

    ``registry`` is the engines the entry point offers: an object with ``ENGINES`` (name -> where) and
    ``load_engine(name) -> class``, the ``engines`` package for the lab's scripts (microgpt/ never imports it).
    ``int8_sampler(model_cfg, params, isa=None) -> (logits_fn, line)`` enables ``--int8``: samples are drawn
    from ``logits_fn`` instead of the engine's, after ``line``; ``isa`` is --isa's choice (None for auto).

    Everything the run needs is checked before its first step: flags, data, tokenizer, prompt, the output
    paths (writable, room for the checkpoint) and memory; a bad one costs a one-line error, not a run.
    """
    args = build_parser(description, default_engine, list(registry.ENGINES),
                        int8=int8_sampler is not None).parse_args(argv)
    if args.int8 and int8_sampler is None:
        raise UserError("--int8 is a flag of train_fast.py, whose C extension samples with int8 weights: "
                        "python train_fast.py ... --int8")
    engine_cls = registry.load_engine(args.engine)
    options = engine_options(engine_cls, args)
    launch = distributed.launch_from_env()   # None outside torchrun; a one-line error for broken variables
    parallel = launch if launch and launch.world_size > 1 else None
    if parallel and not distributed.supports(engine_cls):
        raise UserError(f"--engine {args.engine} cannot train data-parallel under torchrun (it cannot compute "
                        f"gradients and apply Adam as two calls); the torch and c engines can")
    if not args.dist_timeout > 0:
        raise UserError(f"--dist-timeout must be a number of seconds > 0 (got {args.dist_timeout:g})")
    main_rank = not parallel or parallel.is_main   # the one rank that prints, validates, saves and samples
    scfg = SampleConfig(**_overrides(args, SampleConfig, rename={"seed": "sample_seed"})).validate()
    if args.int8 and not scfg.num_samples:
        raise UserError("--int8 only changes how the samples are drawn, and --num-samples 0 asks for none")
    if args.threads < 1:
        raise UserError(f"--threads must be an integer >= 1 (got {args.threads})")
    for flag in ("save_every", "log_every", "bpe_merges", "stop_at"):
        if (getattr(args, flag) or 0) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be an integer >= 0 (got {getattr(args, flag)})")
    if args.save_every and not args.save:
        raise UserError("--save-every N checkpoints to --save CKPT; give --save too")
    if args.stop_at and not args.save:
        raise UserError("--stop-at pauses a run to be continued with --resume, which needs a checkpoint: give --save")
    if args.loss_log:
        cli.check_writable("--loss-log", args.loss_log)

    if args.sample_from:
        if not main_rank:
            return None
        ckpt = checkpoint.load(args.sample_from)
        tokenizer = tokenizer_from_dict(ckpt.tokenizer)
        check_prompt(tokenizer, ckpt.model.block_size, scfg)
        if args.int8:
            logits = int8_logits(int8_sampler, ckpt.model, ckpt.params, out, options.get("isa"))
        else:
            logits = make_engine(engine_cls, options, ckpt.model, ckpt.train, ckpt.params, args.engine).logits
        for name in sample(logits, tokenizer, ckpt.model.block_size, scfg):
            print(name, file=out)
        return None

    if args.resume:
        ckpt = checkpoint.load(args.resume)
        mcfg, tcfg = resumed_configs(args, ckpt)
        start = ckpt.step
        data = load_dataset(args.data or ckpt.data.get("sources"), tcfg, mcfg.block_size, "char", 0, ckpt.tokenizer)
        if data.info["sha256"] != ckpt.data.get("sha256"):
            raise UserError(f"--resume: the documents differ from the ones {args.resume} was trained on; "
                            f"pass the same --data")
    else:
        train_flags = _overrides(args, TrainConfig)
        if "eval_docs" not in train_flags and hasattr(engine_cls, "default_eval_docs"):
            train_flags["eval_docs"] = engine_cls.default_eval_docs   # a slow engine validates on fewer documents
        tcfg = TrainConfig(**train_flags).validate()
        model_flags = _overrides(args, ModelConfig)
        model_flags["zero_init_proj"] = not args.no_zero_init_proj
        ModelConfig(**model_flags).validate()  # reject bad shapes before reading any data
        data = load_dataset(args.data, tcfg, model_flags.get("block_size", ModelConfig.block_size),
                            args.tokenizer or "char", 64 if args.bpe_merges is None else args.bpe_merges)
        mcfg = ModelConfig(vocab_size=data.tokenizer.vocab_size, **model_flags).validate()
        start = 0
    if not data.train:
        raise UserError("the training split is empty: provide more documents or lower --val-fraction")
    if args.stop_at and not start < args.stop_at <= tcfg.num_steps:
        raise UserError(f"--stop-at must be in ({start}, {tcfg.num_steps}] (got {args.stop_at})")
    if scfg.num_samples:
        check_prompt(data.tokenizer, mcfg.block_size, scfg)
    if args.save:
        cli.check_writable("--save", args.save, checkpoint.size_bytes(mcfg))
    check_memory(engine_cls, mcfg, tcfg, args.dtype, args.engine, max(map(len, data.train)) - 1)
    for note in data.notes if main_rank else ():
        print(f"note: {note}", file=sys.stderr, flush=True)

    params = ckpt.params if args.resume else init_params(mcfg, tcfg.seed)
    if args.int8:
        int8_sampler(mcfg, params, options.get("isa"))  # a model the int8 path cannot run fails now, not after training
    if parallel and "device" in options:
        options["device"] = distributed.prepare_device(parallel, options["device"])
    engine = make_engine(engine_cls, options, mcfg, tcfg, params, args.engine)
    if args.resume:
        engine.import_adam(ckpt.adam)
    isa = getattr(engine, "isa", None)     # the instruction set that runs, for engines that choose one
    if parallel:
        engine = distributed.DataParallel(engine, parallel, args.dist_timeout)
    quiet = args.quiet or not main_rank
    if not quiet:
        print(f"engine {engine.name} ({args.dtype}, {args.threads} thread{'s' * (args.threads > 1)}"
              f"{f', {isa}' if isa else ''}) | "
              + (f"data-parallel: {parallel.world_size} ranks ({engine.backend}), "
                 f"{distributed.share_sizes(tcfg.batch_size, parallel.world_size)} documents each | "
                 if parallel else "")
              + f"{len(params):,} params | {len(data.train):,} train / {len(data.val):,} val documents | "
              f"vocab {mcfg.vocab_size} | steps {start}..{args.stop_at or tcfg.num_steps}"
              + (f" of {tcfg.num_steps}" if args.stop_at else ""), file=out, flush=True)
    try:
        hist = train(engine, data, mcfg, tcfg, start, args.stop_at, args.save if main_rank else None, args.save_every,
                     args.log_every, quiet, meta={"dtype": args.dtype, "threads": args.threads,
                                                  **({"isa": isa} if isa else {}),
                                                  **({"ranks": parallel.world_size} if parallel else {})},
                     out=out, main_rank=main_rank, peers=engine if parallel else None)
    finally:
        if parallel:
            engine.close()
    if not main_rank:
        return hist
    if hist.losses and not quiet:
        tail = hist.losses[-100:]
        print(f"mean training loss over the last {len(tail)} steps: {sum(tail) / len(tail):.4f}", file=out)
    if args.loss_log:
        try:
            write_json_atomic(args.loss_log, {"engine": engine.name, **({"isa": isa} if isa else {}),
                                              "start_step": start, "train": hist.losses, "val": hist.val,
                                              "config": mcfg.to_dict(), "train_config": tcfg.to_dict()})
        except OSError as e:
            raise UserError(f"cannot write --loss-log {args.loss_log}: {e.strerror or e}") from None
    if scfg.num_samples:
        logits = (int8_logits(int8_sampler, mcfg, engine.export_params(), out, options.get("isa")) if args.int8
                  else engine.logits)
        print("samples:", file=out)
        for name in sample(logits, data.tokenizer, mcfg.block_size, scfg):
            print(f"  {name}", file=out)
    return hist


def main(argv: list[str], registry, default_engine: str, description: str, int8_sampler=None) -> None:
    """CLI entry: one-line errors and exit status 2 instead of tracebacks for bad input."""
    cli.exit_on_error(run, argv, registry, default_engine, description, int8_sampler=int8_sampler)

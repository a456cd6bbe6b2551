"""The command-line pieces every entry point shares: one parser, one ending, one way to name things.

- ``OneLineErrorParser``: argparse whose errors are one line (and exit status 2), that accepts the
  underscore spelling of every flag (``--n_embd 16 --learning_rate 0.01``, as the seed commands of the
  micro-gpt notes are written) and that suggests the nearest flag for one it does not know.
- ``run_main``: an entry point's body, with a ``UserError`` turned into ``error: <message>`` on stderr
  and exit status 2 instead of a traceback.
- ``config_label``: the one name of a model shape (``C16L1H4``, ``C32L2H4T8-relu``) in ids, tables and charts.
- number formatting: ``si``, ``percent``, ``duration``, ``hms``, ``per_step``, ``binary_size``.

Standard library only: train.py, the dependency-free reference, parses its flags with this module.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from microgpt import UserError
from microgpt.config import FLAG_HELP


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (not usage + error), exit status 2, with a hint;
    ``--some_flag`` is read as ``--some-flag`` wherever only the hyphen spelling is defined."""

    def _hyphenated(self, arg: str) -> str:
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        if "_" not in name or name in self._option_string_actions:
            return arg
        hyphen = name.replace("_", "-")
        # also an abbreviation argparse would accept (--learning_r -> --learning-r)
        if any(option.startswith(hyphen) for option in self._option_string_actions):
            return hyphen + eq + value
        return arg

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if "--" in args:  # after "--" every word is a value, even one that looks like a flag
            cut = args.index("--")
            args = [self._hyphenated(str(a)) for a in args[:cut]] + args[cut:]
        else:
            args = [self._hyphenated(str(a)) for a in args]
        return super().parse_known_args(args, namespace)

    def error(self, message):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            hints = []
            for word in message[len(prefix):].split():
                name = word.partition("=")[0]
                if name.startswith("-"):
                    close = difflib.get_close_matches(name.replace("_", "-"), self._option_string_actions, n=1)
                    if close:
                        hints.append(f"{name}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        self.exit(2, f"error: {message} (see --help)\n")


def add_config_flags(group, cls, skip=(), only=None) -> None:
    """One flag per field of a config dataclass (or of ``only`` among them), in the hyphen style
    (--n-embd), default None so that a caller can tell a flag given from one left out; the help names
    the field's default. Booleans are left to explicit --no-... flags of the caller."""
    for f in fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        if f.type in ("bool", bool):
            continue
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        group.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                           help=f"{FLAG_HELP[f.name]} (default: {f.default})")


def run_main(body: Callable[..., object], *args, **kwargs) -> int:
    """Run an entry point's body; an int it returns is the exit status (anything else, such as None or a
    result kept for tests, is 0), and a UserError is one line on stderr with status 2 (or the error's own
    ``status``: 1 for a data-parallel peer lost). Every CLI ends in ``sys.exit(run_main(...))``, or in
    ``exit_on_error`` where Python callers call its main too."""
    try:
        status = body(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def exit_on_error(body: Callable[..., object], *args, **kwargs) -> None:
    """``run_main`` that returns on success and raises SystemExit with the status otherwise."""
    status = run_main(body, *args, **kwargs)
    if status:
        raise SystemExit(status)


def import_or_exit(name: str, install: str, script: str | None):
    """Imports an optional dependency. A script run directly (``script`` names it; None for an import)
    that lacks it ends in one line on stderr and exit 2; an importer gets the ImportError to handle."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if script is None:
            raise
        print(f"error: {script} needs {name}, which is not installed here ({e}): {install}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------------------------------
# Checks before a run: a run that would fail at its end fails at its start instead


def check_writable(flag: str, path, size: int = 0) -> None:
    """A UserError now if ``path`` could not be written later (atomically, by microgpt.files): a directory
    there, an ancestor that is a file, a directory we may not write in, or less free space than ``size``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    existing = path.parent
    while not existing.exists():   # write_atomic creates the missing directories
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    try:   # a real file, not os.access: root passes os.access on a read-only file system
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None
    free = shutil.disk_usage(existing).free
    if free < size:   # the new file is written beside the old one, so the whole size must be free
        raise UserError(f"{flag} {path}: {binary_size(free)} free on its file system, and the file needs about "
                        f"{binary_size(size)}")


def read_json(path, what: str):
    """The JSON document at ``path``; a one-line UserError naming ``what`` it should be when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a JSON file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping (Linux MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------------
# Names and numbers

SHAPE_KEYS = ("n_embd", "n_layer", "n_head", "block_size", "mlp_act")


def config_label(config) -> str:
    """A model shape as one word: 'C16L1H4' (block size 16, relu2), 'C32L2H4T8-relu' otherwise.

    Takes a ModelConfig, a dict with its fields, or a (n_embd, n_layer, n_head, block_size, mlp_act)
    tuple; benchmark ids are built from it, so the format is also parsed back (benchmark.parse_config).
    """
    if isinstance(config, tuple):
        values = dict(zip(SHAPE_KEYS, config))
    elif isinstance(config, dict):
        values = config
    else:
        values = {k: getattr(config, k) for k in SHAPE_KEYS}
    block_size, mlp_act = values.get("block_size", 16), values.get("mlp_act", "relu2")
    return (f"C{values['n_embd']}L{values['n_layer']}H{values['n_head']}" + (f"T{block_size}" if block_size != 16 else "")
            + (f"-{mlp_act}" if mlp_act != "relu2" else ""))


def si(x: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (3 significant digits)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def percent(x: float) -> str:
    """12.3 -> '12%', 123.4 -> '123%', 4.56 -> '4.6%'."""
    return f"{x:.0f}%" if x >= 10 else f"{x:.2g}%"


def duration(seconds: float) -> str:
    """0.00123 -> '1.23 ms', 4.5e-6 -> '4.5 us'."""
    return f"{seconds * 1e3:.3g} ms" if abs(seconds) >= 1e-3 else f"{seconds * 1e6:.3g} us"


def hms(seconds: float) -> str:
    """3725.4 -> '1:02:05' (an ETA or an elapsed time)."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def per_step(seconds: float) -> str:
    """Seconds per step in a progress line: '850.0 µs/step', '12.34 ms/step'."""
    return f"{seconds * 1e6:.1f} µs/step" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms/step"


def binary_size(n: float) -> str:
    """49152 -> '48 KiB' (cache, working-set and memory sizes)."""
    for shift, name in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {name}"
    return f"{n:.0f} B"

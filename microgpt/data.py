"""The dataset: where names.txt comes from, how text files become documents, and the train/val split.

A *document* is one line of text (one name, for names.txt). The default dataset is Karpathy's
makemore names.txt, found in this order: the file named by ``$MICROGPT_DATA``, a verified copy in the
user cache directory, or a fresh download (checked against a pinned SHA-256) into that cache.

Run ``python -m microgpt.data`` for a tour of the data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from microgpt import UserError, cli
from microgpt.config import TrainConfig

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


def cache_dir() -> Path:
    """Per-user cache directory for downloads; ``$MICROGPT_CACHE`` overrides the platform default."""
    override = os.environ.get("MICROGPT_CACHE")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "microgpt-lab"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_dataset(url: str | None = None, sha256: str = NAMES_SHA256, timeout: float = 30) -> Path:
    """Path of the default dataset: ``$MICROGPT_DATA``, else the verified cached copy, else a download
    from ``url`` (default: ``$MICROGPT_DATA_URL``, a mirror, or else the canonical NAMES_URL)."""
    url = url or os.environ.get("MICROGPT_DATA_URL") or NAMES_URL
    override = os.environ.get("MICROGPT_DATA")
    if override:
        path = Path(override)
        if not path.exists():
            raise UserError(f"MICROGPT_DATA points to {override}, which does not exist")
        return path
    path = cache_dir() / "names.txt"
    if path.is_file():
        try:
            if _sha256_of(path) == sha256:
                return path
            # A corrupt cache (hand-edited, disk trouble) would silently change every result: replace it.
            print(f"cached {path} has the wrong SHA-256; downloading it again", file=sys.stderr)
            path.unlink()
        except OSError as e:
            raise UserError(f"cannot read or replace the cached {path}: {e.strerror or e}") from None
    print(f"downloading names.txt from {url} to {path}", file=sys.stderr)
    download(url, path, sha256, timeout)
    return path


def download(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 30) -> None:
    """Fetch ``url`` into ``dest`` atomically, verifying its length and SHA-256.

    The bytes stream into a temporary file next to ``dest`` that becomes ``dest`` (os.replace) only
    once every check passes; on any failure it is deleted and a one-line UserError says what went
    wrong and how to provide the file by hand.
    """
    dest = Path(dest)
    hint = f"set MICROGPT_DATA=/path/to/{dest.name} or copy the file to {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise UserError(f"cannot write to {dest.parent}: {e.strerror or e}; {hint}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            size, digest = _fetch(url, out, timeout, hint)
        if digest != sha256:
            raise UserError(f"download of {url} has SHA-256 {digest}, expected {sha256}; {hint}")
        os.replace(tmp, dest)
    except BaseException as e:
        # Also on Ctrl-C: never leave a half-written file behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # writing the file failed: disk full, or dest is a directory
            raise UserError(f"cannot save the download as {dest}: {e.strerror or e}; {hint}") from None
        raise


def _fetch(url: str, out, timeout: float, hint: str) -> tuple[int, str]:
    """Stream ``url`` into the open file ``out``; returns (bytes written, hex SHA-256)."""
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as e:
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}; {hint}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise UserError(f"download of {url} timed out after {timeout} s; {hint}") from None
        raise UserError(f"cannot download {url} ({e.reason}); are you offline? {hint}") from None
    except TimeoutError:
        raise UserError(f"download of {url} timed out after {timeout} s; {hint}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise UserError(f"download of {url} failed ({type(e).__name__}: {e}); {hint}") from None
    # urllib does not notice a connection that closes early, so compare with the announced length.
    if expected is not None and expected.isdigit() and size != int(expected):
        raise UserError(f"download of {url} was cut off ({size} of {expected} bytes); {hint}")
    return size, digest.hexdigest()


def load_documents(paths: list[str]) -> list[str]:
    """Documents (non-empty stripped lines) from UTF-8 text files and directories of ``*.txt`` files.

    Order is preserved: paths in the given order, a directory's files sorted by name, lines as in the file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UserError("no data files given")
    docs = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.glob("*.txt") if p.is_file())
            if not files:
                raise UserError(f"directory {path} has no *.txt files")
        elif path.exists():
            files = [path]
        else:
            raise UserError(f"data file {path} does not exist")
        for file in files:
            docs += _read_documents(file)
    return docs


def _read_documents(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise UserError(f"{path} looks like a binary file (NUL byte at offset {nul}); "
                        "expected UTF-8 text with one document per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    # A byte-order mark is not part of the first document.
    lines = (line.strip() for line in text.removeprefix("\ufeff").split("\n"))
    docs = [line for line in lines if line]
    if not docs:
        raise UserError(f"{path} has no documents (it is empty or only blank lines)")
    return docs


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded shuffle, then the last ``round(len(docs) * val_fraction)`` documents are validation.

    Training always keeps at least one document; a positive fraction always gives validation at
    least one document when there are two or more.
    """
    if not docs:
        raise UserError("no documents to split")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1) (got {val_fraction!r})")
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    n_val = round(len(docs) * val_fraction)
    if val_fraction > 0 and len(docs) >= 2:
        n_val = max(n_val, 1)
    n_train = max(len(docs) - n_val, 1)
    return shuffled[:n_train], shuffled[n_train:]


def demo(argv: list[str] | None = None) -> None:
    """The teaching demo: what the data looks like before any model sees it."""
    parser = cli.OneLineErrorParser(prog="python -m microgpt.data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="text files or directories of *.txt, one document per line "
                             "(default: $MICROGPT_DATA, else names.txt from the cache or the internet)")
    args = parser.parse_args(argv)
    paths = args.data or [str(default_dataset())]
    docs = load_documents(paths)
    cfg = TrainConfig()
    train, val = split_documents(docs, cfg.val_fraction, cfg.seed)
    source = "command line" if args.data else ("$MICROGPT_DATA" if os.environ.get("MICROGPT_DATA") else "cache")
    lengths = [len(doc) for doc in docs]
    print(f"data from {', '.join(paths)} ({source})")
    print(f"{len(docs)} documents, one per line")
    print("first few:", ", ".join(docs[:8]))
    print(f"length in characters: mean {sum(lengths) / len(lengths):.2f}, max {max(lengths)}")
    print(f"split with seed {cfg.seed}, val fraction {cfg.val_fraction}: {len(train)} train, {len(val)} val")
    chars = sorted(set("".join(docs)))
    print(f"character set ({len(chars)}): {''.join(chars)!r}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(demo, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Atomic file writes: every file the lab writes (checkpoints, results, caches, logs) goes through here.

The bytes go to a temporary file in the target's directory, are flushed to disk, and only then renamed
over the target, so a reader (or a crash) never sees half a file and the previous version survives any
failure.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would survive the rename
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    write_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))

"""Variants of the C engine built on demand: the same fastops.c with other compile-time switches.

The installed ``fastops`` is the fast build. Measuring where its time goes needs the phase counters that
``MICROGPT_PROFILE=1`` compiles in (fastops/profile.h), and those must cost nothing in the normal build,
so they live in a separate build. ``profiled_fastops()`` compiles it once per version of the sources
(~20 s) into the user's cache and loads it beside the normal module.

    python -m microgpt.native        # build (or find) the profiled fastops and say where it is
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from microgpt import UserError, cli
from microgpt.data import cache_dir

REPO = Path(__file__).resolve().parent.parent
SOURCES = [REPO / "fastops.c", *sorted((REPO / "fastops").glob("*.h"))]
COMPILE_ARGS = ["-O3", "-std=gnu11", "-fno-trapping-math", "-fPIC", "-shared", "-pthread", "-Werror=implicit-function-declaration"]


def import_fastops() -> ModuleType:
    """The built ``fastops`` extension. Raises ImportError when it is not built -- also when ``import
    fastops`` only finds the fastops/ directory of headers beside this checkout (a namespace package)."""
    import fastops
    if getattr(fastops, "GPT", None) is None:
        raise ImportError("the fastops found is its source directory, not the built extension")
    return fastops


def _sources_digest(macros: dict[str, str]) -> str:
    h = hashlib.sha256(repr(sorted(macros.items())).encode())
    for path in SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_fastops(macros: dict[str, str], dest: Path | None = None) -> Path:
    """Compiles fastops.c with -D macros into dest (default: the cache, keyed by the sources); returns the .so."""
    if not (REPO / "fastops.c").exists():
        raise UserError(f"fastops.c is not in {REPO}: building a variant needs the source checkout")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    dest = dest or cache_dir() / "fastops-variants" / _sources_digest(macros)
    target = dest / f"fastops{suffix}"
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
    defines = [f"-D{k}={v}" for k, v in macros.items()]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *COMPILE_ARGS, *defines, f"-I{sysconfig.get_paths()['include']}", str(REPO / "fastops.c"),
               "-o", str(out), "-lm"]
        if shutil.which(cmd[0]) is None:
            raise UserError(f"no C compiler ({cmd[0]}) to build the profiled fastops; install gcc or set CC")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"building fastops with {' '.join(defines)} failed: "
                            f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        os.replace(out, target)   # atomic: a concurrent build never sees half a file
    return target


def load_fastops(path: Path) -> ModuleType:
    """Loads a fastops build from path without replacing the installed ``fastops`` in sys.modules."""
    spec = importlib.util.spec_from_file_location("fastops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profiled_fastops() -> ModuleType:
    """The fastops build with phase counters (GPT.profile()), compiled on first use."""
    return load_fastops(build_fastops({"MICROGPT_PROFILE": "1"}))


def main() -> int:
    """``python -m microgpt.native``: build (or find) the profiled fastops and say where it is."""
    def show() -> None:
        module = profiled_fastops()
        print(f"profiled fastops: {module.__file__} (PROFILED={module.PROFILED})")
    return cli.run_main(show)


if __name__ == "__main__":
    sys.exit(main())

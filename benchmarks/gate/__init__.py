"""The regression gate behind benchmark.py, split as pyperf splits its modules.

matrix       benchmarks/matrix.json expanded into cases; the documents they train on
worker       the ``benchmark.py worker`` process and ``measure``, which drives the workers of every side
environment  the machine and Python build a result was measured on, and what differs between two
results     results files (ours and pytest-benchmark's), the baseline history
stats        Student's t and the noise models of separate runs and of interleaved rounds (standard library only)
compare      one verdict per benchmark, and how a comparison is printed
commands     run, compare, ab, update-baseline
report       the markdown report with charts, and README's generated tables, transcripts and charts

It imports engines/ (the worker loads them), so it lives above them, beside the other scripts of
benchmarks/, not in microgpt/.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]     # the checkout whose benchmark.py runs


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

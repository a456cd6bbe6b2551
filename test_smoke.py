"""Fast end-to-end smoke test: train a few steps from the command line, save, resume, sample.

Run it alone (`python -m pytest test_smoke.py`) after installing to check the lab works at all.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent


def test_train_save_resume_sample(tmp_path):
    data = tmp_path / "names.txt"
    data.write_text("emma\nolivia\nava\nisabella\nsophia\ncharlotte\nmia\namelia\nharper\nevelyn\n")
    ckpt = tmp_path / "smoke.ckpt"
    common = [sys.executable, str(REPO / "train.py"), "--data", str(data), "--num-steps", "6", "--n-embd", "8",
              "--n-head", "2", "--num-samples", "2"]
    first = subprocess.run(common + ["--stop-at", "3", "--save", str(ckpt)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "step 3/6" in first.stdout
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", str(ckpt), "--save", str(ckpt)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 6/6" in resumed.stdout and "samples:" in resumed.stdout
    sampled = subprocess.run([sys.executable, str(REPO / "train.py"), "--sample-from", str(ckpt), "--num-samples", "3"],
                             capture_output=True, text=True)
    assert sampled.returncode == 0 and len(sampled.stdout.split()) == 3

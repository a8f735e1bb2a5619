"""examples/hf_trainer_multitask.py runs end to end for a few steps on the real data with the
packaged MiniLM (CI's run of the example)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MTLKIT_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.mark.slow
def test_the_example_trains_and_reports_dev_scores(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MTLKIT_DATA_DIR=str(DATA),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(ROOT / "examples" / "hf_trainer_multitask.py"),
               "--max-steps", "2", "--dev-rows", "16", "--weighting", "pcgrad",
               "--logging-steps", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = re.search(r"dev: SST-5 accuracy ([\d.]+), Quora accuracy ([\d.]+), STS-B Pearson "
                       r"(-?[\d.]+); overall ([\d.]+)", done.stdout)
    assert scores, done.stdout[-2000:]
    sst, qqp, sts, overall = map(float, scores.groups())
    assert 0 <= sst <= 1 and 0 <= qqp <= 1 and -1 <= sts <= 1
    assert overall == pytest.approx((sst + qqp + (sts + 1) / 2) / 3, abs=2e-3)
    assert "training: 2 steps in" in done.stdout
    # the Trainer's log carries the per-task losses and PCGrad's statistics
    first_log = next(line for line in done.stdout.splitlines() if line.startswith("{'loss'"))
    for key in ("loss_sst", "loss_qqp", "loss_sts", "num_conflicts", "cos_sst_qqp"):
        assert f"'{key}'" in first_log, first_log

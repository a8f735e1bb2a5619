"""The short examples under ``examples/`` run end to end for a few steps on the real data.

Each script is run as a user runs it (a subprocess; the torchrun one with two gloo processes)
on the embedded all-MiniLM-L6-v2 and the real CS224N files, and what it printed is checked:
finite losses, dev scores in range and consistent with the paper's Eq. 7, the pairs mined,
the served model equal to the mixture, the ranks in agreement.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DATA = Path(os.environ.get("MTLKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
FEW = ["--steps", "2", "--batch-size", "4", "--dev-rows", "16"]
NUMBER = r"-?\d+\.\d+(?:e[-+]\d+)?|nan|inf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "sts-dev.csv").is_file(), reason=f"real data absent at {DATA}"),
]


def run(*command: str, timeout: float = 240) -> str:
    """Run an example with this checkout's mtlkit, offline; its stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "MTLKIT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def values(line: str) -> dict[str, float]:
    """``name=number`` pairs of one printed line."""
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({NUMBER})", line)}


def line(output: str, pattern: str) -> str:
    found = re.findall(rf"^.*{pattern}.*$", output, flags=re.M)
    assert found, f"no line matching {pattern!r} in:\n{output[-3000:]}"
    return found[-1]


def check_dev(output: str, rows: int = 16) -> None:
    """The dev line: accuracies in [0, 1], a correlation in [-1, 1], the overall score = Eq. 7."""
    dev = values(line(output, rf"dev.*\({rows} rows per task\)"))
    assert set(dev) == {"sst", "qqp", "sts", "overall"}
    assert 0 <= dev["sst"] <= 1 and 0 <= dev["qqp"] <= 1 and -1 <= dev["sts"] <= 1
    assert dev["overall"] == pytest.approx((dev["sst"] + dev["qqp"] + (dev["sts"] + 1) / 2) / 3,
                                           abs=2e-3)


def check_losses(output: str, steps: int = 2) -> dict[str, float]:
    losses = values(line(output, rf"step {steps}/{steps} loss").split(" smart ")[0])
    assert set(losses) == {"sst", "qqp", "sts"} and all(map(math.isfinite, losses.values()))
    return losses


def test_multitask_interleaved():
    output = run("examples/multitask_interleaved.py", *FEW)
    assert re.search(r"^step 1/2 loss", output, flags=re.M)
    check_losses(output)
    check_dev(output)


def test_surgery_smart():
    output = run("examples/surgery_smart.py", *FEW)
    last = line(output, "step 2/2 loss")
    check_losses(output)
    smart = values(last.split(" smart ")[1].split(" conflicts ")[0])
    assert set(smart) == {"sst", "qqp", "sts"}
    assert all(math.isfinite(v) and v >= 0 for v in smart.values())
    conflicts = int(re.search(r"conflicts (\d)/3", last).group(1))
    assert 0 <= conflicts <= 3
    weights = [float(w) for w in last.split(" weights ")[1].split()]
    assert len(weights) == 3 and all(map(math.isfinite, weights))
    if conflicts == 0:  # no conflict, no surgery: the plain sum
        assert weights == [1.0, 1.0, 1.0]
    check_dev(output)


def mined_positives() -> int:
    """The paraphrases in the training files, counted here with the csv module."""
    count = 0
    for name, label, threshold in (("sts-train.csv", "similarity", 4.0),
                                   ("quora-train-partial.csv", "is_duplicate", 1.0)):
        with (DATA / name).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["sentence1"].strip() and row["sentence2"].strip() and row[label].strip():
                    count += float(row[label]) >= threshold
    return count


def test_simcse_pretrain():
    output = run("examples/simcse_pretrain.py", "--steps", "3", "--batch-size", "4",
                 "--dev-rows", "48")
    mined = int(re.search(r"mined (\d+) positive pairs", output).group(1))
    assert mined == mined_positives()
    losses = [float(v) for v in re.findall(rf"^step \d/3 loss ({NUMBER})", output, flags=re.M)]
    assert len(losses) == 2 and all(math.isfinite(v) and v >= 0 for v in losses)
    before = float(re.search(rf"correlation before: ({NUMBER})", output).group(1))
    after = re.search(rf"correlation after: ({NUMBER}) \(before: ({NUMBER})\)", output)
    assert -1 <= before <= 1 and -1 <= float(after.group(1)) <= 1
    assert float(after.group(2)) == before


def test_lora_experts(tmp_path: Path):
    from safetensors import safe_open

    out = tmp_path / "served"
    output = run("examples/lora_experts.py", *FEW, "--serve", "qqp", "--out", str(out))
    check_losses(output)
    check_dev(output)
    assert "served qqp model: a plain BertModel" in output
    equal = re.search(rf"merged == served: (\w+) \(.*on 16 dev rows: ({NUMBER})\)", output)
    assert equal and equal.group(1) == "True" and float(equal.group(2)) < 1e-4, output[-2000:]
    # What was saved is a plain Hugging Face model: no adapter weights left in it.
    with safe_open(out / "encoder" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n.lower()]
    assert (out / "qqp_head.safetensors").is_file()


def test_torchrun_multitask():
    output = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "examples/torchrun_multitask.py", "--mode", "proportional", "--steps", "3",
                 "--batch-size", "4", "--dev-rows", "16", timeout=300)
    assert "2 ranks; the same tasks at every step on every rank: True; equal weights: True" \
        in output, output[-3000:]
    losses = values(line(output, r"step 3/3 loss \(rank 0's rows\)"))
    assert len(losses) == 1 and all(map(math.isfinite, losses.values()))  # one task per step
    check_dev(output)

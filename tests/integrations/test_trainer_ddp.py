"""MultiTaskTrainer under torchrun (2 gloo processes, the Trainer's accelerate/DDP path) equals
one process on the global batch, for the plain sum, PCGrad and a loss weighting, with exactly
one gradient all-reduce per optimizer step (DDP's own reducer never runs: nothing is
all-reduced twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_tiny_models import TinyMultiTask
from trainer_ddp_worker import STEPS, train

WORKER = Path(__file__).with_name("trainer_ddp_worker.py")
TIMEOUT = 420


def torchrun(mode: str, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(WORKER), mode, str(out)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun with 2 gloo processes did not finish within {TIMEOUT} s")
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sum", "pcgrad", "loss", "pcgrad-accumulation"])
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path, mode):
    ranks = torchrun(mode, tmp_path / "ddp")
    single = train(mode.removesuffix("-accumulation"), tmp_path / "single", batch_size=4)
    # (4 rows per task and step: 2 ranks x 2 rows, or 2 ranks x 2 micro-batches x 1 row)
    torch.manual_seed(0)
    initial = TinyMultiTask(dropout=0.0).state_dict()
    for key, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # replicas agree
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6)
    moved = max(float((single["state"][k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3  # three steps at lr 1e-3: far above the tolerance
    for ddp_log, one_log in zip(ranks[0]["log"], single["log"], strict=True):
        for key in ("loss", "loss_sst", "loss_qqp", "loss_sts"):
            assert ddp_log[key] == pytest.approx(one_log[key], rel=1e-5), key
    # the evaluation gathers every rank's rows (each counted once)
    assert set(ranks[0]["eval"]) == {"eval_loss", "eval_sst_loss", "eval_qqp_loss", "eval_sts_loss"}
    for key, value in single["eval"].items():
        assert ranks[0]["eval"][key] == pytest.approx(value, rel=1e-5), key
    # DDP's reducer never runs; one big all-reduce per optimizer step does its work: the mean
    # gradient (P numbers plus a presence flag per tensor) or the T x P task gradients
    result = ranks[0]
    assert result["ddp_allreduces"] == 0
    size = result["trainable"]
    expected = 3 * size if mode.startswith("pcgrad") else size + result["num_params"]
    big = [n for n in result["all_reduce_sizes"] if n >= size]
    assert big == [expected] * STEPS
    if mode.startswith("pcgrad"):
        assert result["surgery_bytes"] > 0 and single["surgery_bytes"] == 0
    if mode == "loss":  # the weighting saw the global losses: the same state as one process
        torch.testing.assert_close(result["weighting"], single["weighting"], rtol=1e-5, atol=1e-7)
        assert torch.equal(result["weighting"], ranks[1]["weighting"])

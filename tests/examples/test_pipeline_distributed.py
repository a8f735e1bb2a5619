"""The example under torchrun (2 gloo processes on CPU) and the SIGKILL + ``--resume`` test.

Determinism settings of the multi-process and kill tests: ``--threads 1`` (OMP_NUM_THREADS=1),
``--deterministic``, and ``--dropout 0 --encoder-dropout 0`` where one process is compared
with two (dropout masks are drawn per rank). Every multi-process test has a timeout: the
spawned ones run through ``tests/gloo_ranks.py`` (barrier, teardown, ``os._exit``), torchrun
and the killed runs through ``subprocess`` with one.

``MTLKIT_SIGKILL_STEPS`` (comma-separated) overrides the steps the SIGKILL test kills at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import assert_same_weights, kill_at_step, pipeline_env, write_cs224n

import bert_sst_qqp_sts as cli
from gloo_ranks import run_on_ranks
from multitask_bert.distributed import (
    DistEnv,
    ShardCollate,
    average_gradients,
    pop_loss_scale,
    rank_rows,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "bert_sst_qqp_sts.py"


_env = pipeline_env


def _flags(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # float32 on every CPU (`auto` would pick bf16 where it is native; 2 ranks against 1 is
    # compared to float32 rounding)
    return ["--model", str(model), "--data-dir", str(data), "--out", str(out),
            "--max-length", "32", "--no-progress", "--threads", "1", "--no-plots",
            "--deterministic", "--precision", "fp32", *extra]


def _torchrun(flags: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPT), *flags]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


_assert_same_weights = assert_same_weights


# ----------------------------------------------------------------------------- sharding math


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_rows_partition_every_batch(world: int) -> None:
    for n in range(0, 11):
        shards = [rank_rows(n, DistEnv(rank=r, world=world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        equal = [rank_rows(n, DistEnv(rank=r, world=world), equal=True) for r in range(world)]
        assert {len(s) for s in equal} == {n // world}
        assert sorted(i for s in equal for i in s) == list(range(n - n % world))


@pytest.mark.parametrize(("world", "n"), [(2, 3), (2, 8), (3, 7), (4, 2)])
def test_scaled_shard_losses_average_to_the_global_batch_gradient(world: int, n: int) -> None:
    """Per-rank mean losses scaled by rows_here * world / rows_global, gradients averaged
    over the ranks (what average_gradients does) = the gradient of the global mean loss,
    also when a rank has no row (it then computes a row with scale 0)."""
    torch.manual_seed(0)
    x, y = torch.randn(n, 5), torch.randn(n)
    w = torch.randn(5, requires_grad=True)

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        return {"x": x[rows], "y": y[rows]}

    ((x @ w - y) ** 2).mean().backward()
    want, w.grad = w.grad.clone(), None
    total = torch.zeros(5)
    for r in range(world):
        env = DistEnv(rank=r, world=world)
        batch = ShardCollate(collate, env)(list(range(n)))
        scale = pop_loss_scale(batch, env)
        (((batch["x"] @ w - batch["y"]) ** 2).mean() * scale).backward()
        total += w.grad
        w.grad = None
    torch.testing.assert_close(total / world, want)


# ----------------------------------------------------------------------------- collectives


def _collectives_body(rank: int, world: int) -> dict:
    from multitask_bert.distributed import all_gather_objects, parameters_agree

    env = DistEnv(rank=rank, world=world)
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    c = torch.nn.Parameter(torch.zeros(1))  # no rank has a gradient
    a.grad = torch.full((3,), float(rank + 1))
    b.grad = torch.ones(2, 2) * 4 if rank == 0 else None  # only rank 0 has one
    average_gradients([a, b, c], env)
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.bias.fill_(float(rank))
    result = {"a": a.grad.tolist(), "b": b.grad.tolist(), "c": c.grad,
              "gathered": all_gather_objects(("rank", rank), env),
              "agree_differ": parameters_agree(m, env)}
    with torch.no_grad():
        m.bias.fill_(0.0)
    result["agree_same"] = parameters_agree(m, env)
    # SimCSE under the pipeline's wiring: equal shards, gather across ranks, averaged
    # gradients == one process on the whole batch
    from mtlkit import SimCSELoss

    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 4)
    x1, x2 = torch.randn(9, 6), torch.randn(9, 6)
    SimCSELoss(temperature=0.5)(enc(x1[:8]), enc(x2[:8])).backward()  # 9 % 2 dropped
    want = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    batch = ShardCollate(lambda rows: {"a": x1[rows], "b": x2[rows]}, env,
                         equal=True)(list(range(9)))
    assert pop_loss_scale(batch, env) == 1.0
    SimCSELoss(temperature=0.5, gather_across_ranks=True)(enc(batch["a"]),
                                                          enc(batch["b"])).backward()
    average_gradients(list(enc.parameters()), env)
    result["simcse_max_err"] = max(float((p.grad - w).abs().max())
                                   for p, w in zip(enc.parameters(), want, strict=True))
    return result


@pytest.mark.slow
def test_average_gradients_and_gathers_on_two_processes(tmp_path: Path) -> None:
    r = run_on_ranks(_collectives_body, tmp_path, timeout=180)[0]
    assert r["a"] == [1.5, 1.5, 1.5]
    assert r["b"] == [[2.0, 2.0], [2.0, 2.0]]  # a missing gradient counts as zeros
    assert r["c"] is None  # no rank had one: stays None (AdamW skips it, as in one process)
    assert r["gathered"] == [("rank", 0), ("rank", 1)]
    assert r["agree_differ"] is False and r["agree_same"] is True
    assert r["simcse_max_err"] < 1e-6


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tiny_model_dir: Path, data_dir: Path,
                                                  tmp_path: Path) -> None:
    """2 gloo ranks on the same global batches (3 rows per task: shards of 2 and 1) give the
    weights of one process, and ``--resume`` under torchrun continues to the weights of an
    uninterrupted run. (The SimCSE stage is left out: on a random tiny BERT its gradients
    are near zero and AdamW's first steps, about lr * sign(g), turn float-rounding
    differences into lr-sized ones; its wiring is checked on exact gradients above.)"""
    extra = ["--preset", "ce-interleaved-clip", "--batch-size", "3", "--lr", "1e-3",
             "--dropout", "0", "--encoder-dropout", "0", "--log-every", "1"]
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _torchrun(_flags(tiny_model_dir, data_dir, two, *extra, "--epochs", "1"))
    assert "world size 2" in proc.stderr and "[rank 1]" in proc.stderr
    m1 = cli.main(_flags(tiny_model_dir, data_dir, one, *extra, "--epochs", "2"))
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_steps"] == 8
    for task in ("sst", "qqp", "sts"):
        for split in ("dev", "test"):  # gathered predictions: every row, in file order
            rows = (two / "predictions" / f"{task}-{split}.csv").read_text().splitlines()
            ones = (one / "predictions" / f"{task}-{split}.csv").read_text().splitlines()
            assert [r.split(",")[0] for r in rows] == [r.split(",")[0] for r in ones]
    assert (two / "errors.md").is_file() and not list(two.glob("checkpoints/.*"))
    assert metrics["history"][0]["dev"] == pytest.approx(m1["history"][0]["dev"], abs=1e-4)
    _torchrun(_flags(tiny_model_dir, data_dir, two, *extra, "--epochs", "2", "--resume"))
    resumed = json.loads((two / "metrics.json").read_text())
    assert resumed["global_steps"] == m1["global_steps"] == 16
    _assert_same_weights(two / "checkpoints" / "last", one / "checkpoints" / "last", 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--preset", "ce-interleaved-surgery", "--smart-weight", "1", "--contrastive",
     "--contrastive-unsup-steps", "3", "--contrastive-sup-steps", "3",
     "--contrastive-batch-size", "5"],
    ["--preset", "ce-mixture-lora-clip", "--lora-r", "4"],
    ["--preset", "ce-interleaved-clip", "--pair-swap", "--symmetric-eval", "--ema", "0.9",
     "--layer-lr-decay", "0.9", "--task-batch-sizes", "sts=6"],
], ids=["surgery-smart-simcse", "lora-mixture", "recipe-flags"])
def test_torchrun_every_ingredient(flags: list[str], tiny_model_dir: Path, data_dir: Path,
                                   tmp_path: Path) -> None:
    """PCGrad + SMART + both SimCSE stages (batches of 5: 2 rows per rank, one dropped), the
    LoRA mixture, and the best recipe's flags (pair orders, weight average, layer-wise rates,
    a per-task batch size), under 2 ranks: they complete, and the pipeline's own check that
    every rank ends with the same parameters passes (it raises otherwise)."""
    out = tmp_path / "out"
    _torchrun(_flags(tiny_model_dir, data_dir, out, *flags, "--batch-size", "4", "--epochs",
                     "2", "--max-steps", "8"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_steps"] == 8
    assert len(metrics["history"]) == 2  # epoch 1 (6 steps of 2 rows per rank), partial 2


# ----------------------------------------------------------------------------- SIGKILL

# 2 epochs of 16 steps, a checkpoint every 5: step 16 ends epoch 1 (killed during its
# evaluation and save), step 6 is the first after a checkpoint, step 27 is mid-epoch 2
KILL_STEPS = [int(s) for s in os.environ.get("MTLKIT_SIGKILL_STEPS", "6,16,27").split(",")]
_KILL_FLAGS = ["--preset", "ce-interleaved-clip", "--batch-size", "4", "--lr", "1e-3",
               "--epochs", "2", "--checkpoint-every", "5", "--log-every", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, Path]:
    """(data, output) of the run the killed runs must end equal to, in a subprocess too."""
    root = tmp_path_factory.mktemp("sigkill")
    data = write_cs224n(root / "data", n_train=64, n_dev=12)
    ref = subprocess.run([sys.executable, str(SCRIPT),
                          *_flags(tiny_model_dir, data, root / "ref", *_KILL_FLAGS)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return data, root / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_STEPS)
def test_sigkill_then_resume_equals_uninterrupted(kill_at: int, tiny_model_dir: Path,
                                                  uninterrupted: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    data, ref_out = uninterrupted
    cut_out = tmp_path / "cut"
    kill_at_step(_flags(tiny_model_dir, data, cut_out, *_KILL_FLAGS), kill_at,
                 tmp_path / "cut.log")
    assert "metrics.json" not in os.listdir(cut_out)
    resumed = subprocess.run([sys.executable, str(SCRIPT),
                              *_flags(tiny_model_dir, data, cut_out, *_KILL_FLAGS, "--resume")],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((ref_out / "metrics.json").read_text())
    b = json.loads((cut_out / "metrics.json").read_text())
    msg = f"killed at step {kill_at}"
    assert b["best_dev"] == a["best_dev"], msg
    assert [h["dev"] for h in b["history"]] == [h["dev"] for h in a["history"]], msg
    assert [h["train_loss"] for h in b["history"]] == [h["train_loss"] for h in a["history"]]
    assert b["global_steps"] == a["global_steps"] == 32
    _assert_same_weights(ref_out / "checkpoints" / "last", cut_out / "checkpoints" / "last", 0)

"""SimCSELoss(gather_across_ranks=True) on 2 gloo processes equals one process, whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gloo_ranks import run_on_ranks
from mtlkit import SimCSELoss

pytestmark = pytest.mark.slow  # spawns 2 processes (about 10 s)

WORLD = 2
BATCH = 3  # rows per rank
D_IN, D_OUT = 6, 4

# name -> (SimCSELoss kwargs, with hard negatives, with ids, rows per rank)
CASES: dict[str, tuple[dict, bool, bool, int]] = {
    "plain": ({}, False, False, BATCH),
    "hard_negatives": ({"hard_negative_weight": 0.8}, True, False, BATCH),
    "ids": ({"temperature": 0.2}, False, True, BATCH),
    "symmetric_all": ({"symmetric": True, "hard_negative_weight": 0.5}, True, True, BATCH),
    "one_row_per_rank": ({}, False, False, 1),
}


def _global_data(rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    n = WORLD * rows
    return {
        "x1": torch.randn(n, D_IN, generator=g),
        "x2": torch.randn(n, D_IN, generator=g),
        "x3": torch.randn(n, D_IN, generator=g),
        # duplicates across ranks, so the masking needs the gathered ids
        "ids": torch.tensor([0, 1, 2, 0, 3, 2][:n]) if n == 6 else torch.arange(n),
    }


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, D_OUT), torch.nn.Tanh())


def _loss_and_grads(model, loss_fn, x1, x2, x3, ids, with_z3, with_ids):
    """Encode all views in one forward (DDP wants one forward per backward), then the loss."""
    inputs = [x1, x2] + ([x3] if with_z3 else [])
    z = model(torch.cat(inputs)).split(len(x1))
    loss = loss_fn(z[0], z[1], z[2] if with_z3 else None, ids if with_ids else None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rank_body(rank: int, world: int) -> dict[str, torch.Tensor]:
    results: dict[str, torch.Tensor] = {}
    for name, (kwargs, with_z3, with_ids, rows) in CASES.items():
        data = _global_data(rows)
        local = {k: v[rank * rows : (rank + 1) * rows] for k, v in data.items()}
        model = DistributedDataParallel(_encoder())
        loss_fn = SimCSELoss(gather_across_ranks=True, **kwargs)
        loss, grads = _loss_and_grads(model, loss_fn, **local, with_z3=with_z3,
                                      with_ids=with_ids)
        mean_loss = loss.clone()
        dist.all_reduce(mean_loss)
        results[f"{name}/loss"] = mean_loss / world
        for param, grad in grads.items():
            results[f"{name}/grad/{param.removeprefix('module.')}"] = grad
    # every rank must pass the same batch size
    try:
        SimCSELoss(gather_across_ranks=True)(torch.randn(2 + rank, 4), torch.randn(2 + rank, 4))
        results["uneven_raised"] = torch.tensor(False)
    except ValueError:
        results["uneven_raised"] = torch.tensor(True)
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    return run_on_ranks(_rank_body, tmp_path_factory.mktemp("simcse_ddp"), WORLD,
                        timeout=120, weights_only=True)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_on_the_global_batch(rank_results, name):
    kwargs, with_z3, with_ids, rows = CASES[name]
    model = _encoder()
    loss, grads = _loss_and_grads(model, SimCSELoss(**kwargs), **_global_data(rows),
                                  with_z3=with_z3, with_ids=with_ids)
    for result in rank_results:
        torch.testing.assert_close(result[f"{name}/loss"], loss)
        for param, grad in grads.items():
            torch.testing.assert_close(result[f"{name}/grad/{param}"], grad)


def test_ids_mask_across_ranks_changes_the_loss(rank_results):
    # guard against a vacuous "ids" case: masking really removed cross-rank duplicates
    kwargs, *_ = CASES["ids"]
    data = _global_data(BATCH)
    model = _encoder()
    with torch.no_grad():
        z1, z2 = model(data["x1"]), model(data["x2"])
    unmasked = SimCSELoss(**kwargs)(z1, z2)
    assert not torch.allclose(rank_results[0]["ids/loss"], unmasked)


def test_uneven_batches_raise_on_every_rank(rank_results):
    assert all(bool(result["uneven_raised"]) for result in rank_results)

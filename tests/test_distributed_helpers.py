"""mtlkit._distributed on two gloo ranks: gradient averaging, gather with gradients, hashing.

Every expected value is computed here from the per-rank inputs, not by the helpers.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import run_on_ranks
from mtlkit import average_gradients
from mtlkit._distributed import (
    all_gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
    stable_hash,
)


def rank_grad(rank: int) -> torch.Tensor:
    """The gradient rank ``rank`` holds for the shared float32 parameter."""
    return torch.tensor([rank + 1.0, 2.0 * (rank + 1), -3.0 * rank])


def gather_weights(rank: int) -> torch.Tensor:
    """The weights of rank ``rank``'s loss over the gathered (4, 3) tensor."""
    return torch.arange(12, dtype=torch.float32).reshape(4, 3) * (rank + 2)


def _body(rank: int, world: int) -> dict[str, object]:
    out: dict[str, object] = {"rank": get_rank(), "world": get_world_size(),
                              "distributed": is_distributed()}
    shared = torch.nn.Parameter(torch.zeros(3))
    shared.grad = rank_grad(rank)
    only_rank0 = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    if rank == 0:
        only_rank0.grad = torch.tensor([[1.0, -2.0], [4.0, 8.0]], dtype=torch.float64)
    never = torch.nn.Parameter(torch.zeros(2))
    transposed = torch.nn.Parameter(torch.zeros(2, 3))
    transposed.grad = (torch.arange(6.0).reshape(3, 2) * (rank + 1)).t()  # not contiguous
    average_gradients([shared, only_rank0, never, transposed],
                      group=dist.new_group([0, 1]))
    out["shared"] = shared.grad.clone()
    out["only_rank0"] = only_rank0.grad.clone()
    out["never"] = never.grad
    out["transposed"] = transposed.grad.clone()

    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = all_gather_with_grad(x)
    out["gathered"] = gathered.detach().clone()
    (gathered * gather_weights(rank)).sum().backward()
    out["x_grad"] = x.grad.clone()
    try:
        all_gather_with_grad(torch.ones(2 + rank, 3))
        out["uneven"] = "accepted"
    except ValueError as err:
        out["uneven"] = str(err)
    out["hash"] = stable_hash("mtlkit.tasks", 3, 1)
    out["signed_hash"] = stable_hash("a", 2, signed=True)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_on_ranks(_body, tmp_path_factory.mktemp("distributed_helpers"), timeout=180.0)


@pytest.mark.slow
def test_rank_queries(ranks):
    assert [(r["rank"], r["world"], r["distributed"]) for r in ranks] == [(0, 2, True),
                                                                          (1, 2, True)]


@pytest.mark.slow
def test_average_gradients_is_the_mean_over_ranks(ranks):
    mean = (rank_grad(0) + rank_grad(1)) / 2
    for r in ranks:
        assert torch.equal(r["shared"], mean)
        # rank 1 had no gradient: it counts as zeros, so the mean is half of rank 0's
        assert torch.equal(
            r["only_rank0"], torch.tensor([[0.5, -1.0], [2.0, 4.0]], dtype=torch.float64)
        )
        assert r["only_rank0"].dtype == torch.float64
        assert r["never"] is None  # no rank had one: none is invented
        assert torch.equal(r["transposed"], (torch.arange(6.0).reshape(3, 2) * 1.5).t())


@pytest.mark.slow
def test_all_gather_with_grad_routes_every_ranks_gradient_home(ranks):
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    total = gather_weights(0) + gather_weights(1)  # both ranks' losses depend on every row
    for rank, r in enumerate(ranks):
        assert torch.equal(r["gathered"], expected)
        assert torch.equal(r["x_grad"], total[2 * rank : 2 * rank + 2])
        assert r["uneven"].startswith("tensor: expected the same batch size")
        assert "[2, 3]" in r["uneven"]


@pytest.mark.slow
def test_stable_hash_agrees_across_processes(ranks):
    assert ranks[0]["hash"] == ranks[1]["hash"] == stable_hash("mtlkit.tasks", 3, 1)
    assert ranks[0]["signed_hash"] == ranks[1]["signed_hash"]
    assert -(2**63) <= ranks[0]["signed_hash"] < 2**63


def test_one_process_is_a_no_op():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 3.0])
    average_gradients([p])
    assert torch.equal(p.grad, torch.tensor([1.0, 3.0]))
    x = torch.ones(2, 3)
    assert all_gather_with_grad(x) is x
    assert (get_rank(), get_world_size(), is_distributed()) == (0, 1, False)

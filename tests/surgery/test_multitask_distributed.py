"""MultiTaskOptimizer(sync="tasks") on 2 gloo processes against one process on the global batch,
for five weightings: PCGrad (host), a constant, a stateful one (nonlinear in the Gramian), a
loss weighting with its own parameters and one nonlinear in the losses; and three of the
library's with the tasks' batches stacked in one forward (``opt.stacked``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from weightings_for_tests import Fixed, LogSumExp, LogVariance, RunningNorm

from gloo_ranks import run_on_ranks
from mtlkit import MultiTaskOptimizer
from mtlkit import weighting as weightings
from mtlkit.weighting import PCGrad as PCGradWeighting

pytestmark = pytest.mark.slow  # spawns 2 processes

WORLD, ROWS, STEPS = 2, 4, 3
TASKS = ("a", "b", "c")
CASES = {  # name -> (weighting factory, explicit shared params)
    "pcgrad_auto": (lambda: PCGradWeighting(seed=0), False),
    "fixed_explicit": (lambda: Fixed([0.7, 1.3, -0.4]), True),
    "running_norm_auto": (lambda: RunningNorm(), False),
    "log_variance": (lambda: LogVariance(len(TASKS)), False),
    "logsumexp": (lambda: LogSumExp(), False),
}
if hasattr(weightings, "by_name"):  # the library family, once it has landed
    CASES.update({
        "upgrad_explicit": (lambda: weightings.by_name("upgrad"), True),
        "nash_mtl_auto": (lambda: weightings.by_name("nash_mtl"), False),
        "dwa": (lambda: weightings.by_name("dwa", num_tasks=len(TASKS)), False),
    })
STACKED = {"upgrad_stacked": "upgrad_explicit", "nash_mtl_stacked": "nash_mtl_auto",
           "pcgrad_stacked": "pcgrad_auto"}
"""Cases run with one forward over the stacked batch inside ``opt.stacked`` (their settings
are the named case's)."""


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh())
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(6, 1) for t in TASKS})
        self.double()


def batch(step: int, rank: int, world: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(step)
    rows = slice(rank * ROWS, (rank + 1) * ROWS) if world > 1 else slice(0, WORLD * ROWS)
    out = {}
    for k, t in enumerate(TASKS):
        x = torch.randn(WORLD * ROWS, 5, generator=g, dtype=torch.float64)
        y = (k - 1.0) * x[:, 0] + 0.1 * torch.randn(WORLD * ROWS, generator=g, dtype=torch.float64)
        out[t] = (x[rows], y[rows])
    return out


def train(case: str, rank: int, world: int) -> dict:
    factory, explicit = CASES[STACKED.get(case, case)]
    net, weighting = Net(), factory()
    params = [*net.parameters(), *(weighting.parameters()
                                   if isinstance(weighting, torch.nn.Module) else [])]
    if isinstance(weighting, torch.nn.Module):
        weighting.double()
    opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.3), weighting, sync="tasks",
                             shared_params=list(net.body.parameters()) if explicit else None)
    for step in range(STEPS):
        opt.zero_grad()
        data = batch(step, rank, world)
        if case in STACKED:  # one forward and one backward for the three tasks
            rows = {t: len(x) for t, (x, _) in data.items()}
            with opt.stacked(net.body, rows):
                stacked = torch.cat([x for x, _ in data.values()])
                feats = net.body(stacked).split(list(rows.values()))
                opt.backward({t: F.mse_loss(net.heads[t](h).squeeze(-1), y)
                              for (t, (_, y)), h in zip(data.items(), feats, strict=True)})
        else:
            opt.backward({t: F.mse_loss(net.heads[t](net.body(x)).squeeze(-1), y)
                          for t, (x, y) in data.items()})
        opt.step()
    return {"params": {n: p.detach().clone() for n, p in net.named_parameters()},
            "weighting": opt.state_dict()["multitask"]["weighting_state"]}


def _rank_body(rank: int, world: int) -> dict:
    return {case: train(case, rank, world) for case in [*CASES, *STACKED]}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_rank_body, tmp_path_factory.mktemp("multitask_ddp"), WORLD)


@pytest.mark.parametrize("case", [*CASES, *STACKED])
def test_two_ranks_equal_one_process_on_the_global_batch(rank_results, case):
    # a stacked case against its plain case: one process, a backward per task
    reference = train(STACKED.get(case, case), 0, 1)
    moved = Net()
    for result in rank_results:
        for name, value in reference["params"].items():
            torch.testing.assert_close(result[case]["params"][name], value, rtol=1e-9,
                                       atol=1e-10, msg=name)
        for key, value in reference["weighting"].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                torch.testing.assert_close(result[case]["weighting"][key], value, rtol=1e-9,
                                           atol=1e-10, msg=key)
    assert not torch.equal(reference["params"]["body.0.weight"], moved.body[0].weight.detach())


@pytest.mark.parametrize("case", ["running_norm_auto", "logsumexp"])
def test_a_local_step_differs_from_the_global_one(rank_results, case):
    # the comparison has power: one process on rank 0's half alone lands elsewhere
    local = train(case, 0, WORLD)  # no process group here: rank 0's rows only
    assert not torch.allclose(local["params"]["body.0.weight"],
                              rank_results[0][case]["params"]["body.0.weight"])

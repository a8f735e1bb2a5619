"""PCGrad(sync=...) on 2 gloo processes against one process on the concatenated batch.

One spawn runs every case; the single-process references run in the test process (which has no
process group, so PCGrad issues no collective there).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from gloo_ranks import run_on_ranks
from mtlkit import PCGrad
from mtlkit.surgery._collectives import bytes_per_step

pytestmark = pytest.mark.slow  # spawns 2 processes (about 10 s)

WORLD = 2
ROWS = 4  # rows per rank and task
D_IN, HIDDEN = 5, 6
TASKS = ("a", "b", "c")
STEPS = 3

# name -> (ddp, explicit shared params, reduction, optimizer, backward calls per step, sync)
CASES: dict[str, tuple[bool, bool, str, str, int, str]] = {
    "plain_explicit_sum_sgd": (False, True, "sum", "sgd", 1, "tasks"),
    "plain_auto_mean_adam": (False, False, "mean", "adam", 1, "tasks"),
    "ddp_explicit_sum_adam": (True, True, "sum", "adam", 1, "tasks"),
    "ddp_auto_mean_sgd": (True, False, "mean", "sgd", 1, "tasks"),
    "ddp_explicit_accumulate": (True, True, "sum", "sgd", 2, "tasks"),
    "plain_auto_accumulate": (False, False, "sum", "adam", 2, "tasks"),
    "aggregate_explicit_sgd": (False, True, "sum", "sgd", 1, "aggregate"),
    "aggregate_auto_adam_ddp": (True, False, "mean", "adam", 1, "aggregate"),
    "none_explicit": (False, True, "sum", "sgd", 1, "none"),
}


class Net(torch.nn.Module):
    """A shared body, one head per task, and ``bonus``: a parameter that only rows flagged in
    rank 1's shard reach (so rank 0 never reaches it, the global batch does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(D_IN, HIDDEN), torch.nn.Tanh())
        self.heads = torch.nn.ModuleDict(
            {"a": torch.nn.Linear(HIDDEN, 3), "b": torch.nn.Linear(HIDDEN, 1),
             "c": torch.nn.Linear(HIDDEN, 1)}
        )
        self.bonus = torch.nn.Parameter(torch.tensor(0.5))
        self.double()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = {t: self.heads[t](self.body(batch[t][0])) for t in TASKS}
        flag = batch["a"][2]
        if bool(flag.any()):
            out["bonus"] = self.bonus * (batch["a"][0][:, 0] * flag).sum()
        return out


def task_losses(out: dict, batch: dict) -> dict[str, torch.Tensor]:
    losses = {
        "a": F.cross_entropy(out["a"], batch["a"][1]),
        "b": F.mse_loss(out["b"].squeeze(-1), batch["b"][1]),
        "c": F.mse_loss(out["c"].squeeze(-1), batch["c"][1]),
    }
    if "bonus" in out:  # a mean over the task's rows, like the rest of its loss
        losses["a"] = losses["a"] + out["bonus"] / len(batch["a"][1])
    return losses


def global_batch(step: int, call: int) -> dict:
    g = torch.Generator().manual_seed(100 * step + call)
    n = WORLD * ROWS
    xa, xb = torch.randn(n, D_IN, generator=g), torch.randn(n, D_IN, generator=g)
    yb = xb[:, 0] + 0.1 * torch.randn(n, generator=g)
    flag = torch.zeros(n)
    flag[ROWS + 1 : ROWS + 3] = 1.0  # in rank 1's shard only
    return {
        "a": (xa.double(), torch.randint(0, 3, (n,), generator=g), flag.double()),
        "b": (xb.double(), yb.double()),
        "c": (xb.double(), -2.0 * yb.double()),  # pulls the body against task b
    }


def shard(batch: dict, rank: int, world: int, call: int, calls: int) -> dict:
    """This rank's rows; with ``calls`` micro-batches, the ``call``-th slice of them."""
    per_rank = WORLD * ROWS // world
    size = per_rank // calls
    if world == 1:  # the reference: the same micro-batch rows of every rank, concatenated
        idx = torch.cat([torch.arange(r * ROWS + call * (ROWS // calls),
                                      r * ROWS + (call + 1) * (ROWS // calls))
                         for r in range(WORLD)])
    else:
        idx = torch.arange(rank * per_rank + call * size, rank * per_rank + (call + 1) * size)
    return {t: tuple(v[idx] for v in vals) for t, vals in batch.items()}


def make_optimizer(case: str, net: torch.nn.Module, params, sync: str | None = None,
                   seed: int = 0) -> PCGrad:
    _, explicit, reduction, kind, _, mode = CASES[case]
    base = (torch.optim.SGD(params, lr=0.2) if kind == "sgd"
            else torch.optim.Adam(params, lr=0.05))
    shared = list(net.body.parameters()) if explicit else None
    return PCGrad(base, shared_params=shared, reduction=reduction, seed=seed,
                  sync=sync or mode)


class ByteCounter:
    """Wraps torch.distributed's collectives in a rank process and adds up their payloads."""

    def __init__(self) -> None:
        self.sent = 0
        for name in ("all_reduce", "all_gather", "broadcast"):
            setattr(dist, name, self._wrap(getattr(dist, name), name))

    def _wrap(self, collective, name):
        def counted(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0]
            self.sent += tensor.numel() * tensor.element_size()
            return collective(*args, **kwargs)

        return counted

    def take(self) -> int:
        sent, self.sent = self.sent, 0
        return sent


COUNTER: ByteCounter | None = None


def train(case: str, rank: int, world: int) -> dict:
    """``STEPS`` steps of ``case``; world 1 is the single-process run on the global batch."""
    ddp, _, _, _, calls, mode = CASES[case]
    net = Net()
    model = DistributedDataParallel(net) if ddp and world > 1 else net
    # "tasks": rank 0's visiting orders are broadcast, so the other ranks' seeds must not matter
    seed = 0 if rank == 0 or mode != "tasks" else 1000 + rank
    opt = make_optimizer(case, net, list(model.parameters()), seed=seed)
    conflicts, comm, counted = 0, [], []
    for step in range(STEPS):
        opt.zero_grad()
        for call in range(calls):
            batch = shard(global_batch(step, call), rank, world, call, calls)
            if isinstance(model, DistributedDataParallel):
                with model.no_sync():  # the forward too: DDP prepares its reducer there
                    stats = opt.backward(task_losses(model(batch), batch))
            else:
                stats = opt.backward(task_losses(model(batch), batch))
            conflicts += stats.num_conflicts
            comm.append(stats.comm_bytes)
            counted.append(COUNTER.take() if COUNTER is not None else 0)
        opt.step()
    return {"params": {n: p.detach().clone() for n, p in net.named_parameters()},
            "conflicts": conflicts, "comm": comm, "counted": counted,
            "generator": opt.state_dict()["pcgrad"]["generator"]}


def aggregate_reference(case: str) -> dict:
    """Naive "aggregate": each rank's PCGrad on its own shard, the gradients averaged, one step."""
    net = Net()
    params = list(net.parameters())
    opt = make_optimizer(case, net, params)
    per_rank = [make_optimizer(case, net, params) for _ in range(WORLD)]  # one generator each
    for step in range(STEPS):
        grads = []
        for rank, rank_opt in enumerate(per_rank):
            rank_opt.zero_grad()
            batch = shard(global_batch(step, 0), rank, WORLD, 0, 1)
            rank_opt.backward(task_losses(net(batch), batch))
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                          for p in params])
        for p, *gs in zip(params, *grads, strict=True):
            p.grad = sum(gs) / WORLD
        opt.step()
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def _mismatch(rank: int) -> dict[str, str]:
    """Ranks that backpropagate different tasks (order, then count) must raise, not hang."""
    messages = {}
    for name, order in {"order": (["a", "b"], ["b", "a"]), "count": (["a", "b"], ["a"])}.items():
        theta = torch.zeros(3, requires_grad=True)
        opt = PCGrad(torch.optim.SGD([theta], lr=0.1), seed=0)
        losses = {t: (theta * (i + 1)).sum() for i, t in enumerate(order[rank])}
        try:
            opt.backward(losses)
            messages[name] = ""
        except ValueError as exc:
            messages[name] = str(exc)
    return messages


def _rank_body(rank: int, world: int) -> dict:
    global COUNTER
    COUNTER = ByteCounter()
    results: dict = {case: train(case, rank, world) for case in CASES}
    results["mismatch"] = _mismatch(rank)
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_rank_body, tmp_path_factory.mktemp("pcgrad_ddp"), WORLD)


def assert_params_close(got: dict, want: dict) -> None:
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-10, msg=name)


TASK_CASES = [c for c, spec in CASES.items() if spec[5] == "tasks"]


@pytest.mark.parametrize("case", TASK_CASES)
def test_tasks_sync_equals_one_process_on_the_global_batch(rank_results, case):
    reference = train(case, rank=0, world=1)
    assert reference["conflicts"] > 0, "no conflict: the comparison would not test surgery"
    for result in rank_results:
        assert_params_close(result[case]["params"], reference["params"])
    # rank 0's state_dict is the one to save: its generator drew the orders everybody used
    assert torch.equal(rank_results[0][case]["generator"], reference["generator"])
    # the bonus parameter (reached only on rank 1) moved on rank 0 too
    assert not torch.equal(rank_results[0][case]["params"]["bonus"], Net().bonus.detach())


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[5] == "aggregate"])
def test_aggregate_equals_the_mean_of_per_rank_surgeries(rank_results, case):
    want = aggregate_reference(case)
    for result in rank_results:
        assert_params_close(result[case]["params"], want)
    # and it is not the exact algorithm: the single-process run on the global batch differs
    exact = train(case, rank=0, world=1)["params"]
    assert any(not torch.allclose(want[n], exact[n]) for n in ("body.0.weight",))


def test_none_sync_leaves_the_ranks_apart(rank_results):
    first, second = (r["none_explicit"]["params"]["body.0.weight"] for r in rank_results)
    assert not torch.allclose(first, second)
    assert all(c == 0 for r in rank_results for c in r["none_explicit"]["comm"])


def expected_bytes(mode: str, explicit: bool) -> int:
    """Each rank's payload per step, counted by hand from the model (float64, T = 3)."""
    net, tasks = Net(), len(TASKS)
    managed = list(net.body.parameters()) if explicit else list(net.parameters())
    heads = [p for p in net.parameters() if all(p is not q for q in managed)]
    n, numel = len(managed), sum(p.numel() for p in managed)
    head_numel = sum(p.numel() for p in heads)  # every head has a gradient on some rank
    signature = (2 + 4) * 8  # task count, name hash, 4 layout integers (int64)
    flags = tasks * n + n + len(heads)  # reach, had-gradient and head flags (one byte each)
    if mode == "tasks":
        return signature + flags + (tasks * numel + head_numel) * 8 + tasks * 8  # + weights
    return signature + flags + (numel + head_numel) * 8


def test_communication_volume_matches_an_independent_count(rank_results):
    for case in ("plain_explicit_sum_sgd", "plain_auto_mean_adam", "aggregate_explicit_sgd",
                 "ddp_explicit_sum_adam"):
        _, explicit, _, _, _, mode = CASES[case]
        want = expected_bytes(mode, explicit)
        for result in rank_results:
            # what the collectives were handed == the library's count == the hand count
            assert result[case]["counted"] == result[case]["comm"] == [want] * STEPS, case
    net = Net()
    body = sum(p.numel() for p in net.body.parameters())
    everything = sum(p.numel() for p in net.parameters())
    assert bytes_per_step("tasks", 3, body, 8, everything - body) == 3 * body * 8 + (
        everything - body) * 8


def test_ranks_with_different_tasks_raise_naming_both_lists(rank_results):
    for result in rank_results:
        order, count = result["mismatch"]["order"], result["mismatch"]["count"]
        assert "rank 0: ['a', 'b']" in order and "rank 1: ['b', 'a']" in order
        assert "rank 0: ['a', 'b']" in count and "rank 1: ['a']" in count


def test_without_a_process_group_nothing_is_communicated():
    assert not dist.is_initialized()
    net = Net()
    opt = make_optimizer("plain_explicit_sum_sgd", net, list(net.parameters()))
    batch = shard(global_batch(0, 0), 0, 1, 0, 1)
    stats = opt.backward(task_losses(net(batch), batch))
    assert stats.comm_bytes == 0
    ref = copy.deepcopy(net)
    ref_opt = make_optimizer("plain_explicit_sum_sgd", ref, list(ref.parameters()), "none")
    ref_opt.backward(task_losses(ref(batch), batch))
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_bad_sync_arguments():
    theta = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="sync"):
        PCGrad(torch.optim.SGD([theta], lr=0.1), sync="everything")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="process_group"):
        PCGrad(torch.optim.SGD([theta], lr=0.1), process_group="world")

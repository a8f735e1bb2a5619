"""One host synchronisation per step, whatever T (counted with host_reads on the CPU)."""

from __future__ import annotations

import pytest
import torch
from host_reads import counting

from mtlkit import MultiTaskOptimizer, PCGrad
from mtlkit.weighting import LossWeighting, Weighting


class MinNormOfTwo(Weighting):
    """MGDA's closed form for two tasks, computed on the device (no host read)."""

    def weights(self, gramian):
        g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
        denom = g11 + g22 - 2 * g12
        alpha = torch.where(denom > 0, (g22 - g12) / denom.clamp_min(1e-300), 0.5).clamp(0, 1)
        return torch.stack([alpha, 1 - alpha])


class PlainSum(LossWeighting):
    def forward(self, losses):
        return losses.sum()


def model_and_batch(num_tasks: int):
    torch.manual_seed(0)
    body = torch.nn.Linear(4, 6)
    heads = torch.nn.ModuleList(torch.nn.Linear(6, 1) for _ in range(num_tasks))
    xs = [torch.randn(5, 4) for _ in range(num_tasks)]
    return body, heads, xs


def losses_of(body, heads, xs):
    return {f"t{i}": (head(body(x)) - i).pow(2).mean() for i, (head, x) in
            enumerate(zip(heads, xs, strict=True))}


def test_the_counter_counts_what_would_synchronise():
    theta = torch.ones(3, requires_grad=True)
    host = torch.ones(3)
    with counting(theta) as reads:
        losses = [theta.sum(), (2 * theta).sum(), (3 * theta).sum()]
        values = torch.stack([loss.detach() for loss in losses]).cpu()  # one read for all
        values.tolist()                                                  # host data: free
        for loss in losses:                                              # the old pattern:
            bool(torch.isfinite(loss))                                   # one read per task
        host.tolist()                                                    # never on the device
        theta.to(theta.device)                                           # a device move
    assert len(reads.reads) == 1 + len(losses), reads.reads


@pytest.mark.parametrize("num_tasks", [1, 3, 6])
@pytest.mark.parametrize("explicit", [False, True])
def test_a_pcgrad_step_reads_the_device_once(num_tasks, explicit):
    body, heads, xs = model_and_batch(num_tasks)
    params = [*body.parameters(), *heads.parameters()]
    shared = list(body.parameters()) if explicit else None
    opt = PCGrad(torch.optim.SGD(params, lr=0.1), shared_params=shared, seed=0)
    for _ in range(2):  # the second step runs on the detected layout
        opt.zero_grad()
        with counting(*params, *xs) as reads:
            stats = opt.backward(losses_of(body, heads, xs))
        assert len(reads.reads) == 1, reads.reads
        opt.step()
    assert stats.finite


def test_the_per_task_form_reads_the_device_once():
    body, heads, xs = model_and_batch(4)
    params = [*body.parameters(), *heads.parameters()]
    opt = PCGrad(torch.optim.SGD(params, lr=0.1), seed=0)
    with counting(*params, *xs) as reads:
        for name, loss in losses_of(body, heads, xs).items():
            opt.task_backward(name, loss)
        opt.combine()
    assert len(reads.reads) == 1, reads.reads


@pytest.mark.parametrize("weighting", [MinNormOfTwo(), PlainSum()], ids=["gramian", "loss"])
def test_a_device_weighting_step_reads_the_device_once(weighting):
    body, heads, xs = model_and_batch(2)
    params = [*body.parameters(), *heads.parameters()]
    opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), weighting)
    with counting(*params, *xs) as reads:
        opt.backward(losses_of(body, heads, xs))
    assert len(reads.reads) == 1, reads.reads


class ReadsTheGramian(Weighting):
    """Equal weights, after reading the Gramian on the host: what a weighting must not do."""

    def weights(self, gramian):
        scale = float(gramian.diagonal().sum())  # a host read
        return torch.ones(gramian.shape[0], dtype=gramian.dtype) * (scale > -1)


def test_a_read_inside_a_weighting_is_counted():
    body, heads, xs = model_and_batch(3)
    params = [*body.parameters(), *heads.parameters()]
    opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), ReadsTheGramian())
    with counting(*params, *xs) as reads:
        opt.backward(losses_of(body, heads, xs))
    assert len(reads.reads) == 2, reads.reads

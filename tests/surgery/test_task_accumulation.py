"""Gradient accumulation of task gradients: a task backpropagated again before ``combine()``
adds to its gradient, so the weighting combines each task's gradient of the whole accumulated
batch once (the Trainer's algorithm under ``gradient_accumulation_steps``).

Reference: each task's gradient summed over the micro-batches by ``torch.autograd.grad`` (an
explicit loop), its Gramian given to a fresh instance of the weighting, ``w @ J``.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit import MultiTaskOptimizer, UnsplittableModel
from mtlkit import weighting as weightings

TASKS = ("a", "b")


def make(seed: int = 0):
    torch.manual_seed(seed)
    body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5))
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(5, 1) for t in TASKS})
    return body, heads


def micro_batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # (task a's rows, task b's rows) per micro-batch, of unequal sizes
    return [(torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)),
            (torch.randn(2, 4, generator=g), torch.randn(4, 4, generator=g))]


def loss_of(heads, task: str, features: torch.Tensor) -> torch.Tensor:
    return heads[task](features).pow(2).mean() * (1.0 if task == "a" else 3.0)


def expected_grads(name: str):
    """The shared parameters' combined gradient and each head's, from the explicit loop."""
    body, heads = make()
    shared = list(body.parameters())
    rows = []
    for task in TASKS:
        x_index = TASKS.index(task)
        total = sum(loss_of(heads, task, body(mb[x_index])) for mb in micro_batches())
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, shared)]))
    jac = torch.stack(rows).double()
    w = weightings.by_name(name) if name != "pcgrad" else weightings.PCGrad(seed=0)
    combined = w(jac @ jac.T) @ jac
    head_grads = {}
    for task in TASKS:
        x_index = TASKS.index(task)
        total = sum(loss_of(heads, task, body(mb[x_index])) for mb in micro_batches())
        head_grads[task] = torch.autograd.grad(total, list(heads[task].parameters()))
    return combined, head_grads


def optimizer(body, heads, name: str, scaler=None) -> MultiTaskOptimizer:
    w = weightings.by_name(name) if name != "pcgrad" else weightings.PCGrad(seed=0)
    params = [*body.parameters(), *heads.parameters()]
    return MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), w,
                              shared_params=body.parameters(), grad_scaler=scaler)


def check(body, heads, combined, head_grads, scale: float = 1.0) -> None:
    got = torch.cat([p.grad.reshape(-1) for p in body.parameters()]).double() / scale
    torch.testing.assert_close(got, combined, rtol=1e-5, atol=1e-7)
    for task in TASKS:
        for p, g in zip(heads[task].parameters(), head_grads[task], strict=True):
            torch.testing.assert_close(p.grad / scale, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "nash_mtl", "mgda"])
@pytest.mark.parametrize("scaled", [False, True])
def test_a_task_backpropagated_again_adds_to_its_gradient(name, scaled):
    combined, head_grads = expected_grads(name)
    body, heads = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None
    opt = optimizer(body, heads, name, scaler)
    first, second = micro_batches()
    for task, x in zip(TASKS, first, strict=True):
        opt.task_backward(task, loss_of(heads, task, body(x)))
    for task, x in reversed(list(zip(TASKS, second, strict=True))):  # b first this time
        opt.task_backward(task, loss_of(heads, task, body(x)))
    stats = opt.combine()
    assert stats.tasks == TASKS  # the order the tasks first came
    check(body, heads, combined, head_grads, scale=2.0**10 if scaled else 1.0)


@pytest.mark.parametrize("name", ["upgrad", "nash_mtl"])
def test_stacked_micro_batches_add_to_the_task_gradients(name):
    combined, head_grads = expected_grads(name)
    body, heads = make()
    opt = optimizer(body, heads, name)
    for x_a, x_b in micro_batches():
        with opt.stacked(body, {"a": len(x_a), "b": len(x_b)}):
            h_a, h_b = body(torch.cat([x_a, x_b])).split([len(x_a), len(x_b)])
            opt._stacked_record({"a": loss_of(heads, "a", h_a), "b": loss_of(heads, "b", h_b)})
    assert opt.combine().tasks == TASKS
    check(body, heads, combined, head_grads)


def test_a_failing_backward_of_a_recorded_task_drops_the_step():
    body, heads = make()
    opt = optimizer(body, heads, "upgrad")
    x = torch.randn(3, 4)
    opt.task_backward("b", loss_of(heads, "b", body(x)))
    loss = loss_of(heads, "a", body(x))
    opt.task_backward("a", loss)
    with pytest.raises(RuntimeError, match="second time"):  # its graph is freed
        opt.task_backward("a", loss)
    assert all(p.grad is None for p in body.parameters())  # as before the step
    with pytest.raises(RuntimeError, match="no task_backward"):
        opt.combine()


class DirectWeight(torch.nn.Module):
    """A Linear layer whose weight is also used outside its forward: cannot be split."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 5)

    def forward(self, x):
        return torch.tanh(self.lin(x)) + x @ self.lin.weight.T


def test_an_unsplittable_micro_batch_after_recorded_ones_loses_the_step():
    body, heads = DirectWeight(), torch.nn.ModuleDict({t: torch.nn.Linear(5, 1) for t in TASKS})
    opt = optimizer(body, heads, "upgrad")
    x_a, x_b = micro_batches()[0]

    def record():
        with opt.stacked(body, {"a": len(x_a), "b": len(x_b)}):
            h_a, h_b = body(torch.cat([x_a, x_b])).split([len(x_a), len(x_b)])
            opt._stacked_record({"a": loss_of(heads, "a", h_a), "b": loss_of(heads, "b", h_b)})

    with pytest.raises(UnsplittableModel):  # nothing recorded yet: a caller can fall back
        record()
    assert all(p.grad is None for p in body.parameters())
    opt.task_backward("a", loss_of(heads, "a", body(x_a)))
    with pytest.raises(RuntimeError, match="accumulated step is lost"):
        record()
    assert all(p.grad is None for p in body.parameters())

"""Loss weightings: uncertainty weighting, DWA and FAMO against their papers' formulas and a
naive re-implementation of FAMO's official update (with torch.optim.Adam)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit import weighting

# ------------------------------------------------------------ uncertainty weighting


def test_uncertainty_loss_is_the_papers_formula_and_its_gradient():
    uw = weighting.UncertaintyWeighting(num_tasks=3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    losses = torch.tensor([2.0, 0.3, 5.0], requires_grad=True)
    total = uw(losses)
    sigma2 = torch.tensor([0.5, -1.0, 2.0]).exp()
    # L / (2 sigma^2) + log sigma
    expected = (losses / (2 * sigma2) + 0.5 * sigma2.log()).sum()
    torch.testing.assert_close(total, expected)
    total.backward()
    torch.testing.assert_close(uw.log_vars.grad, 0.5 * (1 - losses.detach() / sigma2))
    torch.testing.assert_close(losses.grad, 1 / (2 * sigma2))


def test_uncertainty_log_variances_are_the_only_parameters_and_learn_log_l():
    uw = weighting.UncertaintyWeighting(num_tasks=2)
    assert [p is uw.log_vars for p in uw.parameters()] == [True]
    optimizer = torch.optim.Adam(uw.parameters(), lr=0.05)
    losses = torch.tensor([4.0, 0.25])
    for _ in range(2000):
        optimizer.zero_grad()
        uw(losses).backward()
        optimizer.step()
    torch.testing.assert_close(uw.log_vars.detach(), losses.log(), atol=1e-3, rtol=0)


def test_uncertainty_state_dict_round_trip():
    uw = weighting.UncertaintyWeighting(num_tasks=2)
    with torch.no_grad():
        uw.log_vars.fill_(0.7)
    other = weighting.UncertaintyWeighting(num_tasks=2)
    other.load_state_dict(uw.state_dict())
    torch.testing.assert_close(other.log_vars, uw.log_vars)


# ------------------------------------------------------------ DWA


def _dwa_reference(epoch_means: list[list[float]], temperature: float) -> list[float]:
    """Liu et al. 2019, eq. 7: lambda_k = K exp(r_k / T) / sum_i exp(r_i / T)."""
    if len(epoch_means) < 2:
        return [1.0] * len(epoch_means[0] if epoch_means else [0.0])
    r = [a / b for a, b in zip(epoch_means[-1], epoch_means[-2], strict=True)]
    z = [math.exp(x / temperature) for x in r]
    return [len(r) * x / sum(z) for x in z]


def test_dwa_follows_the_papers_weights_over_epochs():
    gen = torch.Generator().manual_seed(0)
    dwa = weighting.DWA(num_tasks=3, temperature=2.0, steps_per_epoch=4)
    means: list[list[float]] = []
    for _ in range(5):
        expected = _dwa_reference(means, 2.0) if means else [1.0, 1.0, 1.0]
        batch = [torch.rand(3, generator=gen) + 0.1 for _ in range(4)]
        for losses in batch:
            torch.testing.assert_close(dwa.weights(), torch.tensor(expected))
            torch.testing.assert_close(dwa(losses), (torch.tensor(expected) * losses).sum())
        means.append(torch.stack(batch).mean(0).tolist())


def test_dwa_with_explicit_epochs_and_eval_mode():
    dwa = weighting.DWA(num_tasks=2)
    for value in ([1.0, 2.0], [3.0, 2.0]):
        dwa(torch.tensor(value))
    dwa.eval()
    dwa(torch.tensor([100.0, 100.0]))  # evaluation does not count
    dwa.train()
    dwa.end_epoch()  # epoch mean [2, 2]
    torch.testing.assert_close(dwa.weights(), torch.ones(2))
    dwa(torch.tensor([1.0, 4.0]))
    dwa.end_epoch()
    torch.testing.assert_close(dwa.weights(), torch.tensor(_dwa_reference([[2.0, 2.0],
                                                                           [1.0, 4.0]], 2.0)))
    dwa.end_epoch()  # an empty epoch changes nothing
    torch.testing.assert_close(dwa.weights(), torch.tensor(_dwa_reference([[2.0, 2.0],
                                                                           [1.0, 4.0]], 2.0)))


def test_dwa_state_dict_resumes_mid_epoch():
    gen = torch.Generator().manual_seed(1)
    stream = [torch.rand(2, generator=gen) + 0.1 for _ in range(11)]
    first = weighting.DWA(num_tasks=2, steps_per_epoch=3)
    for losses in stream[:7]:
        first(losses)
    resumed = weighting.DWA(num_tasks=2, steps_per_epoch=3)
    resumed.load_state_dict(first.state_dict())
    for losses in stream[7:]:
        torch.testing.assert_close(resumed(losses), first(losses))
    resumed.reset()
    torch.testing.assert_close(resumed.weights(), torch.ones(2))


# ------------------------------------------------------------ FAMO


class NaiveFAMO:
    """The official algorithm as published (famo.py): an Adam over a leaf tensor of logits,
    its gradient given by autograd through the softmax."""

    def __init__(self, num_tasks: int, lr: float = 0.025, gamma: float = 0.01) -> None:
        self.w = torch.zeros(num_tasks, requires_grad=True)
        self.opt = torch.optim.Adam([self.w], lr=lr, weight_decay=gamma)

    def loss(self, losses: torch.Tensor) -> torch.Tensor:
        self.prev = losses.detach()
        z = torch.softmax(self.w, -1).detach()
        d = losses + 1e-8
        return (d.log() * z / (z / d.detach()).sum()).sum()

    def update(self, after: torch.Tensor) -> None:
        delta = (self.prev + 1e-8).log() - (after + 1e-8).log()
        with torch.enable_grad():
            grad = torch.autograd.grad(torch.softmax(self.w, -1), self.w, grad_outputs=delta)[0]
        self.opt.zero_grad()
        self.w.grad = grad
        self.opt.step()


def test_famo_matches_the_official_algorithm_with_re_forwarded_losses():
    gen = torch.Generator().manual_seed(0)
    ours, naive = weighting.FAMO(num_tasks=3), NaiveFAMO(3)
    for _ in range(20):
        before = torch.rand(3, generator=gen) + 0.2
        after = before * (0.5 + torch.rand(3, generator=gen))
        torch.testing.assert_close(ours(before), naive.loss(before))
        ours.update(after)
        naive.update(after)
        torch.testing.assert_close(ours.logits, naive.w.detach(), rtol=1e-5, atol=1e-7)


def test_famo_gradient_weights_sum_to_one_and_favour_small_losses_of_heavy_tasks():
    famo = weighting.FAMO(num_tasks=3)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.5, 0.0, -0.5]))
    losses = torch.tensor([2.0, 1.0, 0.5], requires_grad=True)
    famo(losses).backward()
    z = torch.softmax(torch.tensor([0.5, 0.0, -0.5]), 0)
    expected = z / losses.detach()
    expected = expected / expected.sum()
    torch.testing.assert_close(losses.grad, expected)
    assert famo.logits.grad is None  # FAMO moves its logits itself


def test_famo_without_update_uses_the_next_calls_losses():
    gen = torch.Generator().manual_seed(2)
    stream = [torch.rand(2, generator=gen) + 0.2 for _ in range(6)]
    implicit, explicit = weighting.FAMO(num_tasks=2), weighting.FAMO(num_tasks=2)
    for i, losses in enumerate(stream):
        implicit(losses)
        if i:
            explicit.update(losses)  # the "after" losses of the previous step
        explicit(losses)
    torch.testing.assert_close(implicit.logits, explicit.logits)
    assert float(implicit.logits.abs().max()) > 0


def test_famo_state_dict_resumes_with_its_pending_losses():
    gen = torch.Generator().manual_seed(3)
    stream = [torch.rand(2, generator=gen) + 0.2 for _ in range(8)]
    first = weighting.FAMO(num_tasks=2)
    for losses in stream[:4]:
        first(losses)
    resumed = weighting.FAMO(num_tasks=2)
    resumed.load_state_dict(first.state_dict())
    for losses in stream[4:]:
        torch.testing.assert_close(resumed(losses), first(losses))
    torch.testing.assert_close(resumed.logits, first.logits)
    resumed.reset()
    torch.testing.assert_close(resumed.task_weights(), torch.full((2,), 0.5))


def test_famo_eval_mode_leaves_the_state_alone():
    famo = weighting.FAMO(num_tasks=2)
    famo(torch.tensor([1.0, 1.0]))
    famo.eval()
    famo(torch.tensor([0.1, 5.0]))
    famo(torch.tensor([0.2, 5.0]))
    assert float(famo.logits.abs().max()) == 0.0


# ------------------------------------------------------------ number of tasks


@pytest.mark.parametrize("cls", [weighting.DWA, weighting.FAMO])
def test_dwa_and_famo_take_the_number_of_tasks_from_the_first_losses(cls):
    gen = torch.Generator().manual_seed(5)
    stream = [torch.rand(3, generator=gen) + 0.2 for _ in range(5)]
    lazy, sized = cls(), cls(num_tasks=3)
    for losses in stream:
        torch.testing.assert_close(lazy(losses), sized(losses))
    assert lazy.num_tasks == 3
    with pytest.raises(ValueError, match=f"{cls.__name__}: losses: expected shape \\(3,\\)"):
        lazy(torch.ones(2))
    fresh = cls()
    fresh.load_state_dict(lazy.state_dict())  # a lazy instance takes the saved size
    torch.testing.assert_close(fresh(stream[0]), lazy(stream[0]))


def test_uncertainty_without_num_tasks_says_what_is_missing():
    uw = weighting.by_name("uncertainty")
    assert list(uw.parameters()) == []
    with pytest.raises(ValueError, match="UncertaintyWeighting: num_tasks: expected the number"):
        uw(torch.ones(2))


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("cls", [weighting.UncertaintyWeighting, weighting.DWA, weighting.FAMO])
def test_loss_weightings_check_their_input(cls):
    method = cls(num_tasks=2)
    with pytest.raises(ValueError, match=f"{cls.__name__}: losses: expected shape \\(2,\\)"):
        method(torch.ones(3))
    with pytest.raises(ValueError, match=f"{cls.__name__}: losses: expected a floating-point"):
        method(torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match=f"{cls.__name__}: num_tasks: expected an integer"):
        cls(num_tasks=0)


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (weighting.DWA, {"temperature": 0.0}, "DWA: temperature: expected a finite number > 0"),
    (weighting.DWA, {"steps_per_epoch": 0}, "DWA: steps_per_epoch: expected an integer"),
    (weighting.FAMO, {"lr": -1.0}, "FAMO: lr: expected a finite number > 0"),
    (weighting.FAMO, {"gamma": -0.1}, "FAMO: gamma: expected a finite number >= 0"),
])
def test_loss_weightings_check_their_options(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(num_tasks=2, **kwargs)

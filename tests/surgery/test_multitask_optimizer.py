"""MultiTaskOptimizer: the shared parameters get ``w @ J`` for any weighting, heads their plain
gradient; loss weightings get one backward; state round trips; bad weightings are refused.

References: the per-task gradients from ``torch.autograd.grad``, their float64 Gramian
``J J^T`` and the weights a deep copy of the weighting returns on it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from weightings_for_tests import Fixed, LogVariance, MinNormOfTwo, RunningNorm

from mtlkit import MultiTaskOptimizer, PCGrad
from mtlkit import weighting as weightings

TASKS = ("a", "b", "c")


class Net(torch.nn.Module):
    def __init__(self, tasks=TASKS):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(6, 1) for t in tasks})

    def losses(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        out = {}
        for k, t in enumerate(self.heads):
            x, y = torch.randn(5, 4, generator=g), torch.randn(5, generator=g) * (k - 1)
            out[t] = (self.heads[t](self.body(x)).squeeze(-1) - y).pow(2).mean()
        return out


def jacobian(losses, params):
    return torch.stack([torch.cat([g.reshape(-1).double() for g in
                                   torch.autograd.grad(loss, params, retain_graph=True)])
                        for loss in losses.values()])


def build(name: str, num_tasks: int = len(TASKS)):
    """A library weighting by name; the loss weightings get the number of tasks (uncertainty
    needs it to own its log-variances from the first step)."""
    built = weightings.by_name(name)
    if isinstance(built, weightings.LossWeighting):
        return weightings.by_name(name, num_tasks=num_tasks)
    return built


def library_names(gramian: bool) -> list[str]:
    """mtlkit.weighting's methods of one kind, once by_name has landed (PCGrad always)."""
    names = list(weightings.NAMES)
    return [n for n in names if build(n).requires_gramian == gramian]


def gramian_weightings():
    made = {"fixed": Fixed([0.5, 2.0, -1.0]), "running_norm": RunningNorm(),
            "pcgrad": weightings.PCGrad(seed=0)}
    made.update({n: build(n) for n in library_names(True) if n != "pcgrad"})
    return made


@pytest.mark.parametrize("name", sorted(gramian_weightings()))
@pytest.mark.parametrize("explicit", [True, False])
def test_shared_grad_is_w_at_j_and_heads_are_untouched(name, explicit):
    weighting = gramian_weightings()[name]
    net = Net()
    body = list(net.body.parameters())
    opt = MultiTaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), weighting,
                             shared_params=body if explicit else None)
    reference = copy.deepcopy(weighting)
    for step in range(2):  # the second step: a stateful weighting moved on
        opt.zero_grad()
        losses = net.losses(step)
        J = jacobian(losses, body)
        heads = {t: torch.autograd.grad(losses[t], list(net.heads[t].parameters()),
                                        retain_graph=True) for t in TASKS}
        w = reference(J @ J.T).double()
        stats = opt.backward(losses)
        got = torch.cat([p.grad.reshape(-1) for p in body]).double()
        torch.testing.assert_close(got, w @ J, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.weights.double(), w, rtol=1e-5, atol=1e-6)
        for t in TASKS:
            for p, g in zip(net.heads[t].parameters(), heads[t], strict=True):
                torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
        opt.step()


def test_the_weighting_sees_the_float64_gramian():
    seen = []

    class Spy(Fixed):
        def weights(self, gramian):
            seen.append(gramian)
            return super().weights(gramian)

    net = Net()
    body = list(net.body.parameters())
    opt = MultiTaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), Spy([1.0, 1.0, 1.0]))
    losses = net.losses()
    J = jacobian(losses, body)
    opt.backward(losses)
    assert seen[0].dtype == torch.float64
    torch.testing.assert_close(seen[0], J @ J.T, rtol=1e-6, atol=1e-7)


def test_reduction_mean_divides_the_weights_by_t():
    grads = {}
    for reduction in ("sum", "mean"):
        net = Net()
        opt = MultiTaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), MinNormOfTwo(),
                                 reduction=reduction)
        net.heads.pop("c")
        stats = opt.backward(net.losses())
        grads[reduction] = (stats.weights, net.body[0].weight.grad.clone(),
                            net.heads["a"].weight.grad.clone())
    torch.testing.assert_close(grads["mean"][0] * 2, grads["sum"][0])
    torch.testing.assert_close(grads["mean"][1] * 2, grads["sum"][1])
    torch.testing.assert_close(grads["mean"][2], grads["sum"][2])  # heads: no reduction


def library_weightings():
    """mtlkit.weighting's Gramian methods, as factories."""
    return {n: (lambda n=n: build(n)) for n in library_names(True)}


@pytest.mark.parametrize("name", sorted(library_weightings()))
def test_one_task_gets_its_own_gradient(name):
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), library_weightings()[name]())
    opt.backward([theta @ g])
    torch.testing.assert_close(theta.grad, g)


@pytest.mark.parametrize("name", sorted(library_weightings()))
@pytest.mark.parametrize("case", ["scales 1e-10 to 1e10", "rank deficient", "a zero row",
                                  "all zero"])
def test_near_degenerate_gramians_give_finite_updates(name, case):
    base = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 1.0, 0.2], [0.3, -0.2, 1.0]],
                        dtype=torch.float64)
    rows = {"scales 1e-10 to 1e10": base * torch.tensor([[1e10], [1.0], [1e-10]],
                                                        dtype=torch.float64),
            "rank deficient": torch.stack([base[0], 2 * base[0], -base[0]]),
            "a zero row": torch.stack([base[0], torch.zeros(3, dtype=torch.float64), base[1]]),
            "all zero": torch.zeros(3, 3, dtype=torch.float64)}[case]
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), library_weightings()[name]())
    stats = opt.backward([theta @ row for row in rows])
    assert stats.finite and torch.isfinite(theta.grad).all() and torch.isfinite(stats.weights).all()
    if case == "all zero":
        assert torch.equal(theta.grad, torch.zeros(3, dtype=torch.float64))


def test_a_zero_gradient_gives_a_zero_update_even_with_infinite_weights():
    theta = torch.zeros(2, requires_grad=True)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), RunningNorm())
    stats = opt.backward([theta @ torch.tensor([3.0, 4.0]), (theta * 0).sum()])
    # rsqrt(0) is inf for the zero gradient: its weight is dropped, not multiplied into NaN
    torch.testing.assert_close(theta.grad, torch.tensor([0.6, 0.8]))
    assert stats.finite and torch.equal(stats.weights, torch.tensor([0.2, 0.0]))
    opt.zero_grad()
    opt.backward([(theta * 0).sum(), (theta * 0).sum()])
    assert torch.equal(theta.grad, torch.zeros(2))


def test_near_degenerate_gramians_give_finite_exact_updates():
    a = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64) * 1e10
    b = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64) * 1e-10
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    opt.backward([theta @ a, theta @ b])
    want = (a - (a @ b) / (b @ b) * b) + (b - (a @ b) / (a @ a) * a)
    torch.testing.assert_close(theta.grad, want)
    opt.zero_grad()
    opt.backward([theta @ a, theta @ (2 * a), theta @ b])  # rank-deficient: two parallel rows
    assert torch.isfinite(theta.grad).all()


def test_a_weighting_returning_nan_for_a_real_gradient_is_an_error():
    theta = torch.zeros(2, requires_grad=True)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), Fixed([float("nan"), 1.0]))
    with pytest.raises(RuntimeError, match=r"Fixed\(\): weights: expected finite weights"):
        opt.backward([theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 1.0])])
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), Fixed([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match=r"weights: expected a tensor of shape \(2,\)"):
        opt.backward([theta.sum(), -theta.sum()])


def test_state_dict_round_trips_the_weighting_state():
    def run(opt, net, seeds):
        out = []
        for seed in seeds:
            opt.zero_grad()
            opt.backward(net.losses(seed))
            out.append(net.body[0].weight.grad.clone())
            opt.step()
        return out

    net = Net()
    opt = MultiTaskOptimizer(torch.optim.Adam(net.parameters(), lr=0.01), RunningNorm())
    run(opt, net, range(3))
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    assert set(saved["multitask"]) == {"weighting", "reduction", "weighting_state"}
    expected = run(opt, net, range(3, 6))

    net2 = Net()
    net2.load_state_dict(weights)
    opt2 = MultiTaskOptimizer(torch.optim.Adam(net2.parameters(), lr=0.01), RunningNorm())
    opt2.load_state_dict(saved)
    torch.testing.assert_close(opt2.weighting.ema, saved["multitask"]["weighting_state"]["ema"])
    for got, want in zip(run(opt2, net2, range(3, 6)), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = MultiTaskOptimizer(torch.optim.Adam(net2.parameters(), lr=0.01), MinNormOfTwo())
    with pytest.raises(ValueError, match=r"state_dict\['multitask'\]\['weighting'\]: expected "
                                         "'MinNormOfTwo'"):
        other.load_state_dict(saved)


def test_a_skipped_step_leaves_a_stateful_weighting_as_it_was():
    theta = torch.zeros(2, requires_grad=True)
    weighting = RunningNorm()
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), weighting)
    opt.backward([theta @ torch.tensor([3.0, 4.0]), theta @ torch.tensor([0.0, 1.0])])
    before = weighting.ema.clone()
    opt.zero_grad()
    overflowing = torch.sqrt(theta - theta.detach()).sum()
    stats = opt.backward([overflowing, theta @ torch.tensor([0.0, 1.0])])
    assert not stats.finite
    assert torch.equal(weighting.ema, before)


def test_grad_scaler_gives_the_unscaled_combination():
    results = []
    for scale in (None, 2.0**12):
        net = Net(("a", "b"))
        opt = MultiTaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), MinNormOfTwo())
        losses = net.losses()
        if scale is None:
            opt.backward(losses)
        else:
            scaler = torch.amp.GradScaler("cpu", init_scale=scale)
            opt.backward({t: scaler.scale(v) for t, v in losses.items()})
            scaler.unscale_(opt)
        results.append([p.grad.clone() for p in net.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_accumulation_adds_two_combinations():
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), Fixed([2.0, -1.0]))
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    opt.backward([theta @ g[0], theta @ g[1]])
    opt.backward([theta @ (2 * g[0]), theta @ g[1]])
    torch.testing.assert_close(theta.grad, (2 * g[0] - g[1]) + (4 * g[0] - g[1]))


# ---------------------------------------------------------------- loss weightings


def test_a_loss_weighting_backpropagates_the_weighted_loss_once():
    torch.manual_seed(0)
    body, head_a, head_b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    weighting = LogVariance(2)
    with torch.no_grad():
        weighting.log_var.copy_(torch.tensor([0.5, -1.0]))
    model = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
    opt = MultiTaskOptimizer(torch.optim.SGD([*model, *weighting.parameters()], lr=0.1),
                             weighting)
    x = torch.randn(6, 3)
    hidden = body(x)  # one forward read by both heads
    losses = {"a": head_a(hidden).pow(2).mean(), "b": (head_b(hidden) - 1).pow(2).mean()}
    s = weighting.log_var.detach()
    grads = [[torch.zeros_like(p) if g is None else g for p, g in zip(model, torch.autograd.grad(
        v, model, retain_graph=True, allow_unused=True), strict=True)] for v in losses.values()]
    values = torch.stack([v.detach() for v in losses.values()])
    calls = []
    hidden.register_hook(lambda g: calls.append(1))
    stats = opt.backward(losses)
    assert calls == [1]  # one backward through the shared forward
    assert opt._steps.grads is None  # no per-task buffer
    for k, p in enumerate(model):
        torch.testing.assert_close(p.grad, torch.exp(-s[0]) * grads[0][k]
                                   + torch.exp(-s[1]) * grads[1][k])
    torch.testing.assert_close(weighting.log_var.grad, 1 - torch.exp(-s) * values)
    torch.testing.assert_close(stats.weights, torch.exp(-s))
    assert stats.cosine is None and stats.num_conflicts is None and stats.finite
    before = weighting.log_var.detach().clone()
    opt.step()
    assert not torch.equal(weighting.log_var.detach(), before)


@pytest.mark.parametrize("name", ["log_variance", *library_names(False)])
def test_loss_weightings_backpropagate_their_weighted_loss(name):
    net = Net()
    weighting = LogVariance(len(TASKS)) if name == "log_variance" else build(name)
    reference = copy.deepcopy(weighting)
    extra = list(weighting.parameters())
    opt = MultiTaskOptimizer(torch.optim.SGD([*net.parameters(), *extra], lr=0.1), weighting)
    for step in range(3):  # later steps: the weightings that keep a loss history use it
        opt.zero_grad()
        losses = net.losses(step)
        params = list(net.parameters())
        total = reference(torch.stack(list(losses.values())))
        want = torch.autograd.grad(total, params, retain_graph=True)
        stats = opt.backward(losses)
        for p, g in zip(params, want, strict=True):
            torch.testing.assert_close(p.grad, g)
        assert stats.finite and stats.weights.shape == (len(TASKS),)
        assert torch.isfinite(stats.weights).all()
        opt.step()
        with torch.no_grad():  # keep the reference's own parameters in step
            for mine, ref in zip(weighting.parameters(), reference.parameters(), strict=True):
                ref.copy_(mine)


def test_a_loss_weighting_mean_and_state_dict():
    theta = torch.zeros(2, requires_grad=True)
    weighting = LogVariance(2)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta, *weighting.parameters()], lr=0.5),
                             weighting, reduction="mean")
    opt.backward([theta @ torch.tensor([2.0, 0.0]), theta @ torch.tensor([0.0, 4.0])])
    assert torch.equal(theta.grad, torch.tensor([1.0, 2.0]))
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    fresh = LogVariance(2)
    opt2 = MultiTaskOptimizer(torch.optim.SGD([theta, *fresh.parameters()], lr=0.5), fresh,
                              reduction="mean")
    opt2.load_state_dict(saved)
    assert torch.equal(fresh.log_var, weighting.log_var)


def test_a_loss_weighting_is_refused_where_it_cannot_work():
    theta = torch.zeros(2, requires_grad=True)
    weighting = LogVariance(2)
    with pytest.raises(ValueError, match=r"^weighting: expected a LogVariance whose parameters "
                                         r"the optimizer owns .*\['log_var'\]"):
        MultiTaskOptimizer(torch.optim.SGD([theta], lr=0.1), weighting)
    sgd = torch.optim.SGD([theta, *weighting.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"^shared_params: expected at least one parameter"):
        MultiTaskOptimizer(sgd, weighting, shared_params=[])  # checked, though unused
    opt = MultiTaskOptimizer(sgd, weighting, shared_params=[theta])
    with pytest.raises(TypeError, match=r"^task_backward: expected a Gramian weighting"):
        opt.task_backward("a", theta.sum())
    opt.backward([theta.sum(), theta.sum() * float("nan")])
    assert torch.isnan(theta.grad).all()
    with pytest.raises(ValueError, match=r"^losses\['1'\]: expected a finite loss"):
        opt.step()


def test_bad_weightings_name_the_argument():
    theta = torch.zeros(2, requires_grad=True)
    sgd = torch.optim.SGD([theta], lr=0.1)
    with pytest.raises(TypeError, match=r"^weighting: expected an instance, got the class"):
        MultiTaskOptimizer(sgd, MinNormOfTwo)
    with pytest.raises(TypeError, match=r"^weighting: expected a mtlkit.weighting.Weighting"):
        MultiTaskOptimizer(sgd, lambda g: g.diagonal())
    with pytest.raises(TypeError, match=r"^optimizer: expected a torch.optim.Optimizer"):
        MultiTaskOptimizer(PCGrad(sgd), MinNormOfTwo())
    if hasattr(weightings, "by_name"):
        assert type(MultiTaskOptimizer(sgd, "pcgrad").weighting) is weightings.PCGrad
    else:
        with pytest.raises(TypeError, match=r"^weighting: expected a Weighting or LossWeighting"):
            MultiTaskOptimizer(sgd, "pcgrad")


def test_grad_scaler_argument_keeps_a_scale_dependent_weighting_exact():
    g = torch.tensor([[3.0, 4.0], [0.0, 2.0]])

    def run(scaler_mode):
        theta = torch.zeros(2, requires_grad=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), RunningNorm(),
                                 grad_scaler=scaler if scaler_mode == "argument" else None)
        losses = [theta @ g[0], theta @ g[1]]
        if scaler_mode == "scaled losses":
            losses = [scaler.scale(loss) for loss in losses]
        stats = opt.backward(losses)
        if scaler_mode == "none":
            opt.step()
        else:
            scaler.step(opt)
        return theta.detach(), stats.weights

    plain, plain_w = run("none")
    # 1/|g_i| weights: [0.2, 0.5]; the update is -(0.2 g_0 + 0.5 g_1)
    torch.testing.assert_close(plain, -torch.tensor([0.6, 1.8]))
    scaled, scaled_w = run("argument")
    torch.testing.assert_close(scaled, plain)
    torch.testing.assert_close(scaled_w, plain_w)
    naive, _ = run("scaled losses")  # the weighting saw gradients 2^10 times larger
    torch.testing.assert_close(naive, plain / 2.0**10)


def test_grad_scaler_argument_with_a_loss_weighting():
    theta = torch.zeros(2, requires_grad=True)
    weighting = LogVariance(2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt = MultiTaskOptimizer(torch.optim.SGD([theta, *weighting.parameters()], lr=1.0),
                             weighting, grad_scaler=scaler)
    stats = opt.backward([theta @ torch.tensor([2.0, 0.0]), theta @ torch.tensor([0.0, 4.0])])
    assert torch.equal(stats.weights, torch.ones(2))
    assert torch.equal(theta.grad, torch.tensor([2.0, 4.0]) * 2.0**8)  # scaled, for the scaler
    scaler.step(opt)
    assert torch.equal(theta.detach(), -torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(weighting.log_var.detach(), -torch.ones(2))  # grad 1 - e^0 * 0
    with pytest.raises(TypeError, match=r"^grad_scaler: expected a torch.amp.GradScaler"):
        MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), Fixed([1.0]), grad_scaler=2.0)

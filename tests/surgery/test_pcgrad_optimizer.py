"""PCGrad against the paper's formula, brute force over visiting orders, and optimizer plumbing."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtlkit import PCGrad, pcgrad_weights
from mtlkit.surgery._graph import graphs_needing_retention

# ---------------------------------------------------------------- naive references


def project(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. (3) of the paper, applied only on conflict."""
    dot = u @ v
    if dot < 0 and v @ v > 0:
        return u - dot / (v @ v) * v
    return u


def naive_pcgrad(grads: list[torch.Tensor], orders: list[list[int]]) -> torch.Tensor:
    """Textbook PCGrad: each task projected off the ORIGINAL others, in the given orders."""
    out = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        current = g.clone()
        for j in orders[i]:
            current = project(current, grads[j])
        out += current
    return out


def all_pcgrad_results(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every result PCGrad can produce: one visiting order per task, all combinations."""
    t = len(grads)
    per_task = [list(itertools.permutations([j for j in range(t) if j != i])) for i in range(t)]
    return [naive_pcgrad(grads, [list(o) for o in combo]) for combo in itertools.product(*per_task)]


def linear_losses(theta: torch.Tensor, grads: torch.Tensor) -> list[torch.Tensor]:
    """Losses whose gradients with respect to ``theta`` are exactly the rows of ``grads``."""
    return [(g * theta).sum() for g in grads]


def flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


# ---------------------------------------------------------------- the math


def test_two_tasks_textbook_formula():
    g1 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    g2 = torch.tensor([-2.0, 0.5, 1.0], dtype=torch.float64)
    assert g1 @ g2 < 0
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    stats = opt.backward(linear_losses(theta, torch.stack([g1, g2])))
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
    torch.testing.assert_close(theta.grad, expected)
    assert stats.num_conflicts == 1
    assert stats.cosine[0, 1] == pytest.approx(float(g1 @ g2 / g1.norm() / g2.norm()), rel=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_three_tasks_equals_one_of_the_brute_force_orders(seed):
    torch.manual_seed(seed)
    grads = torch.randn(3, 6, dtype=torch.float64)
    grads[1] = -grads[0] + 0.3 * torch.randn(6, dtype=torch.float64)  # force conflicts
    theta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=seed)
    opt.backward(linear_losses(theta, grads))
    candidates = all_pcgrad_results(list(grads))
    distances = [float((theta.grad - c).abs().max()) for c in candidates]
    assert min(distances) < 1e-10


def test_orders_are_random_across_seeds():
    # Three mutually conflicting gradients whose result depends on the order.
    grads = torch.tensor(
        [[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.5, -0.9, 1.0]], dtype=torch.float64
    )
    distinct = {tuple(round(v, 8) for v in c.tolist()) for c in all_pcgrad_results(list(grads))}
    assert len(distinct) > 1
    seen = set()
    for seed in range(40):
        theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=seed)
        opt.backward(linear_losses(theta, grads))
        seen.add(tuple(round(v, 8) for v in theta.grad.tolist()))
    assert seen <= distinct
    assert len(seen) > 1


def test_weights_match_a_naive_loop_with_the_same_generator_orders():
    torch.manual_seed(1)
    grads = torch.randn(4, 10, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    weights = pcgrad_weights(grads @ grads.T, gen)
    replay = torch.Generator().manual_seed(5)
    orders = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        orders.append([others[k] for k in torch.randperm(3, generator=replay).tolist()])
    torch.testing.assert_close(weights @ grads, naive_pcgrad(list(grads), orders))


def test_sum_and_mean_reduction():
    grads = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.2, -2.0]], dtype=torch.float64)
    results = {}
    for reduction in ("sum", "mean"):
        theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = PCGrad(torch.optim.SGD([theta], lr=1.0), reduction=reduction, seed=0)
        opt.backward(linear_losses(theta, grads))
        results[reduction] = theta.grad.clone()
    torch.testing.assert_close(results["mean"] * 3, results["sum"])


def test_no_conflict_gives_the_plain_sum():
    grads = torch.tensor([[1.0, 0.5], [0.5, 1.0], [2.0, 0.1]], dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    stats = opt.backward(linear_losses(theta, grads))
    torch.testing.assert_close(theta.grad, grads.sum(0))
    assert stats.num_conflicts == 0


# ---------------------------------------------------------------- hypothesis properties

vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=64), min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(vectors, min_size=2, max_size=4), st.integers(0, 2**31 - 1))
@example(rows=[[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -2.225073858507203e-309]], seed=0)
def test_property_finite_and_no_conflict_is_plain_sum(rows, seed):
    grads = torch.tensor(rows, dtype=torch.float64)
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=seed)
    stats = opt.backward(linear_losses(theta, grads))
    assert torch.isfinite(theta.grad).all()
    if (grads @ grads.T >= 0).all():
        torch.testing.assert_close(theta.grad, grads.sum(0))
    # naive count; a gradient whose squared norm underflows (subnormal entries) has no
    # direction and conflicts with none, as the Gramian's zero diagonal says
    nonzero = grads.pow(2).sum(1) > 0
    negative = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
                if nonzero[i] and nonzero[j] and float(grads[i] @ grads[j]) < 0]
    assert stats.num_conflicts == len(negative)


@settings(max_examples=60, deadline=None)
@given(st.lists(vectors, min_size=2, max_size=4), st.floats(1e-3, 1e3), st.integers(0, 1000))
def test_property_invariant_to_a_common_positive_scale(rows, scale, seed):
    grads = torch.tensor(rows, dtype=torch.float64)
    out = []
    for factor in (1.0, scale):
        theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=seed)
        opt.backward([loss * factor for loss in linear_losses(theta, grads)])
        out.append(theta.grad / factor)
    torch.testing.assert_close(out[0], out[1], rtol=1e-9, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(vectors, vectors)
def test_property_two_tasks_projection_removes_the_conflict(a, b):
    g1, g2 = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    weights = pcgrad_weights(torch.stack([g1, g2]) @ torch.stack([g1, g2]).T)
    # Rebuild each projected gradient on its own (T=2: the order does not matter).
    for mine, other in ((g1, g2), (g2, g1)):
        projected = project(mine, other)
        assert projected @ other >= -1e-9 * (1 + mine.norm() * other.norm())
    torch.testing.assert_close(weights @ torch.stack([g1, g2]), project(g1, g2) + project(g2, g1))


# ---------------------------------------------------------------- shared parameters and heads


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8)
        )
        self.head_a = torch.nn.Linear(8, 3)
        self.head_b = torch.nn.Linear(8, 1)
        self.only_a = torch.nn.Linear(5, 8)  # a block only task "a" reaches

    def losses(self, xa, ya, xb, yb):
        la = torch.nn.functional.cross_entropy(self.head_a(self.body(xa) + self.only_a(xa)), ya)
        lb = torch.nn.functional.mse_loss(self.head_b(self.body(xb)).squeeze(-1), yb)
        return {"a": la, "b": lb}


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(6, 5, generator=g),
        torch.randint(0, 3, (6,), generator=g),
        torch.randn(6, 5, generator=g),
        torch.randn(6, generator=g),
    )


def per_task_grads(model, losses, params):
    return {
        k: torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
        for k, v in losses.items()
    }


@pytest.mark.parametrize("explicit", [False, True])
def test_heads_get_their_plain_gradient_and_body_gets_surgery(explicit):
    torch.manual_seed(0)
    model = TwoHeads()
    shared = list(model.body.parameters()) if explicit else None
    opt = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), shared_params=shared, seed=0)
    losses = model.losses(*make_batch())
    head_params = [
        *model.head_a.parameters(),
        *model.head_b.parameters(),
        *model.only_a.parameters(),
    ]
    body = list(model.body.parameters())
    ref_heads = {
        k: torch.autograd.grad(v, head_params, retain_graph=True, allow_unused=True)
        for k, v in losses.items()
    }
    ga = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(losses["a"], body, retain_graph=True)]
    )
    gb = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(losses["b"], body, retain_graph=True)]
    )
    opt.backward(losses)
    for i, p in enumerate(head_params):
        expected = [r[i] for r in ref_heads.values() if r[i] is not None]
        assert len(expected) == 1
        torch.testing.assert_close(p.grad, expected[0])
    torch.testing.assert_close(flat_grad(body), project(ga, gb) + project(gb, ga))


def test_auto_detection_finds_the_parameters_two_tasks_reach():
    torch.manual_seed(0)
    model = TwoHeads()
    opt = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    opt.backward(model.losses(*make_batch()))
    assert opt._steps.auto_shared == {id(p) for p in model.body.parameters()}


def test_auto_mode_equals_explicit_mode_over_steps():
    results = []
    for explicit in (False, True):
        torch.manual_seed(0)
        model = TwoHeads()
        shared = list(model.body.parameters()) if explicit else None
        opt = PCGrad(torch.optim.Adam(model.parameters(), lr=0.01), shared_params=shared, seed=1)
        for step in range(4):
            opt.zero_grad()
            opt.backward(model.losses(*make_batch(step)))
            opt.step()
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


def test_unreached_parameter_keeps_no_gradient():
    torch.manual_seed(0)
    model = TwoHeads()
    unused = torch.nn.Parameter(torch.ones(3))
    opt = PCGrad(torch.optim.AdamW([*model.parameters(), unused], lr=0.1), seed=0)
    opt.backward(model.losses(*make_batch()))
    assert unused.grad is None
    opt.step()
    torch.testing.assert_close(unused.detach(), torch.ones(3))


# ---------------------------------------------------------------- zero and non-finite


def test_zero_norm_gradients_never_give_nan():
    theta = torch.zeros(3, requires_grad=True)
    other = torch.zeros(2, requires_grad=True)
    real, opposite = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 1.0, 0.0])
    losses = {
        "zero": (theta * 0).sum(),  # reaches theta with a zero gradient
        "constant": torch.tensor(0.0),  # reaches nothing at all
        "real": (theta * real).sum() + other.sum(),
        "opposite": (theta * opposite).sum(),
    }
    opt = PCGrad(torch.optim.SGD([theta, other], lr=1.0), shared_params=[theta], seed=0)
    stats = opt.backward(losses)
    assert torch.isfinite(stats.cosine).all()
    assert stats.cosine[0, 2] == 0 and stats.num_conflicts == 1
    # the zero gradients are never projected on, whatever the order: only the one conflict acts
    expected = project(real, opposite) + project(opposite, real)
    torch.testing.assert_close(theta.grad, expected)
    torch.testing.assert_close(theta.grad, torch.tensor([-0.5 - 3 / 7, -0.5 - 1 / 7, 0.5 + 2 / 7]))
    torch.testing.assert_close(other.grad, torch.ones(2))


def test_non_finite_loss_poisons_the_gradient_and_step_raises_naming_the_task():
    # A non-finite loss no longer raises in backward (a GradScaler must be able to skip the
    # step): every managed gradient becomes NaN and a direct step() raises, naming the task.
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0))
    stats = opt.backward({"sst": theta.sum(), "qqp": theta.sum() * float("nan")})
    assert not stats.finite and stats.nonfinite == ("qqp",)
    assert torch.isnan(theta.grad).all()
    with pytest.raises(ValueError, match=r"losses\['qqp'\]: expected a finite loss"):
        opt.step()
    assert torch.equal(theta.detach(), torch.zeros(2))  # nothing was applied
    opt.zero_grad()  # forgets the failed step
    opt.backward({"sst": theta.sum(), "qqp": 2 * theta.sum()})
    opt.step()
    assert torch.equal(theta.detach(), torch.full((2,), -3.0))


def test_non_finite_gradient_skips_surgery_and_leaves_the_overflow():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    overflowing = torch.sqrt(theta - theta.detach()).sum()  # finite loss (0), infinite gradient
    stats = opt.backward([overflowing, (theta * torch.tensor([-1.0, 1.0])).sum()])
    assert not stats.finite and stats.nonfinite == ("0",)
    # the plain sum, overflow included: [inf, inf] + [-1, 1]
    assert torch.equal(theta.grad, torch.tensor([float("inf"), float("inf")]))


# ---------------------------------------------------------------- optimizer plumbing


def test_several_param_groups_each_with_its_learning_rate():
    torch.manual_seed(0)
    model = TwoHeads()
    groups = [
        {"params": model.body.parameters(), "lr": 0.5},
        {
            "params": [
                *model.head_a.parameters(),
                *model.head_b.parameters(),
                *model.only_a.parameters(),
            ],
            "lr": 0.01,
        },
    ]
    opt = PCGrad(torch.optim.SGD(groups), seed=0)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    opt.backward(model.losses(*make_batch()))
    grads = {id(p): p.grad.clone() for p in model.parameters()}
    opt.step()
    for group, lr in zip(opt.param_groups, (0.5, 0.01), strict=True):
        for p in group["params"]:
            torch.testing.assert_close(p.detach(), before[id(p)] - lr * grads[id(p)])


def test_add_param_group_is_managed():
    torch.manual_seed(0)
    model = TwoHeads()
    opt = PCGrad(torch.optim.SGD(model.body.parameters(), lr=0.1), seed=0)
    head_params = [
        *model.head_a.parameters(),
        *model.head_b.parameters(),
        *model.only_a.parameters(),
    ]
    opt.add_param_group({"params": head_params, "lr": 0.2})
    losses = model.losses(*make_batch())
    body = list(model.body.parameters())
    ga, gb = (torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[k], body,
                                                                     retain_graph=True)])
              for k in ("a", "b"))
    ref_heads = [sum(g for g in (torch.autograd.grad(lo, p, retain_graph=True,
                                                      allow_unused=True)[0]
                                 for lo in losses.values()) if g is not None)
                 for p in head_params]
    before = [p.detach().clone() for p in [*body, *head_params]]
    opt.backward(losses)
    assert opt._steps.auto_shared == {id(p) for p in model.body.parameters()}
    torch.testing.assert_close(flat_grad(body), project(ga, gb) + project(gb, ga))
    for p, want in zip(head_params, ref_heads, strict=True):
        torch.testing.assert_close(p.grad, want)
    grads = [p.grad.clone() for p in [*body, *head_params]]
    opt.step()
    lrs = [0.1] * len(body) + [0.2] * len(head_params)
    for p, b, g, lr in zip([*body, *head_params], before, grads, lrs, strict=True):
        torch.testing.assert_close(p.detach(), b - lr * g)


def run_with_schedulers(opt, theta, backward):
    import transformers

    sched = transformers.get_linear_schedule_with_warmup(
        opt, num_warmup_steps=2, num_training_steps=4
    )
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        opt.zero_grad()
        backward()
        opt.step()
        sched.step()
        step_lr.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs, theta.detach().clone()


def test_lr_schedulers_accept_it():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.AdamW([theta], lr=1.0))
    lrs, got = run_with_schedulers(opt, theta, lambda: opt.backward([theta.sum(), -theta[0]]))
    # warmup 0 -> 1/2 -> 1 -> decay 1/2, each then halved by StepLR: the first step runs at lr 0
    assert lrs == [0.25, 0.5, 0.25]
    # PCGrad's gradient of [1, 1] and [-1, 0] (one conflict) is [-0.5, 1.5]; a plain AdamW fed
    # it under the same schedules lands on the same point
    ref = torch.zeros(2, requires_grad=True)
    plain = torch.optim.AdamW([ref], lr=1.0)

    def plain_backward():
        ref.grad = torch.tensor([-0.5, 1.5])

    ref_lrs, want = run_with_schedulers(plain, ref, plain_backward)
    assert ref_lrs == lrs
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, torch.zeros(2))


def test_state_dict_round_trip_restores_generator_and_optimizer_state():
    grads = torch.tensor(
        [[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.5, -0.9, 1.0]], dtype=torch.float64
    )

    def run(opt, theta, steps):
        out = []
        for _ in range(steps):
            opt.zero_grad()
            opt.backward(linear_losses(theta, grads))
            out.append(theta.grad.clone())
            opt.step()
        return out

    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.Adam([theta], lr=0.1), seed=7)
    run(opt, theta, 3)
    saved, saved_theta = copy.deepcopy(opt.state_dict()), theta.detach().clone()
    expected = run(opt, theta, 5)

    theta2 = saved_theta.clone().requires_grad_(True)
    opt2 = PCGrad(torch.optim.Adam([theta2], lr=0.1), seed=123)
    opt2.load_state_dict(saved)
    for got, want in zip(run(opt2, theta2, 5), expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(theta2, theta)


def test_gradient_accumulation_adds_like_torch():
    grads = torch.tensor([[1.0, 2.0], [-1.5, 0.5]], dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    first = opt.backward(linear_losses(theta, grads))
    once = theta.grad.clone()
    opt.backward(linear_losses(theta, 2 * grads))
    torch.testing.assert_close(theta.grad, 3 * once)
    assert first.num_conflicts == 1


def test_accumulation_onto_a_plain_backward():
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (theta * torch.tensor([1.0, 1.0], dtype=torch.float64)).sum().backward()
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    opt.backward([(theta * torch.tensor([2.0, 0.0], dtype=torch.float64)).sum()])
    torch.testing.assert_close(theta.grad, torch.tensor([3.0, 1.0], dtype=torch.float64))


def test_grad_scaler_gives_the_unscaled_result_and_skips_on_overflow():
    grads = torch.tensor([[1.0, 2.0, -1.0], [-2.0, 0.5, 1.0]])
    theta = torch.zeros(3, requires_grad=True)
    ref = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    ref.backward(linear_losses(theta, grads))
    expected = theta.grad.clone()

    theta2 = torch.zeros(3, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta2], lr=1.0), seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt.backward([scaler.scale(loss) for loss in linear_losses(theta2, grads)])
    scaler.unscale_(opt)
    torch.testing.assert_close(theta2.grad, expected)
    scaler.step(opt)
    scaler.update()
    torch.testing.assert_close(theta2.detach(), -expected)

    opt.zero_grad()
    overflowing = torch.sqrt(theta2 - theta2.detach()).sum()  # finite loss, infinite gradient
    opt.backward([scaler.scale(overflowing), scaler.scale((theta2 * grads[1]).sum())])
    scaler.step(opt)
    scaler.update()
    torch.testing.assert_close(theta2.detach(), -expected)  # the step was skipped
    assert scaler.get_scale() < 2.0**10


def test_per_task_form_equals_backward_of_all_losses():
    results = []
    for per_task in (False, True):
        torch.manual_seed(0)
        model = TwoHeads()
        opt = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), seed=3)
        xa, ya, xb, yb = make_batch()
        if per_task:
            for name in ("a", "b"):
                opt.task_backward(name, model.losses(xa, ya, xb, yb)[name])
            opt.combine()
        else:
            opt.backward(model.losses(xa, ya, xb, yb))
        results.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


def test_one_forward_shared_by_all_heads_retains_what_it_needs():
    torch.manual_seed(0)
    body, ha, hb = torch.nn.Linear(4, 6), torch.nn.Linear(6, 2), torch.nn.Linear(6, 1)
    x = torch.randn(10, 4)
    hidden = body(x)  # layout C: one forward over the concatenated batch
    losses = [ha(hidden[:5]).logsumexp(-1).mean(), hb(hidden[5:]).pow(2).mean()]
    params = list(body.parameters())
    refs = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(lo, params, retain_graph=True)])
        for lo in losses
    ]
    opt = PCGrad(torch.optim.SGD([*params, *ha.parameters(), *hb.parameters()], lr=1.0), seed=0)
    opt.backward(losses)
    torch.testing.assert_close(
        flat_grad(params), project(refs[0], refs[1]) + project(refs[1], refs[0])
    )


def test_graphs_needing_retention_separate_and_shared():
    w = torch.ones(3, requires_grad=True)
    separate = [(w * 2).sum(), (w * 3).sum(), (w * 4).sum()]
    assert graphs_needing_retention(separate) == [False, False, False]
    h = torch.tanh(w)
    shared = [h.sum(), (w * 3).sum(), (h * 2).sum()]
    assert graphs_needing_retention(shared) == [True, False, False]
    assert graphs_needing_retention([torch.tensor(1.0), h.sum()]) == [False, False]


# ---------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors():
    theta = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="optimizer"):
        PCGrad([theta])
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(torch.optim.SGD([theta], lr=1.0), reduction="max")
    with pytest.raises(ValueError, match=r"shared_params\[0\]: expected a parameter of the "
                                         "optimizer's param groups"):
        PCGrad(torch.optim.SGD([theta], lr=1.0), shared_params=[torch.zeros(2, requires_grad=True)])
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0))
    with pytest.raises(ValueError, match="at least one"):
        opt.backward([])
    with pytest.raises(ValueError, match="scalar"):
        opt.backward({"sst": theta * 2})
    with pytest.raises(TypeError, match="losses"):
        opt.backward(theta.sum())
    with pytest.raises(RuntimeError, match="combine"):
        opt.combine()
    opt.task_backward("a", theta.sum())
    opt.task_backward("a", theta.sum())  # a task given again adds to its gradient
    with pytest.raises(RuntimeError, match="combine"):
        opt.step()
    assert opt.combine().tasks == ("a",)
    assert theta.grad.tolist() == [2.0, 2.0]
    opt.step()
    assert math.isfinite(float(theta.detach().sum()))


def test_wide_gramian_chunked_equals_the_plain_product():
    from mtlkit.surgery._gramian import wide_gramian

    torch.manual_seed(0)
    block = torch.randn(3, 200_003)  # wide enough for the chunked path, with a ragged tail
    expected = block.double() @ block.double().T
    torch.testing.assert_close(wide_gramian(block).double(), expected, rtol=1e-5, atol=1e-2)
    strided = torch.randn(3, 300_000)[:, 7:250_000]  # a column slice of the task-gradient rows
    torch.testing.assert_close(wide_gramian(strided).double(),
                               strided.double() @ strided.double().T, rtol=1e-5, atol=1e-2)

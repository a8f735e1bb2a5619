"""Issue 20's PCGrad defects (#1, #5, #9, #12, #15, the GradScaler skip) and its bad inputs.

Each defect test failed on the code before its fix (the PCGrad of 0189c80).
"""

from __future__ import annotations

import gc

import pytest
import torch

from mtlkit import MultiTaskOptimizer, PCGrad
from mtlkit.weighting import PCGrad as PCGradWeighting


def project(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. (3) of the paper, applied only on conflict."""
    dot = u @ v
    return u - dot / (v @ v) * v if dot < 0 and v @ v > 0 else u


def two_task_reference(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    g1, g2 = g1.double(), g2.double()
    return project(g1, g2) + project(g2, g1)


# ---------------------------------------------------------------- 1: Gramian overflow


def test_1_fp16_gramian_overflow_with_finite_gradients_still_does_surgery():
    # |g|^2 = 90000 > 65504: the float16 Gramian overflowed and surgery was silently skipped.
    a = torch.tensor([300.0, 0.0, 0.0, 0.0], dtype=torch.float16)
    b = torch.tensor([-300.0, 300.0, 0.0, 0.0], dtype=torch.float16)
    theta = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    stats = opt.backward([theta @ a, theta @ b])
    assert stats.finite and stats.num_conflicts == 1
    assert torch.equal(theta.grad, torch.tensor([150.0, 450.0, 0.0, 0.0], dtype=torch.float16))
    torch.testing.assert_close(theta.grad.double(), two_task_reference(a, b))


def test_1_grad_scaler_at_2_to_the_70_keeps_surgery_and_steps():
    # Scaled float32 gradients are finite, their float32 Gramian is not.
    a = torch.tensor([300.0, 0.0, 0.0, 0.0])
    b = torch.tensor([-300.0, 300.0, 0.0, 0.0])
    theta = torch.zeros(4, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**70)
    stats = opt.backward([scaler.scale(theta @ a), scaler.scale(theta @ b)])
    assert stats.finite and stats.num_conflicts == 1
    scaler.step(opt)
    scaler.update()
    assert torch.equal(theta.detach(), -torch.tensor([150.0, 450.0, 0.0, 0.0]))
    assert scaler.get_scale() == 2.0**70  # no overflow was reported


def test_1_a_non_finite_gradient_is_told_from_an_overflowing_gramian():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    overflowing = torch.sqrt(theta - theta.detach()).sum()  # finite loss (0), gradient +inf
    stats = opt.backward({"bad": overflowing, "good": theta @ torch.tensor([-1.0, 1.0])})
    assert not stats.finite and stats.nonfinite == ("bad",)
    assert torch.equal(theta.grad, torch.tensor([float("inf"), float("inf")]))  # the plain sum
    assert torch.equal(stats.weights, torch.ones(2))
    opt.step()  # a non-finite gradient is no error (a GradScaler would skip the step)


# ---------------------------------------------------------------- 5: heads of another dtype


@pytest.mark.parametrize("body_dtype, head_dtype", [(torch.bfloat16, torch.float32),
                                                    (torch.float32, torch.float64)])
def test_5_heads_of_another_dtype_get_their_plain_gradient(body_dtype, head_dtype):
    torch.manual_seed(0)
    body = torch.nn.Linear(4, 5).to(body_dtype)
    heads = torch.nn.ModuleList([torch.nn.Linear(5, 1), torch.nn.Linear(5, 1)]).to(head_dtype)
    xs = [torch.randn(6, 4, dtype=body_dtype) for _ in range(2)]

    def losses():
        return [(h(body(x).to(head_dtype)) - k).pow(2).mean()
                for k, (h, x) in enumerate(zip(heads, xs, strict=True))]

    shared, head_params = list(body.parameters()), list(heads.parameters())
    ref_losses = losses()
    rows = [torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(lo, shared,
                                                                            retain_graph=True)])
            for lo in ref_losses]
    ref_heads = [torch.autograd.grad(lo, list(h.parameters()), retain_graph=True)
                 for lo, h in zip(ref_losses, heads, strict=True)]
    opt = PCGrad(torch.optim.SGD([*shared, *head_params], lr=0.1), seed=0)
    stats = opt.backward(losses())
    assert stats.finite
    for h, want in zip(heads, ref_heads, strict=True):
        for p, g in zip(h.parameters(), want, strict=True):
            assert p.grad.dtype == head_dtype
            torch.testing.assert_close(p.grad, g)  # exactly the plain gradient
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    tol = {"rtol": 2e-2, "atol": 2e-2} if body_dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got.double(), two_task_reference(*rows), **tol)
    assert opt._steps.auto_shared == {id(p) for p in shared}


def test_5_explicit_shared_parameters_of_two_dtypes_share_one_gramian():
    g64 = torch.tensor([[1.0, 2.0], [-2.0, 0.5]], dtype=torch.float64)
    g32 = torch.tensor([[0.5, -1.0, 1.0], [1.0, 1.0, -2.0]])
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([a, b], lr=1.0), shared_params=[a, b], seed=0)
    opt.backward([a @ g64[i] + b @ g32[i] for i in range(2)])
    J = torch.cat([g64, g32.double()], dim=1)
    want = two_task_reference(J[0], J[1])
    torch.testing.assert_close(a.grad, want[:2])
    torch.testing.assert_close(b.grad, want[2:].float())


# ---------------------------------------------------------------- 9: a failed backward


class Explode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom in backward")


def test_9_a_failed_backward_leaves_no_pending_state_and_restores_grad():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    opt.backward([theta @ torch.tensor([1.0, 2.0])])  # gradient to accumulate onto
    before = theta.grad.clone()
    with pytest.raises(RuntimeError, match="boom"):
        opt.backward([theta @ torch.tensor([3.0, 0.0]), Explode.apply(theta).sum()])
    assert torch.equal(theta.grad, before)
    stats = opt.backward([theta @ torch.tensor([0.0, 1.0])])  # not "waiting for combine()"
    assert stats.tasks == ("0",)
    assert torch.equal(theta.grad, torch.tensor([1.0, 3.0]))
    opt.step()
    assert torch.equal(theta.detach(), torch.tensor([-1.0, -3.0]))


def test_9_a_failed_first_task_backward_leaves_no_pending_step():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        opt.task_backward("a", Explode.apply(theta).sum())
    assert theta.grad is None
    opt.step()  # nothing pending: no "call combine()" error


# ---------------------------------------------------------------- 12: hooks


def hook_count(p: torch.Tensor) -> int:
    return len(p._post_accumulate_grad_hooks or {})


def test_12_dropped_optimizers_remove_their_hooks():
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    for _ in range(100):
        opt = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
        opt.backward([model(x).sum(), model(x).pow(2).sum()])
        assert all(hook_count(p) == 1 for p in model.parameters())
    del opt
    gc.collect()
    assert [hook_count(p) for p in model.parameters()] == [0, 0]


# ---------------------------------------------------------------- 15: reduction in state_dict


def test_15_loading_another_reduction_raises_and_changes_nothing():
    theta = torch.zeros(2, requires_grad=True)
    saved = PCGrad(torch.optim.SGD([theta], lr=0.5), reduction="mean", seed=0).state_dict()
    opt = PCGrad(torch.optim.SGD([theta], lr=0.1), reduction="sum", seed=1)
    with pytest.raises(ValueError, match=r"state_dict\['pcgrad'\]\['reduction'\]: expected "
                                         r"'sum' \(this optimizer's\), got 'mean'"):
        opt.load_state_dict(saved)
    assert opt.reduction == "sum" and opt.param_groups[0]["lr"] == 0.1
    opt.load_state_dict(PCGrad(torch.optim.SGD([theta], lr=0.3), seed=1).state_dict())
    assert opt.param_groups[0]["lr"] == 0.3


def test_15_multitask_state_names_its_weighting_and_reduction():
    theta = torch.zeros(2, requires_grad=True)
    saved = MultiTaskOptimizer(torch.optim.SGD([theta], lr=0.5), PCGradWeighting(0),
                               reduction="mean").state_dict()
    assert saved["multitask"]["weighting"] == "PCGrad"
    opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=0.5), PCGradWeighting(0))
    with pytest.raises(ValueError, match=r"state_dict\['multitask'\]\['reduction'\]"):
        opt.load_state_dict(saved)


# ---------------------------------------------------------------- GradScaler and an inf loss


def test_grad_scaler_skips_a_step_whose_scaled_fp16_loss_is_infinite():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)
    big = torch.tensor(1e4, dtype=torch.float16)
    losses = [theta.half() @ torch.tensor([1.0, 0.0], dtype=torch.float16) + big,
              theta.half() @ torch.tensor([-1.0, 1.0], dtype=torch.float16)]
    scaled = [scaler.scale(loss) for loss in losses]
    assert not torch.isfinite(scaled[0])  # 1e4 * 2^120 overflows float32
    stats = opt.backward(scaled)  # raised ValueError before the fix
    assert not stats.finite and stats.nonfinite == ("0",)
    scaler.step(opt)  # skipped: the gradients are NaN
    scaler.update()
    assert torch.equal(theta.detach(), torch.zeros(2))
    assert scaler.get_scale() == 2.0**119
    opt.zero_grad()
    opt.backward([scaler.scale(theta @ torch.tensor([1.0, 0.0]))])
    scaler.step(opt)
    assert torch.equal(theta.detach(), torch.tensor([-1.0, 0.0]))


# ---------------------------------------------------------------- bad input


def test_bad_shared_params_name_the_argument():
    theta, frozen = torch.zeros(2, requires_grad=True), torch.zeros(2)
    sgd = torch.optim.SGD([theta, frozen], lr=1.0)
    with pytest.raises(ValueError, match=r"^shared_params: expected at least one parameter"):
        PCGrad(sgd, shared_params=[])
    with pytest.raises(ValueError, match=r"^shared_params\[1\]: expected a parameter that "
                                         "requires grad, got one of shape \\(2,\\)"):
        PCGrad(sgd, shared_params=[theta, frozen])
    with pytest.raises(TypeError, match=r"^shared_params: expected an iterable of parameters"):
        PCGrad(sgd, shared_params=theta)
    with pytest.raises(TypeError, match=r"^shared_params\[0\]: expected a tensor, got str"):
        PCGrad(sgd, shared_params=["theta"])


def test_bad_losses_name_the_argument_and_the_task():
    theta = torch.zeros(2, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0))
    with pytest.raises(TypeError, match=r"^losses\['qqp'\]: expected a tensor, got float"):
        opt.backward({"sst": theta.sum(), "qqp": 1.0})
    with pytest.raises(TypeError, match=r"^losses\['1'\]: expected a floating-point loss"):
        opt.backward([theta.sum(), torch.tensor(3)])
    with pytest.raises(ValueError, match=r"^losses: expected distinct task names"):
        opt.backward({1: theta.sum(), "1": theta.sum()})
    assert theta.grad is None  # nothing was backpropagated by the rejected calls
    opt.backward({"sst": theta.sum(), "qqp": theta.sum() * float("inf")})
    with pytest.raises(ValueError, match=r"^losses\['qqp'\]: expected a finite loss"):
        opt.step()
    assert torch.equal(theta.detach(), torch.zeros(2))

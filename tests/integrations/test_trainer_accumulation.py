"""Gradient accumulation: k micro-batches of B rows give the weights of one batch of k * B rows
(the plain sum; a gradient weighting combines the accumulated task gradients, so it does too)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hf_tiny_models import TinyMultiTask, make_datasets, max_difference, pad_collate, quiet
from hf_tiny_models import training_args as args_for

import mtlkit
from mtlkit.integrations.transformers import MultiTaskTrainer

SIZES = {"sst": 24, "qqp": 16, "sts": 16}


def trained(out, batch_size, accumulation, weighting=None, **kwargs):
    torch.manual_seed(0)
    model = TinyMultiTask(dropout=0.0)
    args = args_for(out, per_device_train_batch_size=batch_size, max_steps=3,
                    gradient_accumulation_steps=accumulation)
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=make_datasets(SIZES),
                                     data_collator=pad_collate, weighting=weighting, **kwargs))
    trainer.train()
    return model, trainer


@pytest.mark.parametrize("weighting", [None, "pcgrad"])
def test_accumulation_equals_one_big_batch(tmp_path, weighting):
    def make():
        return mtlkit.weighting.PCGrad(seed=0) if weighting else None

    big, big_trainer = trained(tmp_path / "big", 8, 1, make())
    small, small_trainer = trained(tmp_path / "small", 4, 2, make())
    torch.manual_seed(0)
    assert max_difference(big, TinyMultiTask(dropout=0.0)) > 1e-3
    assert max_difference(big, small) < 1e-6  # the same rows, summed in another order
    big_log, small_log = big_trainer.state.log_history[0], small_trainer.state.log_history[0]
    for key in ("loss", "loss_sst", "loss_qqp", "loss_sts"):
        assert small_log[key] == pytest.approx(big_log[key], rel=1e-5)
    if weighting:
        assert small_log["cos_sst_qqp"] == pytest.approx(big_log["cos_sst_qqp"], abs=1e-5)


def test_accumulated_surgery_in_a_sampled_mode_combines_several_tasks(tmp_path):
    # round_robin with 3 micro-batches: every optimizer step holds the three tasks, once each
    _, trainer = trained(tmp_path, 4, 3, mtlkit.weighting.PCGrad(seed=0), sampling="round_robin")
    assert trainer._surgery.last_stats.tasks == ("sst", "qqp", "sts")
    assert "cos_qqp_sts" in trainer.state.log_history[0]


def test_import_mtlkit_does_not_import_transformers():
    code = ("import sys, mtlkit, mtlkit.integrations; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_task_gradient_sums_hold_unscaled_gradients_and_an_exact_surrogate():
    from mtlkit.integrations._trainer_accumulation import TaskGradientSums

    torch.manual_seed(0)
    body, head_a, head_b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    params = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
    xs = [torch.randn(4, 3) for _ in range(2)]
    expected = {}
    for task, head in (("a", head_a), ("b", head_b)):  # each task's gradient over both batches
        grads = torch.autograd.grad(sum(head(body(x)).pow(2).mean() for x in xs), params,
                                    allow_unused=True)
        expected[task] = grads
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        sums = TaskGradientSums()
        for x in xs:
            for task, head in (("a", head_a), ("b", head_b)):
                sums.add(task, head(body(x)).pow(2).mean(), params, scaler)
        assert all(p.grad is None for p in params)
        assert sums.tasks == ["a", "b"]
        for task in ("a", "b"):
            sums.surrogate(task).backward()
            for p, g in zip(params, expected[task], strict=True):
                if g is None:  # the other task's head: not reached, no term
                    assert p.grad is None
                else:
                    torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)
                p.grad = None


def test_task_gradient_sums_of_stacked_backwards_equal_each_tasks_own_gradient():
    from mtlkit.integrations._trainer_accumulation import TaskGradientSums

    torch.manual_seed(0)
    body, head_a, head_b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    params = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
    batches = [(torch.randn(2, 3), torch.randn(3, 3)) for _ in range(2)]  # (task a, task b)

    def losses(x_a, x_b):
        h_a, h_b = body(torch.cat([x_a, x_b])).split([len(x_a), len(x_b)])
        return {"a": head_a(h_a).pow(2).mean(), "b": head_b(h_b).pow(2).mean()}

    shared = list(body.parameters())
    expected = {t: torch.autograd.grad(sum(losses(*xs)[t] for xs in batches), shared)
                for t in ("a", "b")}
    heads_total = torch.autograd.grad(sum(sum(losses(*xs).values()) for xs in batches),
                                      [*head_a.parameters(), *head_b.parameters()])
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        opt = mtlkit.MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), "pcgrad",
                                        shared_params=shared, grad_scaler=scaler)
        sums = TaskGradientSums()
        for x_a, x_b in batches:
            with opt.stacked(body, {"a": len(x_a), "b": len(x_b)}):
                managed, grads = opt._stacked_task_gradients(losses(x_a, x_b))
            assert all(p.grad is None for p in shared)  # the managed gradients left as they were
            sums.add_split(grads, managed, params, scaler)
            assert all(p.grad is None for p in params)
        for task in ("a", "b"):
            sums.surrogate(task).backward()
            for p, g in zip(shared, expected[task], strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)
                p.grad = None
        # the heads are not managed: their summed gradient rides on the first task's sum
        for p, g in zip([*head_a.parameters(), *head_b.parameters()], heads_total, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)
            p.grad = None

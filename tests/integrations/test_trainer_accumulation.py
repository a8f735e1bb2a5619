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

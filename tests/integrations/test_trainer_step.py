"""One MultiTaskTrainer run equals a hand-written loop with the same primitives (weights compared):
MultiTaskLoader batches, AdamW, the linear schedule, clipping, the plain sum or PCGrad."""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import (
    LearnedScales,
    TinyMultiTask,
    as_steps,
    copy_model,
    make_datasets,
    max_difference,
    pad_collate,
    quiet,
    reference_loader,
    training_args,
)
from transformers import get_linear_schedule_with_warmup

import mtlkit
from mtlkit.integrations.transformers import MultiTaskTrainer

SIZES = {"sst": 16, "qqp": 12, "sts": 8}


def hand_loop(model, datasets, steps, *, lr=1e-3, clip=1.0, seed=0, surgery=False,
              mode="interleaved", accumulation=1, batch_size=4, loss_weighting=None,
              bf16=False, **loader_kwargs):
    """The loop a user would write: each task's forward and backward (or PCGrad), clip, step,
    schedule.

    Each epoch's micro-batches are cut into groups of ``accumulation`` (the last group of an
    epoch may be shorter), and every loss is divided by its group's size.
    """
    params = list(model.parameters())
    # the Trainer's two groups (no weight decay on biases and LayerNorm weights: here 0 anyway);
    # the order of the parameters sets the order of PCGrad's sums, hence the last bits
    plain = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    decayed = [p for p in params if all(p is not q for q in plain)]
    groups = [{"params": decayed}, {"params": plain}]
    if loss_weighting is not None:
        groups.append({"params": list(loss_weighting.parameters())})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, 0, steps)
    wrapped = mtlkit.PCGrad(opt, seed=seed) if surgery else opt
    loader = reference_loader(datasets, batch_size, seed=seed, mode=mode, **loader_kwargs)
    torch.manual_seed(seed)  # what the Trainer's set_seed leaves for the dropout masks
    model.train()
    done = 0
    while done < steps:
        epoch = [as_steps(s) for s in loader]
        for start in range(0, len(epoch), accumulation):
            group = epoch[start : start + accumulation]
            merged = {}  # PCGrad on the step's task gradients: each task's losses summed
            for batches in group:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    losses = {t: model(task=t, **b).loss / len(group)
                              for t, b in batches.items()}
                if surgery:
                    for t, loss in losses.items():
                        merged[t] = merged[t] + loss if t in merged else loss
                elif loss_weighting is not None:
                    loss_weighting(torch.stack(list(losses.values())) * len(group)).div(
                        len(group)).backward()
                else:  # one task's backward after another (the trainer's order of sums)
                    for loss in losses.values():
                        loss.backward()
            if surgery:
                wrapped.backward(merged)
            torch.nn.utils.clip_grad_norm_(params, clip)
            wrapped.step()
            schedule.step()
            wrapped.zero_grad()
            done += 1
            if done == steps:
                break
    return model


@pytest.mark.parametrize("surgery", [False, True], ids=["sum", "pcgrad"])
@pytest.mark.parametrize("mode", ["interleaved", "round_robin"])
def test_trainer_equals_hand_written_loop(tmp_path, surgery, mode):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    model = TinyMultiTask()
    reference = copy_model(model)
    accumulation = 1 if mode == "interleaved" or not surgery else 3
    weighting = mtlkit.weighting.PCGrad(seed=0) if surgery else None
    args = training_args(tmp_path, max_steps=5, gradient_accumulation_steps=accumulation)
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=datasets, sampling=mode,
                                     data_collator=pad_collate,
                                     weighting=weighting))
    trainer.train()
    hand_loop(reference, datasets, 5, surgery=surgery, mode=mode, accumulation=accumulation)
    assert max_difference(model, reference) == 0.0
    # the run moved the weights: equality is not that of two untouched models
    assert max_difference(model, TinyMultiTask()) > 0


def test_logged_task_losses_are_the_hand_loop_losses(tmp_path):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    model = TinyMultiTask(dropout=0.0)
    reference = copy_model(model)
    trainer = quiet(MultiTaskTrainer(model, training_args(tmp_path, max_steps=1),
                                     train_dataset=datasets, data_collator=pad_collate))
    trainer.train()
    first = trainer.state.log_history[0]
    batches = as_steps(next(iter(reference_loader(datasets, 4))))
    with torch.no_grad():
        expected = {t: float(reference(task=t, **b).loss) for t, b in batches.items()}
    for task, value in expected.items():
        assert first[f"loss_{task}"] == pytest.approx(value, rel=1e-6)
    assert first["loss"] == pytest.approx(sum(expected.values()), rel=1e-6)


def test_loss_weighting_equals_hand_written_loop(tmp_path):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    model = TinyMultiTask()
    reference = copy_model(model)
    weighting, reference_weighting = LearnedScales(3), LearnedScales(3)
    args = training_args(tmp_path, max_steps=5, gradient_accumulation_steps=2)
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=datasets, data_collator=pad_collate,
                                     weighting=weighting))
    trainer.train()
    hand_loop(reference, datasets, 5, accumulation=2, loss_weighting=reference_weighting)
    assert max_difference(model, reference) == 0.0
    assert torch.equal(weighting.log_vars, reference_weighting.log_vars)
    assert float(weighting.log_vars.detach().abs().max()) > 0


@pytest.mark.parametrize("surgery", [False, True], ids=["sum", "pcgrad"])
def test_bf16_autocast_equals_the_hand_loop_under_autocast(tmp_path, surgery):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    model = TinyMultiTask()
    reference = copy_model(model)
    args = training_args(tmp_path, max_steps=3, bf16=True)
    weighting = mtlkit.weighting.PCGrad(seed=0) if surgery else None
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=datasets, data_collator=pad_collate,
                                     weighting=weighting))
    trainer.train()
    hand_loop(reference, datasets, 3, surgery=surgery, bf16=True)
    assert max_difference(model, reference) == 0.0
    torch.manual_seed(0)
    fp32 = copy_model(TinyMultiTask())
    hand_loop(fp32, datasets, 3, surgery=surgery)
    assert max_difference(model, fp32) > 0  # autocast was on: not the float32 run

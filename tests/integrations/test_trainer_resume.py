"""A run resumed from a MultiTaskTrainer checkpoint ends with the weights of an uninterrupted run:
the loader position (not a replay), the weighting state and the Trainer's RNG state come back."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny_models import (
    LearnedScales,
    TinyMultiTask,
    make_datasets,
    max_difference,
    pad_collate,
    quiet,
    training_args,
)

import mtlkit
from mtlkit.integrations.transformers import MultiTaskTrainer


class CountingRows(list):
    """A list dataset that counts the rows read (to tell a restored position from a replay)."""

    reads = 0

    def __getitem__(self, index):
        CountingRows.reads += 1
        return super().__getitem__(index)


def run(out, *, steps, datasets, resume=None, weighting=None, **kwargs):
    torch.manual_seed(0)
    model = TinyMultiTask()
    if kwargs.pop("shared", False):
        kwargs["shared_params"] = model.encoder.parameters()
    args = training_args(out, max_steps=steps, save_strategy="steps", save_steps=3,
                         **kwargs.pop("args", {}))
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=datasets,
                                     data_collator=pad_collate, weighting=weighting, **kwargs))
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


CASES = {
    "interleaved-sum": {},
    # explicit shared parameters, and detected ones (their buffer layout, shared-first as the
    # previous step found them, is in the optimizer's state_dict: the Gramian is summed in the
    # same order after a resume)
    "interleaved-pcgrad": {"weighting": lambda: mtlkit.weighting.PCGrad(seed=3), "shared": True},
    "interleaved-pcgrad-detected": {"weighting": lambda: mtlkit.weighting.PCGrad(seed=3)},
    "interleaved-upgrad-detected": {"weighting": lambda: mtlkit.weighting.UPGrad()},
    "proportional-accumulation": {"sampling": "proportional",
                                  "args": {"gradient_accumulation_steps": 2}},
    "temperature": {"sampling": "temperature", "temperature": 2.0},
    "proportional-pcgrad-accumulation": {
        "sampling": "proportional", "weighting": lambda: mtlkit.weighting.PCGrad(seed=1),
        "shared": True, "args": {"gradient_accumulation_steps": 3}},
    "proportional-pcgrad-accumulation-detected": {
        "sampling": "proportional", "weighting": lambda: mtlkit.weighting.PCGrad(seed=1),
        "args": {"gradient_accumulation_steps": 3}},
    "loss-weighting": {"weighting": lambda: LearnedScales(3)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, case):
    sizes = {"sst": 20, "qqp": 12, "sts": 8}
    datasets = make_datasets(sizes)

    def options():
        opts = dict(CASES[case])
        if "weighting" in opts:
            opts["weighting"] = opts["weighting"]()
        return opts

    full, _ = run(tmp_path / "full", steps=8, datasets=datasets, **options())
    checkpoint = tmp_path / "full" / "checkpoint-3"
    saved = json.loads((checkpoint / "mtlkit_trainer.json").read_text())["loader"]
    assert (saved["epoch"], saved["step"]) != (0, 0)
    resumed, trainer = run(tmp_path / "full", steps=8, datasets=datasets,
                           resume=str(checkpoint), **options())
    assert trainer.state.global_step == 8
    assert max_difference(full, resumed) == 0.0


def test_interrupted_run_differs_without_the_checkpoint(tmp_path):
    """The comparison above can fail: a run restarted from step 0 on the checkpoint's weights
    (no loader or RNG state) ends elsewhere."""
    datasets = make_datasets({"sst": 20, "qqp": 12, "sts": 8})
    full, _ = run(tmp_path / "a", steps=8, datasets=datasets)
    torch.manual_seed(0)
    model = TinyMultiTask()
    from safetensors.torch import load_model

    load_model(model, str(tmp_path / "a" / "checkpoint-3" / "model.safetensors"))
    args = training_args(tmp_path / "b", max_steps=5)
    quiet(MultiTaskTrainer(model, args, train_dataset=datasets, data_collator=pad_collate)).train()
    assert max_difference(full, model) > 1e-4


def test_resume_restores_the_position_instead_of_replaying(tmp_path):
    sizes = {"sst": 24, "qqp": 16}
    datasets = {t: CountingRows(rows) for t, rows in make_datasets(sizes).items()}
    CountingRows.reads = 0
    full, _ = run(tmp_path, steps=5, datasets=datasets)
    total_reads = CountingRows.reads
    assert total_reads == 5 * 2 * 4  # five steps of a batch of 4 per task
    CountingRows.reads = 0
    resumed, _ = run(tmp_path, steps=5, datasets=datasets, resume=str(tmp_path / "checkpoint-3"))
    assert CountingRows.reads == 2 * 2 * 4  # only the two steps after the checkpoint
    assert max_difference(full, resumed) == 0.0


def test_resume_at_an_epoch_boundary(tmp_path):
    datasets = make_datasets({"sst": 12, "qqp": 8})  # interleaved: 3 steps per epoch
    full, _ = run(tmp_path, steps=7, datasets=datasets)
    saved = json.loads((tmp_path / "checkpoint-3" / "mtlkit_trainer.json").read_text())["loader"]
    assert (saved["epoch"], saved["step"]) == (0, 3)
    resumed, _ = run(tmp_path, steps=7, datasets=datasets, resume=str(tmp_path / "checkpoint-3"))
    assert max_difference(full, resumed) == 0.0


def test_loss_weighting_parameters_are_trained_and_checkpointed(tmp_path):
    datasets = make_datasets({"sst": 12, "qqp": 8, "sts": 8})
    weighting = LearnedScales(3)
    _, trainer = run(tmp_path, steps=3, datasets=datasets, weighting=weighting)
    assert float(weighting.log_vars.detach().abs().max()) > 0  # in the optimizer, so it moved
    saved = torch.load(tmp_path / "checkpoint-3" / "mtlkit_weighting.pt", weights_only=True)
    assert torch.equal(saved["log_vars"], weighting.log_vars.detach())
    groups = trainer.optimizer.param_groups
    assert any(g["weight_decay"] == 0.0 and g["params"] == [weighting.log_vars] for g in groups)


def test_a_changed_setup_is_refused_on_resume(tmp_path):
    datasets = make_datasets({"sst": 20, "qqp": 12})
    run(tmp_path, steps=3, datasets=datasets)
    with pytest.raises(ValueError, match="batch sizes or accumulation"):
        run(tmp_path, steps=6, datasets=datasets, resume=str(tmp_path / "checkpoint-3"),
            args={"gradient_accumulation_steps": 2})

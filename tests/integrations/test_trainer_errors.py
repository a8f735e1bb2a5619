"""MultiTaskTrainer's bad inputs: each gets a ValueError/TypeError that names the argument."""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import TinyMultiTask, make_datasets, pad_collate, quiet, training_args
from torch import nn

import mtlkit
from mtlkit.integrations.transformers import MultiTaskTrainer

DATA = make_datasets({"sst": 8, "qqp": 8})


def build(tmp_path, model=None, **kwargs):
    kwargs.setdefault("train_dataset", DATA)
    kwargs.setdefault("data_collator", pad_collate)
    args = kwargs.pop("args", None) or training_args(tmp_path, max_steps=1)
    return quiet(MultiTaskTrainer(model or TinyMultiTask(tasks=("sst", "qqp")), args, **kwargs))


class DeclaredTasks(TinyMultiTask):
    tasks = ("sst", "qqp")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"train_dataset": [1, 2]}, TypeError, r"train_dataset: expected a mapping \{task: Dataset\}"),
    ({"train_dataset": {}}, ValueError, "train_dataset: expected at least one task"),
    ({"train_dataset": {"sst": []}}, ValueError, r"train_dataset\['sst'\]: expected a non-empty"),
    ({"eval_dataset": {"sst": DATA["sst"], "mnli": DATA["qqp"]}}, ValueError,
     "eval_dataset: expected tasks among .*'qqp', 'sst'.*got unknown task 'mnli'"),
    ({"data_collator": {"nli": pad_collate}}, ValueError, "data_collator: .*unknown task 'nli'"),
    ({"compute_metrics": {"nli": len}}, ValueError, "compute_metrics: .*unknown task 'nli'"),
    ({"smart": {"nli": mtlkit.SmartLoss()}}, ValueError, "smart: .*unknown task 'nli'"),
    ({"smart": {"sst": "yes"}}, TypeError, r"smart\['sst'\]: expected a SmartLoss"),
    ({"batch_sizes": {"sst": 0}}, ValueError, r"batch_sizes\['sst'\]: expected a positive int"),
    ({"sampling": "shuffled"}, ValueError, "sampling: expected one of"),
    ({"weighting": 3}, TypeError, "weighting: expected None, a name"),
    ({"weighting": mtlkit.weighting.PCGrad(), "train_dataset": {"sst": DATA["sst"]}},
     ValueError, "weighting: expected at least two tasks to weigh, got 1"),
    ({"weighting": mtlkit.weighting.PCGrad(), "sampling": "proportional"}, ValueError,
     "weighting: sampling='proportional' draws one task per batch.*gradient_accumulation_steps"),
    ({"per_sample_routing": True, "sampling": "round_robin"}, ValueError,
     "per_sample_routing: expected sampling='interleaved'"),
])
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        build(tmp_path, **kwargs)


def test_the_optimizer_wrapper_is_not_a_weighting(tmp_path):
    model = TinyMultiTask(tasks=("sst", "qqp"))
    wrapper = mtlkit.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=r"pass mtlkit\.weighting\.PCGrad\(\)"):
        build(tmp_path, model, weighting=wrapper)


def test_a_dataset_for_a_task_the_model_does_not_declare(tmp_path):
    data = {**DATA, "sts": DATA["qqp"]}
    with pytest.raises(ValueError, match=r"train_dataset: expected tasks .*unknown task 'sts'"):
        build(tmp_path, DeclaredTasks(tasks=("sst", "qqp")), train_dataset=data)


def test_a_task_the_model_cannot_compute(tmp_path):
    data = {**DATA, "sts": DATA["qqp"]}  # no head for "sts": the ModuleDict raises KeyError
    trainer = build(tmp_path, train_dataset=data)
    with pytest.raises(ValueError, match="model\\(task='sts'\\): the model cannot compute task"):
        trainer.train()


def test_a_batch_without_labels(tmp_path):
    def no_labels(rows):
        batch = pad_collate(rows)
        del batch["labels"]
        return batch

    trainer = build(tmp_path, data_collator={"sst": pad_collate, "qqp": no_labels})
    with pytest.raises(ValueError, match=r"train_dataset\['qqp'\]: expected batches with labels "
                                         r"\['labels'\], got a batch with keys"):
        trainer.train()


def test_a_model_without_a_loss(tmp_path):
    class NoLoss(TinyMultiTask):
        def forward(self, task, labels=None, **batch):
            return super().forward(task, **batch)  # labels dropped: outputs without .loss

    trainer = build(tmp_path, NoLoss(tasks=("sst", "qqp")))
    with pytest.raises(ValueError, match="model\\(task='sst'\\): expected a scalar loss tensor"):
        trainer.train()


class Disjoint(nn.Module):
    """Two tasks, two separate networks: nothing shared for a weighting to work on."""

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleDict({"sst": nn.Embedding(40, 5), "qqp": nn.Embedding(40, 1)})

    def forward(self, task, input_ids, attention_mask, labels):
        logits = self.nets[task](input_ids).mean(1)
        if task == "sst":
            return nn.functional.cross_entropy(logits, labels)
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)


def test_a_weighting_with_fewer_than_two_tasks_reaching_shared_parameters(tmp_path):
    trainer = build(tmp_path, Disjoint(), weighting=mtlkit.weighting.PCGrad(seed=0))
    with pytest.raises(ValueError, match="weighting: expected at least two tasks reaching shared "
                                         "parameters, got 0 of \\['sst', 'qqp'\\]"):
        trainer.train()


def test_the_shared_model_passes_the_sharing_check(tmp_path):
    build(tmp_path, weighting=mtlkit.weighting.PCGrad(seed=0)).train()  # no error

"""Per-task evaluation: each task through its own collator and compute_metrics, reported as
eval_{task}_{metric}, with values computed independently here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_tiny_models import TinyMultiTask, make_datasets, pad_collate, quiet, training_args
from torch.utils.data import DataLoader

from mtlkit.integrations.transformers import MultiTaskTrainer


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def mse(prediction):
    diff = prediction.predictions.squeeze(-1) - prediction.label_ids
    return {"mse": float(np.mean(diff**2))}


def direct_metrics(model, task, rows):
    """The loss and metric of ``task`` on ``rows``, by a plain loop over the model."""
    model.eval()
    losses, logits, labels = [], [], []
    with torch.no_grad():
        for batch in DataLoader(rows, batch_size=5, collate_fn=pad_collate):
            out = model(task=task, **batch)
            losses.append(float(out.loss))
            logits.append(out.logits)
            labels.append(batch["labels"])
    logits, labels = torch.cat(logits), torch.cat(labels)
    if task == "sst":
        metric = float((logits.argmax(-1) == labels).float().mean())
    else:
        metric = float(((logits.squeeze(-1) - labels) ** 2).mean())
    return losses, metric


def test_per_task_metric_names_and_values(tmp_path):
    train = make_datasets({"sst": 12, "sts": 8})
    dev = make_datasets({"sst": 10, "sts": 10}, seed=5)  # two full batches of 5 per task
    torch.manual_seed(0)
    model = TinyMultiTask(tasks=("sst", "sts"))
    args = training_args(tmp_path, per_device_eval_batch_size=5, max_steps=2)
    trainer = quiet(MultiTaskTrainer(model, args, train_dataset=train, eval_dataset=dev,
                                     data_collator=pad_collate,
                                     compute_metrics={"sst": accuracy, "sts": mse}))
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_sst_loss", "eval_sst_accuracy", "eval_sts_loss", "eval_sts_mse",
            "eval_loss"} <= set(metrics)
    assert not any(k.startswith("eval_sst_mse") or k.startswith("eval_sts_accuracy")
                   for k in metrics)
    for task, name in (("sst", "accuracy"), ("sts", "mse")):
        losses, metric = direct_metrics(model, task, dev[task])
        assert metrics[f"eval_{task}_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
        assert metrics[f"eval_{task}_{name}"] == pytest.approx(metric, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(
        (metrics["eval_sst_loss"] + metrics["eval_sts_loss"]) / 2)
    logged = trainer.state.log_history[-1]
    assert logged["eval_sst_accuracy"] == metrics["eval_sst_accuracy"]


def test_one_metric_function_for_every_task_and_per_task_collators(tmp_path):
    train = make_datasets({"sst": 8, "qqp": 8})
    calls = []

    def count(prediction):
        calls.append(len(prediction.label_ids))
        return {"rows": float(len(prediction.label_ids))}

    def collate_sst(rows):
        calls.append("sst-collate")
        return pad_collate(rows)

    torch.manual_seed(0)
    trainer = quiet(MultiTaskTrainer(
        TinyMultiTask(tasks=("sst", "qqp")), training_args(tmp_path), train_dataset=train,
        eval_dataset={"sst": train["sst"], "qqp": train["qqp"][:6]},
        data_collator={"sst": collate_sst, "qqp": pad_collate}, compute_metrics=count))
    metrics = trainer.evaluate()
    assert metrics["eval_sst_rows"] == 8 and metrics["eval_qqp_rows"] == 6
    assert "sst-collate" in calls


def test_evaluation_during_training_uses_the_task_names(tmp_path):
    train = make_datasets({"sst": 8, "qqp": 8})
    torch.manual_seed(0)
    args = training_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1)
    trainer = quiet(MultiTaskTrainer(TinyMultiTask(tasks=("sst", "qqp")), args,
                                     train_dataset=train, eval_dataset=train,
                                     data_collator=pad_collate))
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and all("eval_qqp_loss" in h and "eval_sst_loss" in h for h in evals)

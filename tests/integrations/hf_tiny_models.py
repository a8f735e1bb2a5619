"""Tiny random BERT multi-task models, datasets and hand-written reference loops for the
MultiTaskTrainer tests (CPU, seconds)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from transformers import BertConfig, BertModel, PrinterCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from mtlkit import MultiTaskLoader
from mtlkit.weighting import LossWeighting

OUTPUTS = {"sst": 5, "qqp": 1, "sts": 1}
VOCAB = 40


def task_loss(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task == "sst":
        return F.cross_entropy(logits, labels)
    if task == "qqp":
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
    return F.mse_loss(logits.squeeze(-1), labels)


def bert_config(dropout: float = 0.1) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


class TinyMultiTask(nn.Module):
    """A tiny BERT encoder shared by one linear head per task; ``model(task=..., **batch)``."""

    def __init__(self, tasks=("sst", "qqp", "sts"), dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = BertModel(bert_config(dropout), add_pooling_layer=False)
        self.heads = nn.ModuleDict({t: nn.Linear(16, OUTPUTS[t]) for t in tasks})

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, task, input_ids=None, attention_mask=None, inputs_embeds=None,
                labels=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds).last_hidden_state[:, 0]
        logits = self.heads[task](hidden)
        loss = None if labels is None else task_loss(task, logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def make_rows(task: str, n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        if task == "sst":
            label = int(torch.randint(0, 5, (1,), generator=g))
        elif task == "qqp":
            label = float(torch.randint(0, 2, (1,), generator=g))
        else:
            label = float(torch.rand(1, generator=g)) * 5
        rows.append({"input_ids": ids, "labels": label})
    return rows


def make_datasets(sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict]]:
    return {task: make_rows(task, n, seed + i) for i, (task, n) in enumerate(sizes.items())}


def pad_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` with 0, an attention mask, the labels as a tensor."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = r["input_ids"]
        mask[i, : len(r["input_ids"])] = 1
    labels = torch.tensor([r["labels"] for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_args(out, **overrides) -> TrainingArguments:
    """CPU arguments with nothing printed or reported; overrides win."""
    kwargs = dict(per_device_train_batch_size=4, learning_rate=1e-3, max_steps=4, seed=0,
                  optim="adamw_torch", max_grad_norm=1.0, use_cpu=True, report_to=[],
                  save_strategy="no", logging_steps=1, disable_tqdm=True,
                  dataloader_num_workers=0)
    kwargs.update(overrides)
    return TrainingArguments(str(out), **kwargs)


def quiet(trainer):
    trainer.remove_callback(PrinterCallback)
    return trainer


def reference_loader(datasets, batch_size: int, seed: int = 0, mode: str = "interleaved",
                     **kwargs) -> MultiTaskLoader:
    """The loader a hand-written loop builds: a shuffled DataLoader per task, one process."""
    loaders = {
        task: DataLoader(rows, batch_size=batch_size, collate_fn=pad_collate,
                         sampler=DistributedSampler(rows, num_replicas=1, rank=0, shuffle=True,
                                                    seed=seed))
        for task, rows in datasets.items()
    }
    return MultiTaskLoader(loaders, mode=mode, seed=seed, **kwargs)


def as_steps(step) -> dict:
    return dict(step) if isinstance(step, Mapping) else {step[0]: step[1]}


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def max_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(float((x.float() - y.float()).abs().max()) for x, y in pairs)


class LearnedScales(LossWeighting):
    """Kendall-style uncertainty weighting, written out: exp(-s_t) L_t + s_t."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.log_vars = torch.nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses):
        return (torch.exp(-self.log_vars) * losses + self.log_vars).sum()


class CurvedScales(LearnedScales):
    """A loss weighting that is not linear in the losses (so the losses it sees matter)."""

    def forward(self, losses):
        return super().forward(losses) + 0.1 * losses.pow(2).sum()

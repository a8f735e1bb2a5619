"""The SMART term per task (against the regularizer written out by hand) and a LoRAMoE model
routed per sample (one forward per step, equal to one forward per task)."""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import (
    TinyMultiTask,
    as_steps,
    bert_config,
    copy_model,
    make_datasets,
    max_difference,
    pad_collate,
    quiet,
    reference_loader,
    task_loss,
    training_args,
)
from torch import nn
from transformers import BertModel, get_linear_schedule_with_warmup

import mtlkit
from mtlkit import LoRAMoE, SmartLoss
from mtlkit.integrations.transformers import MultiTaskTrainer

SIZES = {"sst": 12, "qqp": 8, "sts": 8}
SMART = {"sst": ("classification", 0.5), "sts": ("regression", 2.0)}


def test_smart_terms_equal_the_regularizer_written_out(tmp_path):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    model = TinyMultiTask(dropout=0.0)
    reference = copy_model(model)
    steps = 3
    smart = {t: SmartLoss(kind=k, noise_std=1e-3, epsilon=1e-2, step_size=1e-2)
             for t, (k, _) in SMART.items()}
    trainer = quiet(MultiTaskTrainer(
        model, training_args(tmp_path, max_steps=steps), train_dataset=datasets,
        data_collator=pad_collate, smart=smart,
        smart_weight={t: w for t, (_, w) in SMART.items()}))
    trainer.train()

    params = list(reference.parameters())
    plain = [p for n, p in reference.named_parameters() if "bias" in n or "LayerNorm" in n]
    decayed = [p for p in params if all(p is not q for q in plain)]
    opt = torch.optim.AdamW([{"params": decayed}, {"params": plain}], lr=1e-3, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, 0, steps)
    torch.manual_seed(0)
    reference.train()
    terms = {t: [] for t in SMART}
    for _, step in zip(range(steps), reference_loader(datasets, 4), strict=False):
        for task, batch in as_steps(step).items():
            if task not in SMART:
                reference(task=task, **batch).loss.backward()
                continue
            mask = batch["attention_mask"]
            embeddings = reference.get_input_embeddings()(batch["input_ids"])

            def forward_fn(e, task=task, mask=mask):
                return reference(task=task, inputs_embeds=e, attention_mask=mask).logits

            out = reference(task=task, inputs_embeds=embeddings, attention_mask=mask,
                            labels=batch["labels"])
            term = smart[task](forward_fn, embeddings, out.logits, attention_mask=mask)
            terms[task].append(float(term.detach()))
            (out.loss + SMART[task][1] * term).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
    assert max_difference(model, reference) == 0.0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for task in SMART:
        assert [h[f"smart_{task}"] for h in logs] == pytest.approx(terms[task], rel=1e-6)
        assert min(terms[task]) > 0
    assert "smart_qqp" not in logs[0]


def test_smart_needs_inputs_embeds(tmp_path):
    class NoEmbeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 5)

        def forward(self, task, input_ids, attention_mask, labels):
            return nn.functional.cross_entropy(self.emb(input_ids).mean(1), labels)

    trainer = quiet(MultiTaskTrainer(
        NoEmbeddings(), training_args(tmp_path, max_steps=1),
        train_dataset=make_datasets({"sst": 8}), data_collator=pad_collate,
        smart={"sst": SmartLoss()}))
    with pytest.raises(ValueError, match=r"smart\['sst'\]: expected a model with "
                                         r"get_input_embeddings\(\)"):
        trainer.train()


class Routed(nn.Module):
    """A LoRAMoE encoder (one expert per task) with a head per task; ``task`` is one name for a
    single-task batch, or one name per row (rows of a task contiguous) with ``labels`` a dict."""

    def __init__(self, tasks=("sst", "qqp", "sts"), train_base=False):
        super().__init__()
        self.tasks = list(tasks)
        self.moe = LoRAMoE(BertModel(bert_config(0.0), add_pooling_layer=False),
                           tasks=self.tasks, r=4, alpha=8, train_base=train_base)
        with torch.no_grad():  # non-zero experts, so that the routing matters from step one
            for name, p in self.moe.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.2)
        self.heads = nn.ModuleDict({t: nn.Linear(16, 5 if t == "sst" else 1) for t in tasks})

    def forward(self, task, input_ids, attention_mask, labels):
        hidden = self.moe(task=task, input_ids=input_ids,
                          attention_mask=attention_mask).last_hidden_state[:, 0]
        if isinstance(task, str):
            return task_loss(task, self.heads[task](hidden), labels)
        losses, start = {}, 0
        for name in dict.fromkeys(task):
            rows = slice(start, start + task.count(name))
            losses[name] = task_loss(name, self.heads[name](hidden[rows]), labels[name])
            start = rows.stop
        return losses


@pytest.mark.parametrize("weighting", [None, "pcgrad"])
def test_per_sample_routing_equals_one_forward_per_task(tmp_path, weighting):
    datasets = make_datasets(SIZES)
    torch.manual_seed(0)
    # with a frozen base the tasks share no trainable parameter (an expert and a head each):
    # a gradient weighting needs the base trained
    routed = Routed(train_base=weighting is not None)
    separate = copy_model(routed)
    runs = []
    for model, per_sample in ((routed, True), (separate, False)):
        w = mtlkit.weighting.PCGrad(seed=0) if weighting else None
        # one routed forward reaches every expert from every task's loss (with zero gradients),
        # so detection would count the experts as shared: name the shared base explicitly
        shared = [p for n, p in model.moe.named_parameters()
                  if "lora_" not in n and p.requires_grad] if weighting else None
        trainer = quiet(MultiTaskTrainer(
            model, training_args(tmp_path / str(per_sample), max_steps=3),
            train_dataset=datasets, data_collator=pad_collate, weighting=w,
            shared_params=shared, per_sample_routing=per_sample))
        trainer.train()
        runs.append(trainer.state.log_history[0])
    # padding to a common length and one matrix product per layer change only the last bits
    assert max_difference(routed, separate) < 1e-6
    torch.manual_seed(0)
    assert max_difference(routed, Routed(train_base=weighting is not None)) > 1e-4
    for task in SIZES:
        assert runs[0][f"loss_{task}"] == pytest.approx(runs[1][f"loss_{task}"], rel=1e-5)


class ScaledRouted(Routed):
    """A shared scale outside any splittable layer: the stacked backward must step aside."""

    def __init__(self):
        super().__init__(train_base=True)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, task, input_ids, attention_mask, labels):
        out = super().forward(task, input_ids, attention_mask, labels)
        if isinstance(out, dict):
            return {t: v * self.scale for t, v in out.items()}
        return out * self.scale


def _pcgrad_run(tmp_path, model, per_sample, accumulation=1, weighting="pcgrad"):
    shared = [p for n, p in model.named_parameters()
              if n.startswith("moe.") and "lora_" not in n and p.requires_grad]
    shared += [model.scale] if hasattr(model, "scale") else []
    args = training_args(tmp_path / str(per_sample), max_steps=3,
                         per_device_train_batch_size=4 // accumulation,
                         gradient_accumulation_steps=accumulation)
    w = mtlkit.weighting.PCGrad(seed=0) if weighting == "pcgrad" else weighting
    trainer = quiet(MultiTaskTrainer(
        model, args, train_dataset=make_datasets(SIZES), data_collator=pad_collate,
        weighting=w, shared_params=shared, per_sample_routing=per_sample))
    trainer.train()
    return trainer


@pytest.mark.parametrize("weighting", ["pcgrad", "nash_mtl"])
def test_per_sample_routing_with_accumulation_equals_one_forward_per_task(tmp_path,
                                                                          weighting):
    # 2 micro-batches of 2 rows per task: the stacked split's task gradients are summed over
    # them and combined once, as the per-task forwards' are
    torch.manual_seed(0)
    routed = Routed(train_base=True)
    separate = copy_model(routed)
    runs = [_pcgrad_run(tmp_path / name, model, per_sample, accumulation=2, weighting=weighting)
            for name, model, per_sample in (("r", routed, True), ("s", separate, False))]
    assert max_difference(routed, separate) < 1e-6
    torch.manual_seed(0)
    assert max_difference(routed, Routed(train_base=True)) > 1e-4
    logs = [trainer.state.log_history[0] for trainer in runs]
    for key in ("loss_sst", "loss_qqp", "cos_sst_qqp", "cos_qqp_sts"):
        assert logs[0][key] == pytest.approx(logs[1][key], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_per_sample_routing_backpropagates_once(tmp_path, monkeypatch, accumulation):
    calls, per_task = [], []
    original = mtlkit.MultiTaskOptimizer.stacked
    monkeypatch.setattr(mtlkit.MultiTaskOptimizer, "stacked",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    monkeypatch.setattr(mtlkit.MultiTaskOptimizer, "task_backward",
                        lambda *a, **k: per_task.append(1))
    torch.manual_seed(0)
    _pcgrad_run(tmp_path, Routed(train_base=True), per_sample=True, accumulation=accumulation)
    # one stacked block per micro-batch, no backward per task
    assert (len(calls), per_task) == (3 * accumulation, [])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_per_sample_routing_falls_back_for_an_unsplittable_model(tmp_path, caplog,
                                                                 accumulation):
    torch.manual_seed(0)
    routed = ScaledRouted()
    separate = copy_model(routed)
    with caplog.at_level("WARNING", logger="mtlkit.integrations._trainer_step"):
        _pcgrad_run(tmp_path, routed, per_sample=True, accumulation=accumulation)
    assert "a backward per task from now on" in caplog.text
    assert "ScaledRouted" in caplog.text
    _pcgrad_run(tmp_path / "separate", separate, per_sample=False, accumulation=accumulation)
    assert max_difference(routed, separate) < 1e-6
    assert routed.scale.item() != 1.0


def test_per_sample_routing_needs_a_loss_per_task(tmp_path):
    class OneLoss(Routed):
        def forward(self, task, input_ids, attention_mask, labels):
            out = super().forward(task, input_ids, attention_mask, labels)
            return sum(out.values()) if isinstance(out, dict) else out

    trainer = quiet(MultiTaskTrainer(
        OneLoss(), training_args(tmp_path, max_steps=1), train_dataset=make_datasets(SIZES),
        data_collator=pad_collate, per_sample_routing=True))
    with pytest.raises(ValueError, match=r"per_sample_routing: expected the model to return "
                                         r"\{task: loss\}"):
        trainer.train()


def test_a_frozen_mixture_shares_nothing_to_weigh(tmp_path):
    trainer = quiet(MultiTaskTrainer(
        Routed(), training_args(tmp_path, max_steps=1), train_dataset=make_datasets(SIZES),
        data_collator=pad_collate, weighting=mtlkit.weighting.PCGrad(seed=0)))
    with pytest.raises(ValueError, match="weighting: expected at least two tasks reaching shared"):
        trainer.train()

"""Building a LoRAMoE: the config as the one carrier of options, refusals that touch nothing,
task heads, and reading mixtures saved by earlier versions."""

from __future__ import annotations

import inspect
import json

import peft
import pytest
import torch
import transformers

from mtlkit import LoRAMoE, LoRAMoEConfig

TASKS = ["sst", "qqp", "sts"]
H, R = 32, 4


def tiny_bert(seed: int = 0, cls=transformers.BertModel, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    return cls(cfg)


def randomize_experts(moe: LoRAMoE, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def ids(n: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.randint(1, 50, (n, 6), generator=torch.Generator().manual_seed(seed))


def model_state(model: torch.nn.Module) -> dict:
    """Everything peft's injection changes: modules, tensors, flags, the model's attributes."""
    return {
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "attributes": sorted(vars(model)),
    }


def assert_same_state(model: torch.nn.Module, before: dict) -> None:
    after = model_state(model)
    assert after["modules"] == before["modules"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["attributes"] == before["attributes"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


# --------------------------------------------------------------------------- the config
def test_a_config_and_the_same_keyword_options_build_the_same_mixture():
    config = LoRAMoEConfig(tasks=TASKS, r=R, alpha=8.0, dropout=0.0)
    by_config = LoRAMoE(tiny_bert(), config).eval()
    by_options = LoRAMoE(tiny_bert(), tasks=TASKS, r=R, alpha=8.0).eval()
    assert by_config.config == by_options.config == config
    randomize_experts(by_config)
    randomize_experts(by_options)
    torch.testing.assert_close(by_config(task="qqp", input_ids=ids()).last_hidden_state,
                               by_options(task="qqp", input_ids=ids()).last_hidden_state,
                               rtol=0, atol=0)
    config.r = 99  # the mixture keeps its own validated copy
    assert by_config.config.r == R


def test_options_are_given_once_and_by_their_config_names():
    config = LoRAMoEConfig(tasks=TASKS, r=R)
    with pytest.raises(TypeError, match=r"options: expected none beside config, got \['r'\]"):
        LoRAMoE(tiny_bert(), config, r=8)
    with pytest.raises(TypeError, match="config: expected a LoRAMoEConfig, got list"):
        LoRAMoE(tiny_bert(), TASKS)
    with pytest.raises(TypeError, match=r"options: expected LoRAMoEConfig fields .* \['router'\]"):
        LoRAMoE(tiny_bert(), tasks=TASKS, router="topk")
    with pytest.raises(TypeError, match="config: expected a LoRAMoEConfig or tasks"):
        LoRAMoE(tiny_bert())
    assert "kwargs" not in inspect.signature(LoRAMoE.from_pretrained).parameters


def test_train_base_is_in_the_config_and_comes_back_from_a_save(tmp_path):
    moe = LoRAMoE(tiny_bert(), tasks=TASKS, r=R, train_base=True)
    assert moe.config.train_base
    assert all(p.requires_grad for p in moe.model.parameters())
    moe.save_experts(tmp_path)
    assert json.loads((tmp_path / "lora_moe.json").read_text())["train_base"] is True
    again = LoRAMoE.from_pretrained(tiny_bert(), tmp_path)
    assert again.config == moe.config
    assert again.model.embeddings.word_embeddings.weight.requires_grad
    assert again.num_parameters().trainable == again.num_parameters().total


def test_mixtures_saved_by_earlier_versions_still_load(tmp_path):
    moe = LoRAMoE(tiny_bert(), tasks=TASKS, r=R).eval()
    randomize_experts(moe)
    moe.save_experts(tmp_path)
    old = {k: v for k, v in moe.config.to_dict().items() if k not in ("train_base", "train_heads")}
    (tmp_path / "lora_moe.json").write_text(json.dumps({**old, "router": "task", "top_k": 1}))
    again = LoRAMoE.from_pretrained(tiny_bert(), tmp_path).eval()
    assert not again.config.train_heads and not again.config.train_base  # the old behaviour
    torch.testing.assert_close(again(task="sts", input_ids=ids()).last_hidden_state,
                               moe(task="sts", input_ids=ids()).last_hidden_state, rtol=0, atol=0)
    (tmp_path / "lora_moe.json").write_text(json.dumps({**old, "router": "topk", "top_k": 2}))
    with pytest.raises(ValueError, match=r"path: expected a task-routed mixture.*removed"):
        LoRAMoE.from_pretrained(tiny_bert(), tmp_path)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("tasks", [TASKS, ["nli", "mnli"]], ids=["same-tasks", "other-tasks"])
def test_a_second_mixture_on_a_wrapped_model_is_refused_before_touching_anything(tasks):
    moe = LoRAMoE(tiny_bert(), tasks=TASKS, r=R).eval()
    randomize_experts(moe)  # "trained" experts, which a reset would lose
    experts = {k: v.clone() for k, v in moe.expert_state_dict().items()}
    output = moe(task="qqp", input_ids=ids()).last_hidden_state
    before = model_state(moe.model)
    with pytest.raises(ValueError, match="model: expected a model without adapters, got one that "
                                         "already holds peft adapters"):
        LoRAMoE(moe.model, tasks=tasks, r=R)
    assert_same_state(moe.model, before)
    assert moe.expert_state_dict().keys() == experts.keys()
    for name, value in moe.expert_state_dict().items():
        assert torch.equal(value, experts[name]), name
    torch.testing.assert_close(moe(task="qqp", input_ids=ids()).last_hidden_state, output,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="model: expected a model without adapters"):
        LoRAMoE(moe, tasks=tasks, r=R)  # the mixture itself


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"target_modules": ["word_embeddings", "dense"]}, r"nn\.Linear targets only"),
        ({"target_modules": ["no_such_layer"]}, "target_modules: expected .* matches nothing"),
        ({"tasks": ["sst", "type"]}, "tasks: expected names that are not attributes"),
        ({"r": 0}, "r: expected a positive integer"),
    ],
)
def test_a_constructor_that_raises_leaves_the_model_unmodified(options, match):
    bert = tiny_bert()
    before = model_state(bert)
    with pytest.raises(ValueError, match=match):
        LoRAMoE(bert, **{"tasks": TASKS, "r": R, **options})
    assert_same_state(bert, before)
    # a corrected retry works on the same model, with fresh experts (B = 0: the bare output)
    moe = LoRAMoE(bert, tasks=TASKS, r=R, target_modules=["dense"]).eval()
    assert len(moe._layers) == 2 * 3 + 1  # three "dense" per BERT layer, and the pooler's
    bare = tiny_bert().eval()
    torch.testing.assert_close(moe(task="sst", input_ids=ids()).last_hidden_state,
                               bare(input_ids=ids()).last_hidden_state)


def test_a_failure_inside_the_injection_is_undone(monkeypatch):
    bert = tiny_bert()
    before = model_state(bert)

    def fail(self, *args, **kwargs):
        raise RuntimeError("injected failure in add_adapter")

    with monkeypatch.context() as patch:
        patch.setattr(peft.PeftModel, "add_adapter", fail)
        with pytest.raises(RuntimeError, match="injected failure"):
            LoRAMoE(bert, tasks=TASKS, r=R)  # the first expert is in, the second fails
    assert_same_state(bert, before)
    moe = LoRAMoE(bert, tasks=TASKS, r=R)
    assert moe.tasks == TASKS and len(moe._layers) == 2 * 3


@pytest.mark.parametrize("name", ["type", "eval", "train", "to", "keys", "forward", "training"])
def test_task_names_that_are_module_dict_attributes_are_refused_up_front(name):
    with pytest.raises(ValueError, match=f"tasks: expected names that are not attributes of "
                                         f"torch.nn.ModuleDict .* got '{name}'"):
        LoRAMoEConfig(tasks=["sst", name])
    bert = tiny_bert()
    before = model_state(bert)
    with pytest.raises(ValueError, match="tasks: expected names"):
        LoRAMoE(bert, tasks=["sst", name], r=R)
    assert_same_state(bert, before)
    LoRAMoE(bert, tasks=["sst", f"{name}_task"], r=R)  # the suggested rename works


# --------------------------------------------------------------------------- task heads
def test_the_heads_of_a_sequence_classifier_train_and_are_saved(tmp_path):
    model = tiny_bert(cls=transformers.BertForSequenceClassification, num_labels=3)
    moe = LoRAMoE(model, tasks=TASKS, r=R).train()
    head = [model.classifier.weight, model.classifier.bias]
    trainable = {id(p) for p in moe.trainable_parameters()}
    assert all(p.requires_grad and id(p) in trainable for p in head)
    counts = moe.num_parameters()
    assert counts.heads == 3 * H + 3
    assert counts.trainable == counts.experts + counts.heads
    assert counts.total == sum(p.numel() for p in moe.parameters())
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad  # the base is frozen

    opt = torch.optim.SGD(moe.trainable_parameters(), lr=0.5)
    start = [p.detach().clone() for p in head]
    loss = torch.nn.functional.cross_entropy(moe(task="sst", input_ids=ids()).logits,
                                             torch.tensor([0, 1, 2, 1]))
    loss.backward()
    opt.step()
    assert all(not torch.equal(p, s) for p, s in zip(head, start, strict=True))

    moe.eval().save_experts(tmp_path)
    fresh = tiny_bert(cls=transformers.BertForSequenceClassification, num_labels=3)  # same base
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)  # untrained head
    again = LoRAMoE.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)
    for task in TASKS:  # the trained head came back with the experts
        torch.testing.assert_close(again(task=task, input_ids=ids()).logits,
                                   moe(task=task, input_ids=ids()).logits, rtol=0, atol=0)


def test_train_heads_false_freezes_and_leaves_out_the_heads():
    model = tiny_bert(cls=transformers.BertForSequenceClassification, num_labels=3)
    moe = LoRAMoE(model, tasks=TASKS, r=R, train_heads=False)
    assert not model.classifier.weight.requires_grad
    assert id(model.classifier.weight) not in {id(p) for p in moe.trainable_parameters()}
    assert not any("classifier" in name for name in moe.expert_state_dict())
    assert moe.num_parameters().trainable == moe.num_parameters().experts


def test_a_bare_encoder_has_no_heads():
    moe = LoRAMoE(tiny_bert(), tasks=TASKS, r=R)
    assert moe.num_parameters().heads == 0
    assert all(".lora_" in name for name in moe.expert_state_dict())

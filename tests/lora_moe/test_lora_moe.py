"""Tests of LoRAMoE on a tiny random BERT: routing, gradients, merging, counts, save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlkit import LoRAMoE, LoRAMoEConfig
from real_parts import load_minilm, read_tsv

TASKS = ["sst", "qqp", "sts"]
H, FF, L, R, ALPHA = 32, 64, 2, 4, 8.0


def tiny_bert(seed: int = 0, cls=None, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=2,
        intermediate_size=FF,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )
    return (cls or transformers.BertModel)(cfg)


def randomize_experts(moe: LoRAMoE, seed: int = 1, tasks=None) -> None:
    """peft starts B at zero (every expert is the identity); give the experts real weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if (".lora_A." in name or ".lora_B." in name) and (
                tasks is None or any(f".{t}." in name for t in tasks)
            ):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def make_moe(seed: int = 0, randomize: bool = True, **kw) -> LoRAMoE:
    kw = {"r": R, "alpha": ALPHA, **kw}
    moe = LoRAMoE(tiny_bert(seed), tasks=TASKS, **kw)
    if randomize:
        randomize_experts(moe, seed + 1)
    return moe


def batch(n: int = 4, t: int = 6, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def projection_loss(out):
    """A loss with real gradients (the squared norm of LayerNorm outputs is nearly constant)."""
    h = out.last_hidden_state
    g = torch.Generator().manual_seed(11)
    return (h * torch.randn(h.shape, generator=g)).sum()


def lora_names(model):
    from peft.tuners.lora import LoraLayer

    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))


# --------------------------------------------------------------------------- targets and math
def test_default_targets_are_the_papers_three_dense_layers():
    moe = make_moe(randomize=False)
    expected = sorted(
        f"encoder.layer.{i}.{part}.dense"
        for i in range(L)
        for part in ("attention.output", "intermediate", "output")
    )
    assert lora_names(moe.model) == expected  # never the pooler nor query/key/value


def test_targets_on_a_model_with_a_head():
    bert = tiny_bert(cls=transformers.BertForSequenceClassification, num_labels=3)
    moe = LoRAMoE(bert, tasks=TASKS, r=R)
    names = lora_names(moe.model)
    assert len(names) == 3 * L and all(n.startswith("bert.encoder.layer.") for n in names)
    randomize_experts(moe)
    moe.eval()
    single = moe.merged("qqp")
    assert type(single) is transformers.BertForSequenceClassification
    inputs = batch()
    torch.testing.assert_close(
        single(**inputs).logits, moe(task="qqp", **inputs).logits, atol=1e-5, rtol=0
    )


def test_fresh_experts_leave_the_base_unchanged():
    bare = tiny_bert(0).eval()
    moe = make_moe(randomize=False).eval()
    inputs = batch()
    want = bare(**inputs).last_hidden_state
    for task in TASKS:
        torch.testing.assert_close(moe(task=task, **inputs).last_hidden_state, want)


def test_expert_equals_the_papers_formula_on_explicit_weights():
    """h = W0 x + (alpha / r) B A x, built by hand on a copy of the bare model."""
    bare = tiny_bert(0).eval()
    moe = make_moe().eval()
    inputs = batch()
    for task in TASKS:
        ref = copy.deepcopy(bare)
        modules = dict(ref.named_modules())
        with torch.no_grad():
            for name, layer in moe.model.named_modules():
                if hasattr(layer, "lora_A") and task in layer.lora_A:
                    a, b = layer.lora_A[task].weight, layer.lora_B[task].weight
                    modules[name].weight += (ALPHA / R) * b @ a
        torch.testing.assert_close(
            moe(task=task, **inputs).last_hidden_state,
            ref(**inputs).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )


def test_rslora_scaling():
    moe = make_moe(use_rslora=True)
    layer = moe._layers[0]
    assert layer.scaling["sst"] == pytest.approx(ALPHA / R**0.5)


def test_each_expert_changes_outputs_only_for_its_own_task():
    moe = make_moe().eval()
    inputs = batch()
    before = {t: moe(task=t, **inputs).last_hidden_state for t in TASKS}
    randomize_experts(moe, seed=99, tasks=["qqp"])
    after = {t: moe(task=t, **inputs).last_hidden_state for t in TASKS}
    torch.testing.assert_close(after["sst"], before["sst"], atol=0, rtol=0)
    torch.testing.assert_close(after["sts"], before["sts"], atol=0, rtol=0)
    assert (after["qqp"] - before["qqp"]).abs().max() > 1e-3
    # and the experts really differ from each other
    assert (before["sst"] - before["qqp"]).abs().max() > 1e-3


# --------------------------------------------------------------------------- per-sample routing
def _loss(out, weights):
    return (out.last_hidden_state * weights).sum() + (out.pooler_output * weights[:, 0]).sum()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routing=st.lists(st.sampled_from(TASKS), min_size=1, max_size=5))
def test_per_sample_routing_equals_each_task_subset_alone_in_training(routing):
    moe = make_moe().train()
    inputs = batch(n=len(routing))
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(len(routing), 6, H, generator=g)

    moe.zero_grad()
    mixed = moe(task=routing, **inputs)
    _loss(mixed, weights).backward()
    mixed_grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}

    moe.zero_grad()
    for task in set(routing):
        rows = [i for i, t in enumerate(routing) if t == task]
        sub = {k: v[rows] for k, v in inputs.items()}
        out = moe(task=task, **sub)
        torch.testing.assert_close(
            mixed.last_hidden_state[rows], out.last_hidden_state, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(mixed.pooler_output[rows], out.pooler_output, atol=1e-5, rtol=0)
        _loss(out, weights[rows]).backward()
    alone_grads = {n: p.grad for n, p in moe.named_parameters() if p.grad is not None}
    assert mixed_grads.keys() == alone_grads.keys()
    assert mixed_grads  # the experts in the batch got gradients
    for name, grad in mixed_grads.items():
        torch.testing.assert_close(grad, alone_grads[name], atol=1e-4, rtol=1e-4)


def test_index_tensor_routing_equals_name_routing():
    moe = make_moe().eval()
    inputs = batch()
    by_name = moe(task=["sts", "sst", "sts", "qqp"], **inputs).last_hidden_state
    by_index = moe(task=torch.tensor([2, 0, 2, 1]), **inputs).last_hidden_state
    torch.testing.assert_close(by_index, by_name, atol=0, rtol=0)


def test_only_expert_parameters_receive_gradients_and_all_experts_are_trainable():
    moe = make_moe().train()
    assert all(p.requires_grad for p in moe.trainable_parameters())
    trainable = {id(p) for p in moe.trainable_parameters()}
    for name, p in moe.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
    inputs = batch()
    projection_loss(moe(task=["sst", "qqp", "sst", "qqp"], **inputs)).backward()
    for name, p in moe.named_parameters():
        if ".lora_" in name and (".sst." in name or ".qqp." in name):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:  # the frozen base and the expert of the absent task
            assert p.grad is None, name


def test_train_base_makes_the_base_trainable():
    moe = make_moe(train_base=True)
    counts = moe.num_parameters()
    assert counts.trainable == counts.total
    projection_loss(moe(task="sst", **batch())).backward()
    assert moe.model.embeddings.word_embeddings.weight.grad is not None


def test_training_with_the_optimizer_moves_only_the_routed_expert():
    moe = make_moe().train()
    opt = torch.optim.SGD(moe.trainable_parameters(), lr=0.1)
    snapshot = {n: p.detach().clone() for n, p in moe.named_parameters()}
    projection_loss(moe(task="sts", **batch())).backward()
    opt.step()
    for name, p in moe.named_parameters():
        moved = not torch.equal(p, snapshot[name])
        assert moved == (".lora_" in name and ".sts." in name), name


# --------------------------------------------------------------------------- merging
def test_merged_expert_is_a_plain_model_equal_to_the_routed_one():
    moe = make_moe().eval()
    inputs = batch()
    before = {t: moe(task=t, **inputs).last_hidden_state for t in TASKS}
    for task in TASKS:
        single = moe.merged(task)
        assert type(single) is transformers.BertModel
        assert lora_names(single) == []
        assert not any("lora" in n for n, _ in single.named_parameters())
        out = single(**inputs)
        routed = moe(task=task, **inputs)
        torch.testing.assert_close(
            out.last_hidden_state, routed.last_hidden_state, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(out.pooler_output, routed.pooler_output, atol=1e-5, rtol=0)
    # the mixture is unchanged
    assert len(lora_names(moe.model)) == 3 * L
    for task in TASKS:
        torch.testing.assert_close(
            moe(task=task, **inputs).last_hidden_state, before[task], atol=0, rtol=0
        )


# --------------------------------------------------------------------------- counts
def test_counts_equal_a_hand_computation():
    bare_total = sum(p.numel() for p in tiny_bert(0).parameters())
    moe = make_moe()
    per_layer = R * (H + H) + R * (H + FF) + R * (FF + H)  # attn out, intermediate, output
    c = moe.num_parameters()
    assert c.per_expert == {t: L * per_layer for t in TASKS}
    assert c.base == bare_total
    assert c.heads == 0
    assert c.trainable == 3 * L * per_layer == c.experts
    assert c.total == bare_total + 3 * L * per_layer == sum(p.numel() for p in moe.parameters())


# --------------------------------------------------------------------------- save / load
def test_save_and_load_experts_into_a_fresh_base(tmp_path):
    moe = make_moe().eval()
    inputs = batch()
    path = moe.save_experts(tmp_path / "experts")
    from safetensors.torch import load_file

    saved = load_file(str(path / "experts.safetensors"))
    assert sum(v.numel() for v in saved.values()) == moe.num_parameters().experts  # no base
    assert json.loads((path / "lora_moe.json").read_text())["tasks"] == TASKS

    again = LoRAMoE.from_pretrained(tiny_bert(0), path).eval()
    assert again.config == moe.config
    for task in TASKS:
        torch.testing.assert_close(
            again(task=task, **inputs).last_hidden_state,
            moe(task=task, **inputs).last_hidden_state,
            atol=0,
            rtol=0,
        )


def test_loading_into_a_mismatched_mixture_fails_clearly(tmp_path):
    make_moe().save_experts(tmp_path)
    other = LoRAMoE(tiny_bert(0), tasks=["sst", "qqp"], r=R)
    with pytest.raises(ValueError, match=r"missing|unexpected"):
        other.load_experts(tmp_path)
    wider = LoRAMoE(tiny_bert(0), tasks=TASKS, r=R + 1)
    with pytest.raises(ValueError, match="shape"):
        wider.load_experts(tmp_path)
    with pytest.raises(FileNotFoundError, match="path"):
        LoRAMoE.from_pretrained(tiny_bert(0), tmp_path / "nowhere")


# --------------------------------------------------------------------------- bad input
def test_bad_routing_raises_clear_errors():
    moe = make_moe(randomize=False)
    inputs = batch(n=4)
    with pytest.raises(ValueError, match="unknown task 'nli'"):
        moe(task="nli", **inputs)
    with pytest.raises(ValueError, match="unknown task 'nli'"):
        moe(task=["sst", "nli", "sst", "sst"], **inputs)
    with pytest.raises(ValueError, match=r"one entry per sample \(4\), got 3 entries"):
        moe(task=["sst", "qqp", "sst"], **inputs)
    with pytest.raises(ValueError, match=r"task: expected one of .* got None"):
        moe(**inputs)
    with pytest.raises(TypeError, match="task names"):
        moe(task=["sst", 1, "sst", "sst"], **inputs)
    with pytest.raises(ValueError, match="indices"):
        moe(task=torch.tensor([0, 1, 2, 3]), **inputs)
    with pytest.raises(TypeError, match="integer tensor"):
        moe(task=torch.zeros(4), **inputs)
    with pytest.raises(TypeError, match="task"):
        moe(task=3, **inputs)
    with pytest.raises(ValueError, match="unknown task"):
        moe.merged("nli")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tasks": []}, ValueError, "at least one"),
        ({"tasks": "sst"}, TypeError, "tasks"),
        ({"tasks": ["a", "a"]}, ValueError, "duplicate"),
        ({"tasks": ["a.b"]}, ValueError, "valid task name"),
        ({"tasks": ["a"], "r": 0}, ValueError, "r:"),
        ({"tasks": ["a"], "alpha": -1.0}, ValueError, "alpha"),
        ({"tasks": ["a"], "dropout": 1.0}, ValueError, "dropout"),
        ({"tasks": ["a"], "train_base": 1}, TypeError, "train_base"),
        ({"tasks": ["a"], "train_heads": None}, TypeError, "train_heads"),
    ],
)
def test_bad_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoRAMoEConfig(**kwargs)


def test_bad_model_or_targets_raise():
    with pytest.raises(TypeError, match="model"):
        LoRAMoE("bert", tasks=TASKS)
    with pytest.raises(ValueError, match="target_modules"):
        LoRAMoE(tiny_bert(0), tasks=TASKS, r=R, target_modules=["no_such_layer"])
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        LoRAMoE(tiny_bert(0), tasks=TASKS, r=R, target_modules=["word_embeddings"])


def test_gradient_checkpointing_is_refused():
    moe = make_moe(randomize=False).train()
    enable = getattr(moe.model, "activation_checkpointing_enable", None)
    (enable or moe.model.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match="checkpointing"):
        moe(task="sst", **batch())


def test_calling_the_wrapped_model_directly_runs_the_bare_base():
    bare = tiny_bert(0).eval()
    moe = make_moe().eval()
    inputs = batch()
    direct = moe.model(**inputs).last_hidden_state
    torch.testing.assert_close(direct, bare(**inputs).last_hidden_state)


def test_bert_base_counts_match_the_guide():
    """The numbers quoted in docs/guides/lora_moe.md (bert-base, r=256, three tasks)."""
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        bert = transformers.BertModel(transformers.BertConfig())
        moe = LoRAMoE(bert, tasks=TASKS, r=256, alpha=32)
    c = moe.num_parameters()
    hidden, ff, layers, r = 768, 3072, 12, 256
    assert c.per_expert["sst"] == layers * r * ((hidden + hidden) + 2 * (hidden + ff))
    assert c.base == 109_482_240
    assert c.per_expert == dict.fromkeys(TASKS, 28_311_552)
    assert c.trainable == 84_934_656 == 81 * 2**20
    assert c.total == 194_416_896


# --------------------------------------------------------------------------- real model, real data
@pytest.mark.slow
def test_real_minilm_on_real_data_mixed_routing_training_and_merge():
    tok, bert = load_minilm(transformers.BertModel)  # fails unless the pretrained weights loaded
    sst = [r["sentence"] for r in read_tsv("ids-sst-dev.csv", 2)]
    qqp = [(r["sentence1"], r["sentence2"]) for r in read_tsv("quora-dev.csv", 2)]
    sts = [(r["sentence1"], r["sentence2"]) for r in read_tsv("sts-dev.csv", 2)]
    assert len(sst) == len(qqp) == len(sts) == 2
    first = sst + [a for a, _ in qqp + sts]
    second = [None, None] + [b for _, b in qqp + sts]
    enc = [tok(a, b, truncation=True, max_length=48) for a, b in zip(first, second, strict=True)]
    inputs = tok.pad(enc, return_tensors="pt")
    routing = ["sst"] * 2 + ["qqp"] * 2 + ["sts"] * 2

    torch.manual_seed(0)
    moe = LoRAMoE(bert, LoRAMoEConfig(tasks=TASKS, r=8, alpha=16)).train()
    opt = torch.optim.AdamW(moe.trainable_parameters(), lr=1e-2)
    target = torch.randn(6, bert.config.hidden_size)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        out = moe(task=routing, **inputs)
        loss = (out.last_hidden_state[:, 0] - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the experts learn on real inputs

    moe.eval()
    with torch.no_grad():
        routed = moe(task=routing, **inputs).last_hidden_state
        for task in TASKS:
            rows = [i for i, t in enumerate(routing) if t == task]
            sub = {k: v[rows] for k, v in inputs.items()}
            merged = moe.merged(task).eval()(**sub).last_hidden_state
            torch.testing.assert_close(merged, routed[rows], atol=1e-5, rtol=1e-5)


def test_a_deep_copy_routes_with_its_own_experts():
    moe = make_moe().eval()
    twin = copy.deepcopy(moe)
    randomize_experts(twin, seed=42)
    inputs = batch()
    a = moe(task=["sst", "qqp", "sts", "sst"], **inputs).last_hidden_state
    b = twin(task=["sst", "qqp", "sts", "sst"], **inputs).last_hidden_state
    assert (a - b).abs().max() > 1e-3  # the copy uses its own (changed) experts
    twin_single = twin.merged("qqp")
    torch.testing.assert_close(twin_single(**inputs).last_hidden_state[1], b[1], atol=1e-5, rtol=0)


def test_lora_dropout_acts_in_training_only():
    inputs = batch()
    moe = make_moe(dropout=0.5).train()
    a = moe(task=["sst", "qqp", "sst", "sts"], **inputs).last_hidden_state
    b = moe(task=["sst", "qqp", "sst", "sts"], **inputs).last_hidden_state
    assert (a - b).abs().max() > 1e-4  # a fresh dropout mask each call
    moe.eval()
    plain = make_moe(dropout=0.0).eval()  # same seeds: same base and experts
    torch.testing.assert_close(
        moe(task="qqp", **inputs).last_hidden_state,
        plain(task="qqp", **inputs).last_hidden_state,
        atol=0,
        rtol=0,
    )
